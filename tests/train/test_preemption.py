"""Preemption (issue 38, item 3): SIGTERM, SIGUSR1 or the stop file make a training run finish
its optimizer step, write a complete checkpoint and exit with status 75 without the final
export; the rerun resumes and logs the losses of an uninterrupted run, step for step."""
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
import torch.multiprocessing as mp
from transformers import TrainerControl, TrainerState

from smolsft.files import REPO_ROOT
from smolsft.train import records as run_records
from smolsft.train.preemption import PREEMPTED_EXIT_CODE, PreemptionCallback
from test_train_hw_parallel import _single_rank_env, common_args, logged_losses, write_chats

STEPS, SAVE_EVERY = 40, 5
CPU = SimpleNamespace(device=torch.device("cpu"))


def _state(step: int, max_steps: int = 10) -> TrainerState:
    state = TrainerState()
    state.global_step, state.max_steps = step, max_steps
    return state


@pytest.fixture
def callback():
    cb = PreemptionCallback(stop_file="", log=lambda *a: None).install()
    yield cb
    cb.uninstall()


def test_exit_code_is_its_own():
    # Not 0/1/2 (success, error, usage), not 128+n (killed by a signal: 143 SIGTERM, 138 SIGUSR1).
    assert PREEMPTED_EXIT_CODE == 75


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_signal_is_caught_and_stops_after_the_step_with_a_save(callback, sig):
    control = callback.on_step_end(CPU, _state(3), TrainerControl())
    assert not control.should_save and not control.should_training_stop and callback.stopped_at is None
    os.kill(os.getpid(), sig)  # would end pytest without the handler
    assert callback.requested == sig
    control = callback.on_step_end(CPU, _state(4), TrainerControl())
    assert control.should_save and control.should_training_stop and callback.stopped_at == 4


def test_second_signal_keeps_the_first_request_and_does_not_kill(callback):
    os.kill(os.getpid(), signal.SIGUSR1)
    os.kill(os.getpid(), signal.SIGTERM)
    assert callback.requested == signal.SIGUSR1
    callback.on_step_end(CPU, _state(2), TrainerControl())
    control = callback.on_step_end(CPU, _state(3), TrainerControl())  # the save's step is not stopped twice
    assert callback.stopped_at == 2 and not control.should_save


def test_last_step_finishes_as_usual(callback):
    os.kill(os.getpid(), signal.SIGTERM)
    control = callback.on_step_end(CPU, _state(10, max_steps=10), TrainerControl())
    assert not control.should_training_stop and callback.stopped_at is None


def test_stop_file_stops_without_a_signal(tmp_path):
    stop = tmp_path / "stop"
    cb = PreemptionCallback(stop_file=str(stop), log=lambda *a: None)
    assert not cb.on_step_end(CPU, _state(1), TrainerControl()).should_training_stop
    stop.touch()
    assert cb.on_step_end(CPU, _state(2), TrainerControl()).should_training_stop and cb.stopped_at == 2


def test_stop_file_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SFT_STOP_FILE", str(tmp_path / "s"))
    assert PreemptionCallback().stop_file == str(tmp_path / "s")


def test_transformers_jit_checkpoint_is_refused_in_one_line(tiny_llama_dir, tmp_path, capsys):
    import train_hw_parallel

    args = common_args(tiny_llama_dir, write_chats(tmp_path / "four.jsonl"), tmp_path / "out", tmp_path / "cache")
    before = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as e:
            train_hw_parallel.cli(args + ["--enable_jit_checkpoint", "True"])
    finally:
        signal.signal(signal.SIGTERM, before)  # transformers installed its handler before the refusal
    assert str(e.value).startswith("[train] error: --enable_jit_checkpoint True: this run already saves on SIGTERM")


def test_handlers_are_in_place_only_while_training():
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    cb = PreemptionCallback(log=lambda *a: None)
    cb.on_train_begin(CPU, _state(0), TrainerControl())
    cb.on_train_begin(CPU, _state(0), TrainerControl())  # twice: the handlers to put back stay the first ones
    assert signal.getsignal(signal.SIGTERM) == cb._on_signal == signal.getsignal(signal.SIGUSR1)
    cb.on_train_end(CPU, _state(1), TrainerControl())
    assert {sig: signal.getsignal(sig) for sig in before} == before


def _rank(rank: int, world: int, init: str, results):
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    cb = PreemptionCallback(stop_file="", log=lambda *a: None)
    stops = []
    for step in range(1, 5):
        if rank == 1 and step == 3:
            cb.requested = signal.SIGTERM  # only rank 1 is told
        stops.append(cb.on_step_end(CPU, _state(step), TrainerControl()).should_training_stop)
        if stops[-1]:
            break
    results[rank] = (stops, cb.stopped_at)
    torch.distributed.destroy_process_group()


