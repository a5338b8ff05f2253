"""smolsft/train/records.py: the run plan (issue 40 row 6: a folder whose run trained no
step starts again under a new plan; one with a trained step still refuses it)."""
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import LlamaForCausalLM, TrainingArguments

import train_hw_parallel
from smolsft.data import sft as sft_data
from smolsft.files import REPO_ROOT
from smolsft.lock import FolderLockedError
from smolsft.train import records as run_records
from smolsft.train.records import RUN_PLAN_FILE, SET_ASIDE_DIR, check_run_plan, trained_outputs
from test_lock import _hold_lock
from test_train_hw_parallel import CHATS, _single_rank_env, common_args, tiny_llama, write_chats

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


# ------------------------------------------- the training side of a bad day (issue 23)
@pytest.fixture(scope="module")
def setup(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("faults")
    return root, tiny_llama(root / "tiny", tokenizer), write_chats(root / "four.jsonl")


def _args(setup, out, steps, *extra):
    root, model, data = setup
    return common_args(model, data, out, root / "cache") + [
        "--max_steps", str(steps), "--per_device_train_batch_size", "4", "--save_strategy", "steps",
        "--save_steps", "2", *extra]


def _weights(folder: Path) -> dict:
    # Copied out of the file's memory map: a test later cuts such files short.
    return {k: v.clone() for k, v in load_file(str(folder / "model.safetensors")).items()}


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _global_step(folder: Path) -> int:
    return json.loads((folder / "trainer_state.json").read_text())["global_step"]


# ------------------------------------------- resume after faults (issue 23): a kill while a checkpoint is written
@pytest.mark.slow
def test_rerun_sets_aside_a_cut_checkpoint_and_resumes_from_the_last_complete(setup, tmp_path, capsys):
    """checkpoint-4 left as the issue found it (weights, 0-byte training_args.bin, no
    trainer_state.json): the rerun names it, renames it (nothing deleted), resumes from
    checkpoint-2 and ends on the uninterrupted run's weights."""
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    train_hw_parallel.main(_args(setup, straight, 4))
    train_hw_parallel.main(_args(setup, cut, 4))
    ckpt4 = cut / "checkpoint-4"
    (ckpt4 / "trainer_state.json").unlink()
    (ckpt4 / "training_args.bin").write_bytes(b"")
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        (ckpt4 / name).unlink()
    for name in ("model.safetensors", "run_manifest.json", "trainer_state.json"):  # the final export never came
        (cut / name).unlink()
    capsys.readouterr()
    trainer = train_hw_parallel.main(_args(setup, cut, 4))
    log = capsys.readouterr().out
    aside = list((cut / "incomplete_checkpoints").glob("checkpoint-4.*"))
    assert len(aside) == 1 and (aside[0] / "model.safetensors").is_file()  # set aside, not deleted
    assert "checkpoint-4 is incomplete (no trainer_state.json" in log and aside[0].name in log
    assert "training_args.bin missing or empty" in log
    assert f"resuming from {cut / 'checkpoint-2'}" in log
    assert trainer.state.global_step == 4 and (cut / "checkpoint-4" / "trainer_state.json").is_file()
    assert _same_weights(_weights(cut), _weights(straight))


@pytest.fixture(scope="module")
def ds_checkpoint(setup):
    """A real ZeRO-2 checkpoint (one CPU rank, 1 step, saved), for its shard layout."""
    root, model, data = setup
    out = root / "ds_run"
    cmd = [sys.executable, str(REPO_ROOT / "train_hw_parallel.py"), "--deepspeed",
           str(REPO_ROOT / "ds_configs" / "zero2_no_offload.json"), *common_args(model, data, out, root / "cache"),
           "--per_device_train_batch_size", "4", "--save_strategy", "steps", "--save_steps", "1"]
    r = subprocess.run(cmd, env=_single_rank_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    return out


@pytest.mark.slow
def test_checkpoint_completeness_checks_every_part(ds_checkpoint, tmp_path):
    src = ds_checkpoint / "checkpoint-1"
    assert run_records.checkpoint_problems(str(src), 1, deepspeed=True) == []
    # A second rank's ZeRO shard is required when the run has two ranks.
    assert run_records.checkpoint_problems(str(src), 2, deepspeed=True) == [
        "DeepSpeed global_step1/zero_pp_rank_1_mp_rank_00_optim_states.pt missing or cut short",
        "rng_state_0.pth missing or cut short", "rng_state_1.pth missing or cut short"]

    def damaged(name, damage):
        d = tmp_path / name / "checkpoint-1"
        shutil.copytree(src, d)
        damage(d)
        return run_records.checkpoint_problems(str(d), 1, deepspeed=True)

    def cut(path: Path, keep: float = 0.5):
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * keep)])

    shard = "global_step1/zero_pp_rank_0_mp_rank_00_optim_states.pt"
    assert damaged("shard", lambda d: cut(d / shard)) == [f"DeepSpeed {shard} missing or cut short"]
    assert damaged("states", lambda d: (d / "global_step1" / "mp_rank_00_model_states.pt").unlink()) == [
        "DeepSpeed global_step1/mp_rank_00_model_states.pt missing or cut short"]
    assert damaged("latest", lambda d: (d / "latest").unlink()) == ["no DeepSpeed 'latest' file"]
    assert damaged("weights", lambda d: cut(d / "model.safetensors", 0.99)) == ["model.safetensors missing or cut short"]
    assert damaged("state", lambda d: cut(d / "trainer_state.json")) == ["trainer_state.json cut short"]
    assert damaged("rng", lambda d: cut(d / "rng_state.pth")) == ["rng_state.pth missing or cut short"]
    # Without DeepSpeed the Trainer's optimizer.pt/scheduler.pt are the optimizer state.
    assert run_records.checkpoint_problems(str(src), 1, deepspeed=False) == ["optimizer.pt missing or cut short"]
    assert damaged("sched", lambda d: (d / "scheduler.pt").unlink()) == ["scheduler.pt missing or cut short"]
    assert run_records.checkpoint_problems(str(tmp_path / "sched" / "checkpoint-1"), 1, deepspeed=True,
                                           deepspeed_scheduler=True) == []  # DeepSpeed's own scheduler


