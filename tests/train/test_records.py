"""smolsft/train/records.py: the run plan (issue 40 row 6: a folder whose run trained no
step starts again under a new plan; one with a trained step still refuses it)."""
import json

import pytest

import train_hw_parallel
from smolsft.data import sft as sft_data
from smolsft.train.records import RUN_PLAN_FILE, SET_ASIDE_DIR, check_run_plan, trained_outputs
from test_train_hw_parallel import CHATS, common_args

PLAN_A = {"data_hash": "aaa", "seed": 1}
PLAN_B = {"data_hash": "bbb", "seed": 1}


def _check(out, plan, logs):
    check_run_plan(str(out), plan, "d.json", False, None, True, log=logs.append)


def _recorded(out) -> dict:
    return json.loads((out / RUN_PLAN_FILE).read_text())["plan"]


def test_plan_without_a_trained_step_is_replaced(tmp_path):
    out, logs = tmp_path / "run", []
    _check(out, PLAN_A, logs)
    (out / ".writer.lock").write_text("")  # locks and logs are no trained step
    (out / "train.log").write_text("error: bad data\n")
    (out / SET_ASIDE_DIR).mkdir()
    _check(out, PLAN_B, logs)
    assert _recorded(out) == PLAN_B
    assert any("trained no step" in line and "data (--data_path content hash)" in line for line in logs)


@pytest.mark.parametrize("made", ["checkpoint-2", f"{SET_ASIDE_DIR}/checkpoint-2.20261207-000000",
                                  "trainer_state.json", "run_manifest.json", "model.safetensors"])
def test_plan_with_a_trained_step_is_refused(tmp_path, made):
    out, logs = tmp_path / "run", []
    _check(out, PLAN_A, logs)
    (out / made).parent.mkdir(parents=True, exist_ok=True)
    (out / made).mkdir() if "checkpoint-" in made else (out / made).write_text("{}")
    assert trained_outputs(str(out)) == [made.split("/")[0]]
    with pytest.raises(SystemExit, match=r"holds a run with another plan .*\n  data \(--data_path content hash\): aaa"):
        _check(out, PLAN_B, logs)
    assert _recorded(out) == PLAN_A


def test_run_stopped_by_a_bom_starts_again_once_the_file_is_fixed(tmp_path, tiny_llama_dir):
    data = tmp_path / "chats.json"
    text = json.dumps([{"conversations": [{"role": r, "content": t} for r, t in c]} for c in CHATS])
    data.write_bytes(b"\xef\xbb\xbf" + text.encode())
    out = tmp_path / "run"
    args = common_args(tiny_llama_dir, data, out, tmp_path / "cache")
    with pytest.raises(sft_data.DataFormatError, match=r"chats\.json:1: malformed JSON \(Unexpected UTF-8 BOM"):
        train_hw_parallel.main(args)
    assert (out / RUN_PLAN_FILE).exists() and not trained_outputs(str(out))
    data.write_text(text)  # fixed: another data hash, same command
    train_hw_parallel.main(args)
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 1


@pytest.mark.slow
def test_a_node_started_with_other_settings_is_refused_naming_them(tiny_llama_dir, tmp_path):
    """Two "nodes" (torchrun --nnodes 2 on localhost, one CPU rank each, gloo) whose
    commands differ in the learning rate: both stop before training, naming rank 1, the
    setting and both values; nothing is trained."""
    import subprocess
    import sys

    from smolsft.files import REPO_ROOT
    from test_train_hw_parallel import _free_port, write_chats

    data = write_chats(tmp_path / "four.jsonl")
    port = str(_free_port())
    procs = []
    for node, lr in ((0, "1e-3"), (1, "2e-3")):
        args = common_args(tiny_llama_dir, data, tmp_path / "out", tmp_path / f"cache{node}")
        args[args.index("--learning_rate") + 1] = lr
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(node),
               "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", port,
               str(REPO_ROOT / "train_hw_parallel.py"), *args, "--per_device_train_batch_size", "2"]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      env={**__import__("os").environ, "OMP_NUM_THREADS": "1"}))
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode != 0 for p in procs), logs
    assert any("rank 1 (on " in log and "learning_rate: rank 0 0.001, rank 1 0.002" in log for log in logs), logs
    assert not (tmp_path / "out" / "trainer_state.json").exists()