def test_every_rank_stops_at_the_step_one_rank_was_told(tmp_path):
    results = mp.get_context("spawn").Manager().dict()
    mp.spawn(_rank, args=(2, f"file://{tmp_path / 'store'}", results), nprocs=2, join=True)
    assert dict(results) == {0: ([False, False, True], 3), 1: ([False, False, True], 3)}


# ---------------------------------------------------------------- real runs (tiny Llama, one rank)

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_chats(tmp_path_factory.mktemp("pre") / "four.jsonl")


def _cmd(model, data, out, cache, deepspeed=False):
    args = common_args(model, data, out, cache)
    args[args.index("--max_steps") + 1] = str(STEPS)
    args[args.index("--optim") + 1] = "adamw_torch"
    args[args.index("--learning_rate") + 1] = "1e-3"
    args += ["--per_device_train_batch_size", "1", "--save_strategy", "steps", "--save_steps", str(SAVE_EVERY)]
    ds = ["--deepspeed", str(REPO_ROOT / "ds_configs" / "zero2_no_offload.json")] if deepspeed else []
    return [sys.executable, str(REPO_ROOT / "train_hw_parallel.py"), *ds, *args]


def _run(cmd) -> str:
    r = subprocess.run(cmd, env=_single_rank_env(), capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    return r.stdout + r.stderr


def _signalled_run(cmd, out: Path, signals) -> tuple[int, str]:
    """Run ``cmd``; once checkpoint-5 is complete, send ``signals`` to it in quick succession."""
    log = out.parent / f"{out.name}.log"  # a file, not a pipe: a full pipe would stall the run
    p = subprocess.Popen(cmd, env=_single_rank_env(), stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while not (out / f"checkpoint-{SAVE_EVERY}" / "trainer_state.json").is_file() and p.poll() is None:
        assert time.time() < deadline
        time.sleep(0.02)
    for sig in signals:
        p.send_signal(sig)
        time.sleep(0.02)
    return p.wait(timeout=300), log.read_text()


def _assert_preempted_then_resumed(cmd, out: Path, signals, reference: list):
    rc, log = _signalled_run(cmd, out, signals)
    assert rc == PREEMPTED_EXIT_CODE, log[-3000:]
    newest = max(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    assert SAVE_EVERY < newest < STEPS, log[-3000:]  # the save on the way out, not a scheduled one
    assert f"[preempt] stopping at step {newest} " in log
    assert run_records.checkpoint_problems(str(out / f"checkpoint-{newest}"), 1, "--deepspeed" in cmd) == []
    assert not (out / "run_manifest.json").exists() and not (out / "model.safetensors").exists()  # no final export
    rerun = _run(cmd)
    assert f"resuming from {out / f'checkpoint-{newest}'}" in rerun, rerun[-3000:]
    assert not (out / run_records.SET_ASIDE_DIR).exists()
    losses = logged_losses(out)
    assert len(losses) == STEPS
    assert losses == pytest.approx(reference, rel=1e-5, abs=1e-6)
    return newest, losses


@pytest.mark.slow
def test_sigterm_mid_run_checkpoints_exits_75_and_the_rerun_matches_an_uninterrupted_run(tiny_llama_dir, data,
                                                                                       tmp_path):
    cache = tmp_path / "cache"
    whole = tmp_path / "whole"
    _run(_cmd(tiny_llama_dir, data, whole, cache))
    reference = logged_losses(whole)
    out = tmp_path / "preempted"
    # The second signal lands while the first one's step finishes or its checkpoint is written.
    newest, losses = _assert_preempted_then_resumed(_cmd(tiny_llama_dir, data, out, cache), out,
                                                    [signal.SIGTERM, signal.SIGTERM], reference)
    print(f"SIGTERM run: checkpoint-{newest}; losses {losses[:3]}...{losses[-2:]} = uninterrupted {reference[-2:]}")


@pytest.mark.slow
def test_sigusr1_under_deepspeed_zero2_checkpoints_and_resumes_exactly(tiny_llama_dir, data, tmp_path):
    cache = tmp_path / "cache"
    whole = tmp_path / "whole"
    _run(_cmd(tiny_llama_dir, data, whole, cache, deepspeed=True))
    reference = logged_losses(whole)
    out = tmp_path / "preempted"
    _assert_preempted_then_resumed(_cmd(tiny_llama_dir, data, out, cache, deepspeed=True), out,
                                   [signal.SIGUSR1], reference)
