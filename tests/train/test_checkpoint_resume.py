"""A kill while training, then the rerun, in bf16 (the precision whose checkpoints were lost,
issue 40 row 1) with and without DeepSpeed ZeRO-2, and a finished run with CPU offload: the
rerun resumes from the newest complete checkpoint, and no complete checkpoint is ever moved
or deleted. What differs between precisions is only the names of DeepSpeed's shards: they
come from DeepSpeed's own naming code, checked here in every precision and ZeRO stage
without a training run (fp16/fp32 and bf16, ZeRO-1/2 and 3, one and two ranks)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from smolsft.train import records as run_records
from smolsft.files import REPO_ROOT
from test_train_hw_parallel import _single_rank_env, common_args, tiny_llama, write_chats

STEPS = 4


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("resume")
    return root, tiny_llama(root / "tiny", tokenizer), write_chats(root / "four.jsonl")


def _cmd(setup, out, precision, ds_config):
    root, model, data = setup
    args = common_args(model, data, out, root / "cache")
    args[args.index("--precision") + 1] = precision
    args[args.index("--max_steps") + 1] = str(STEPS)
    args += ["--per_device_train_batch_size", "1", "--save_strategy", "steps", "--save_steps", "1",
             "--optim", "adamw_torch"]
    ds = ["--deepspeed", str(REPO_ROOT / "ds_configs" / ds_config)] if ds_config else []
    return [sys.executable, str(REPO_ROOT / "train_hw_parallel.py"), *ds, *args]


def _run(cmd, timeout=300):
    r = subprocess.run(cmd, env=_single_rank_env(), capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    return r.stdout + r.stderr


def _step(folder: Path) -> int:
    return json.loads((folder / "trainer_state.json").read_text())["global_step"]


@pytest.mark.slow
@pytest.mark.parametrize("precision,ds_config", [("bf16", "zero2_no_offload.json"), ("bf16", None)])
def test_kill_then_rerun_resumes_from_the_newest_complete_checkpoint(setup, tmp_path, precision, ds_config):
    out = tmp_path / "run"
    cmd = _cmd(setup, out, precision, ds_config)
    p = subprocess.Popen(cmd, env=_single_rank_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    deadline = time.time() + 240
    while not (out / "checkpoint-2").exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert (out / "checkpoint-1" / "trainer_state.json").is_file()
    log = _run(cmd)
    resumed = [line for line in log.splitlines() if "resuming from" in line]
    assert resumed and ("checkpoint-1" in resumed[0] or "checkpoint-2" in resumed[0]), log[-3000:]
    assert _step(out) == STEPS
    # The finished run's folder: every checkpoint complete, so a rerun moves none of them.
    kept = sorted(p.name for p in out.glob("checkpoint-*"))
    world = 1
    assert run_records.resumable_checkpoint(str(out), world, ds_config is not None, writer=True) == str(
        out / f"checkpoint-{STEPS}")
    assert sorted(p.name for p in out.glob("checkpoint-*")) == kept
    # Only a checkpoint cut by the kill may have been set aside, and never one that was complete.
    for aside in (out / run_records.SET_ASIDE_DIR).glob("*"):
        assert aside.name.startswith("checkpoint-2") and not (aside / "trainer_state.json").is_file()


@pytest.mark.slow
def test_finished_bf16_offload_run_is_complete(setup, tmp_path):
    """ZeRO-2 with the optimizer offloaded to the CPU (the course's offload launcher) in bf16."""
    out = tmp_path / "offload"
    _run(_cmd(setup, out, "bf16", "zero2_offload.json"))
    assert list((out / f"checkpoint-{STEPS}" / f"global_step{STEPS}").glob("bf16_zero_pp_rank_0_*"))
    config = json.loads((REPO_ROOT / "ds_configs" / "zero2_offload.json").read_text())
    assert run_records.deepspeed_owns_scheduler(config)  # its optimizer section: DeepSpeed keeps the scheduler
    assert not (out / f"checkpoint-{STEPS}" / "scheduler.pt").exists()
    for k in range(1, STEPS + 1):
        assert run_records.checkpoint_problems(str(out / f"checkpoint-{k}"), 1, deepspeed=True,
                                               deepspeed_scheduler=True) == []
    rerun = _run(_cmd(setup, out, "bf16", "zero2_offload.json"))
    assert "already finished" in rerun and not (out / run_records.SET_ASIDE_DIR).exists(), rerun[-2000:]


def _deepspeed_names(tag_dir: Path, world: int, bf16: bool, zero3: bool) -> list[Path]:
    """The files DeepSpeed's own engine names for one tag (its naming methods, called on a
    stand-in engine with only the attributes they read)."""
    from deepspeed.runtime.engine import DeepSpeedEngine

    names = []
    for r in range(world):
        eng = SimpleNamespace(checkpoint_mp_rank=0, zero_optimization_partition_weights=lambda: zero3,
                              optimizer=SimpleNamespace(dp_process_group=None))
        eng._get_zero_ckpt_prefix = lambda dp, bf16_mode: DeepSpeedEngine._get_zero_ckpt_prefix(eng, dp, bf16_mode)
        names.append(DeepSpeedEngine._get_rank_zero_ckpt_name(eng, str(tag_dir.parent), tag_dir.name, 0, r, bf16))
        if zero3:
            names.append(DeepSpeedEngine._get_ckpt_name(eng, str(tag_dir.parent), tag_dir.name, pp_placeholder=r))
    if not zero3:
        names.append(DeepSpeedEngine._get_ckpt_name(eng, str(tag_dir.parent), tag_dir.name))
    return [Path(n) for n in dict.fromkeys(names)]


@pytest.mark.parametrize("bf16", [True, False], ids=["bf16", "fp16-or-fp32"])
@pytest.mark.parametrize("zero3", [False, True], ids=["zero1-2", "zero3"])
@pytest.mark.parametrize("world", [1, 2])
def test_every_deepspeed_naming_is_complete(tmp_path, bf16, zero3, world):
    tag = tmp_path / "global_step3"
    tag.mkdir()
    names = _deepspeed_names(tag, world, bf16, zero3)
    for n in names:
        torch.save({"x": 1}, n)
    assert run_records.deepspeed_shard_problems(str(tag), tag.name, world) == []
    for n in names:  # each file is needed: without it the folder is incomplete
        data = n.read_bytes()
        n.write_bytes(data[: len(data) // 2])
        assert run_records.deepspeed_shard_problems(str(tag), tag.name, world), n.name
        n.write_bytes(data)


def test_set_aside_keeps_checkpoints_out_of_the_trainers_reach(tmp_path):
    """The Trainer's rotation globs ``checkpoint-*`` in the output folder (and deletes the
    oldest); a set-aside folder is never among them, and two set asides never collide."""
    from transformers.trainer_utils import get_last_checkpoint

    for k in (1, 2):
        (tmp_path / "checkpoint-3").mkdir()
        (tmp_path / "checkpoint-3" / f"f{k}").write_text("x")
        run_records.set_aside(str(tmp_path), "checkpoint-3")
    assert not list(tmp_path.glob("checkpoint-*")) and get_last_checkpoint(str(tmp_path)) is None
    kept = sorted((tmp_path / run_records.SET_ASIDE_DIR).iterdir())
    assert len(kept) == 2 and {f.name for d in kept for f in d.iterdir()} == {"f1", "f2"}