# --------------------------------------------------- row 2: a kill during the final save
@pytest.mark.slow
def test_kill_during_final_save_rerun_writes_only_the_export(setup, tmp_path, capsys):
    out = tmp_path / "run"
    train_hw_parallel.main(_args(setup, out, 4))
    finished = _weights(out)
    ckpt_bytes = (out / "checkpoint-4" / "model.safetensors").read_bytes()
    # Killed while writing the export: weights cut short, no manifest, no trainer state.
    data = (out / "model.safetensors").read_bytes()
    (out / "model.safetensors").write_bytes(data[: len(data) // 3])
    (out / "run_manifest.json").unlink()
    (out / "trainer_state.json").unlink()
    capsys.readouterr()
    assert train_hw_parallel.main(_args(setup, out, 4)) is None  # no Trainer built, no step run
    log = capsys.readouterr().out
    assert "had finished at step 4 but its final export was missing or incomplete" in log
    assert "resuming" not in log
    assert (out / "model.safetensors").read_bytes() == ckpt_bytes
    assert _same_weights(_weights(out), finished)
    assert _global_step(out) == 4 and _global_step(out / "checkpoint-4") == 4
    manifest = json.loads((out / "run_manifest.json").read_text())
    assert manifest["global_step"] == 4 and manifest["exported_from"] == str(out / "checkpoint-4")
    assert not (out / "optimizer.pt").exists() and (out / "loss_curve.png").is_file()
    # And a third run of the same command has nothing left to do.
    assert train_hw_parallel.main(_args(setup, out, 4)) is None
    assert "already finished at step 4" in capsys.readouterr().out


def test_finished_epoch_run_is_recognised_from_its_checkpoint(tmp_path):
    """Without --max_steps, the checkpoint's recorded target (the epochs its run asked
    for) and the Trainer's plan decide; no run_manifest.json is needed."""
    out = tmp_path / "run"
    ckpt = out / "checkpoint-3"
    ckpt.mkdir(parents=True)
    args = lambda **kw: TrainingArguments(output_dir=str(out), report_to="none", **kw)  # noqa: E731

    def state(step, plan, target):
        (ckpt / "trainer_state.json").write_text(json.dumps(
            {"global_step": step, "max_steps": plan, "stateful_callbacks": {run_records.RUN_TARGET_KEY: target}}))

    state(3, 3, {"max_steps": -1, "num_train_epochs": 1.5})
    assert run_records.finished_step(str(ckpt), args(num_train_epochs=1.5)) == 3
    assert run_records.finished_step(str(ckpt), args(num_train_epochs=2)) is None  # more epochs: resume
    assert run_records.finished_step(str(ckpt), args(max_steps=3)) == 3
    assert run_records.finished_step(str(ckpt), args(max_steps=4)) is None
    state(2, 3, {"max_steps": -1, "num_train_epochs": 1.5})  # an intermediate checkpoint
    assert run_records.finished_step(str(ckpt), args(num_train_epochs=1.5)) is None
    state(3, 3, {"max_steps": 3, "num_train_epochs": 3.0})  # cut short by --max_steps: not the epoch plan
    assert run_records.finished_step(str(ckpt), args(num_train_epochs=3)) is None


def test_training_into_a_folder_in_use_is_refused_before_anything_runs(setup, tmp_path):
    out = tmp_path / "run"
    holder = _hold_lock(out, tmp_path / "ready")
    try:
        with pytest.raises(FolderLockedError, match=f"in use by pid {holder.pid}"):
            train_hw_parallel.main(_args(setup, out, 1))
        with pytest.raises(SystemExit, match=rf"^\[train\] error: training output folder {out} is in use by pid"):
            train_hw_parallel.cli(_args(setup, out, 1))
    finally:
        holder.kill()
        holder.wait()
    assert sorted(p.name for p in out.iterdir()) == [".writer.json", ".writer.lock"]  # nothing written


def _lr_of_step(before: Path, after: Path, data: Path, tokenizer) -> float:
    """The learning rate one plain SGD step used, measured from the weights: the step is
    theta' = theta - lr * grad (no momentum, decay or clipping), with grad the mean
    token loss over all four samples (one batch per step) at ``before``'s weights."""
    arrays, _ = sft_data.build_features(str(data), tokenizer, 256, "right", 0, "assistant")
    model = LlamaForCausalLM.from_pretrained(before, dtype=torch.float32)
    total, count = 0.0, 0
    for s in sft_data.ConversationDataset(arrays):
        logits = model(input_ids=s["input_ids"][None]).logits[0, :-1]
        total = total + F.cross_entropy(logits, s["labels"][1:], ignore_index=-100, reduction="sum")
        count += int((s["labels"][1:] != -100).sum())
    (total / count).backward()
    w0, w1 = _weights(before), _weights(after)
    num = den = 0.0
    for name, p in model.named_parameters():
        if name in w0:
            g = p.grad.double()
            num += float(((w0[name].double() - w1[name].double()) * g).sum())
            den += float((g * g).sum())
    return num / den


@pytest.mark.slow
def test_extended_run_follows_the_schedule_for_the_new_total(setup, tmp_path, tokenizer, capsys):
    """--max_steps 6 under cosine, then the same command with --max_steps 8: steps 7 and 8
    run at the 8-step cosine's rates, 0.5 lr (1 + cos(pi k / 8)) for k = 6, 7, not at the
    6-step schedule's end (0)."""
    root, model, data = setup
    out, lr = tmp_path / "run", 0.5
    args = lambda steps: common_args(model, data, out, root / "cache") + [  # noqa: E731
        "--max_steps", str(steps), "--per_device_train_batch_size", "4", "--save_strategy", "steps",
        "--save_steps", "1", "--lr_scheduler_type", "cosine", "--learning_rate", str(lr)]
    train_hw_parallel.main(args(6))
    capsys.readouterr()
    trainer = train_hw_parallel.main(args(8))
    log = capsys.readouterr().out
    assert trainer.state.global_step == 8 and "resuming from" in log and "on the schedule for 8 steps" in log
    for k, (a, b) in enumerate([("checkpoint-6", "checkpoint-7"), ("checkpoint-7", "checkpoint-8")], start=6):
        expected = lr * 0.5 * (1 + math.cos(math.pi * k / 8))
        assert _lr_of_step(out / a, out / b, data, tokenizer) == pytest.approx(expected, rel=2e-3), k


# --------------------------------------------------------------- row 11: tied weights saved once
@pytest.mark.slow
def test_deepspeed_checkpoint_stores_tied_weights_once_and_reloads_tied(ds_checkpoint):
    for folder in (ds_checkpoint / "checkpoint-1", ds_checkpoint):
        path = folder / "model.safetensors"
        with safe_open(str(path), "pt") as f:
            keys = set(f.keys())
            embed = f.get_tensor("model.embed_tokens.weight")
        assert "lm_head.weight" not in keys and "model.embed_tokens.weight" in keys
        model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32)
        n_params = sum(p.numel() for p in model.parameters())  # counts the tied matrix once
        header = int.from_bytes(path.read_bytes()[:8], "little")
        assert path.stat().st_size == 8 + header + 4 * n_params  # fp32, one copy
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
        # The same values as DeepSpeed's own copy of the module's weights.
        ds_states = torch.load(ds_checkpoint / "checkpoint-1" / "global_step1" / "mp_rank_00_model_states.pt",
                               map_location="cpu", weights_only=False)["module"]
        torch.testing.assert_close(embed, ds_states["model.embed_tokens.weight"].float(), rtol=0, atol=0)
