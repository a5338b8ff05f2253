"""Faults of a bad day on the training side (issue 23): a kill while a checkpoint or the
final export is written, two writers in one output folder, bad bytes and ambiguous
records in the data, bad settings, extending a finished run, silent truncation, tied
weights saved twice, tracebacks instead of one-line errors.

Training runs use the 2-layer tiny Llama of test_train_hw_parallel on one rank and a few
steps; the DeepSpeed checkpoint (for its shards and the tied-weights save path) is made
once, by one ZeRO-2 rank on the CPU."""
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import LlamaForCausalLM, TrainingArguments

from smolsft.train import records as run_records
from smolsft.data import sft as sft_data
import train_hw_parallel
from smolsft.lock import FolderLock, FolderLockedError
from test_train_hw_parallel import CHATS, _single_rank_env, common_args, tiny_llama, write_chats
from smolsft.train.settings import SettingsError, check_settings, sft_sh_problems
from smolsft.files import REPO_ROOT

from conftest import load_script


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


# ----------------------------------------------- row 1: a kill while a checkpoint is written
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


# ------------------------------------------------- row 4: two writers in one output folder
def _hold_lock(folder: Path, ready: Path) -> subprocess.Popen:
    code = ("import sys, time\nfrom smolsft.lock import FolderLock\n"
            f"with FolderLock({str(folder)!r}, 'training output folder'):\n"
            f"    open({str(ready)!r}, 'w').close()\n    time.sleep(120)\n")
    p = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    for _ in range(600):
        if ready.exists():
            return p
        time.sleep(0.05)
    p.kill()
    raise AssertionError("lock holder did not start")


def test_second_writer_refused_naming_the_first_then_stale_record_taken_over(tmp_path):
    folder = tmp_path / "out"
    holder = _hold_lock(folder, tmp_path / "ready")
    try:
        with pytest.raises(FolderLockedError) as err:
            with FolderLock(folder, "training output folder"):
                pass
        msg = str(err.value)
        assert f"training output folder {folder} is in use by pid {holder.pid} on " in msg
        assert "command: -c" in msg
    finally:
        holder.send_signal(signal.SIGKILL)  # dies without cleaning up its record
        holder.wait()
    lines = []
    with FolderLock(folder, "training output folder", log=lines.append):
        assert json.loads((folder / ".writer.json").read_text())["pid"] == os.getpid()
    assert len(lines) == 1 and f"pid {holder.pid}" in lines[0] and "taking over" in lines[0]
    assert not (folder / ".writer.json").exists()  # a clean exit leaves no record


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


# ------------------------------------------- row 6: bad bytes and ambiguous training records
@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_undecodable_byte_is_named_by_file_and_line(tmp_path, suffix):
    good = json.dumps({"conversations": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]})
    body = (good + "\n" + good).encode() if suffix == ".jsonl" else f"[\n{good},\n{good}\n]".encode()
    at = body.rindex(b"Hello")  # one bad byte, in the second record
    bad = body[:at] + b"Hel\xfflo" + body[at + 5:]
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(bad)
    line = bad[: bad.index(b"\xff")].count(b"\n") + 1
    with pytest.raises(sft_data.DataFormatError, match=rf"bad{suffix}:{line}: not UTF-8 \(byte 0xff at column "):
        list(sft_data.read_records(str(path)))


def _record_stats(tmp_path, records) -> tuple:
    from smolsft.chat.tokenization import load_tokenizer
    path = tmp_path / "recs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    arrays, stats = sft_data.build_features(str(path), load_tokenizer("SmolLM2-135M", 256), 256, "right", 0,
                                            "assistant")
    return path, stats


def test_record_with_both_fields_is_an_error_unless_they_agree(tmp_path):
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    other = [{"role": "user", "content": "Bye"}, {"role": "assistant", "content": "See you"}]
    _, stats = _record_stats(tmp_path, [{"conversations": turns, "messages": turns}])
    assert stats["conversations_kept"] == 1
    for rec, shown in [({"conversations": turns, "messages": other}, r"'conversations' \(2 turns\) and 'messages' \(2 turns\)"),
                       ({"conversations": [], "messages": turns}, r"'conversations' \(0 turns\) and 'messages' \(2 turns\)")]:
        with pytest.raises(sft_data.DataFormatError, match=r"recs.jsonl:2: holds both " + shown + " with different"):
            _record_stats(tmp_path, [{"conversations": turns}, rec])


# ------------------------------------------------------------ row 7: bad settings up front
def test_settings_checks_list_every_bad_value():
    problems = sft_sh_problems(["TOTALBSZ=0", "BSZPERDEV=4", "NDEV=2", "LR=nan", "EPOCHS=0", "WARMUP=-1",
                                "MAXLEN=512", "MAXROUNDS=5", "SAVESTEPS=200"], ["--max_steps", "0"])
    assert problems == ["TOTALBSZ '0': expected an integer >= 1", "LR 'nan': expected a finite number >= 0",
                        "WARMUP '-1': expected a share in [0, 1) or a whole number of steps",
                        "EPOCHS 0 with --max_steps 0: trains nothing"]
    assert sft_sh_problems(["TOTALBSZ=12", "BSZPERDEV=4", "NDEV=2"], []) == [
        "TOTALBSZ 12: not a multiple of devices (2) x BSZPERDEV (4) = 8"]
    # A flag passed on overrides the variable (the last occurrence wins).
    assert sft_sh_problems(["EPOCHS=0"], ["--max_steps=5"]) == []
    assert sft_sh_problems(["LR=1e-5"], ["--learning_rate", "-1", "--learning_rate", "inf"]) == [
        "--learning_rate 'inf': expected a finite number >= 0"]
    with pytest.raises(SettingsError, match=r"--lr_scheduler_type 'foo': not a scheduler; one of linear, cosine"):
        check_settings({"lr_scheduler_type": "foo"})


@pytest.mark.parametrize("env, shown", [
    ({"TOTALBSZ": "0"}, "TOTALBSZ '0': expected an integer >= 1"),
    ({"TOTALBSZ": "8", "BSZPERDEV": "0"}, "BSZPERDEV '0': expected an integer >= 1"),
    ({"LR": "nan", "EPOCHS": "0"}, "EPOCHS 0 with --max_steps unset: trains nothing"),
])
def test_sft_sh_checks_its_variables_before_launching(tmp_path, env, shown):
    from test_sft_sh import dry_run, fake_bin

    r = dry_run(fake_bin(tmp_path), **{"CPU_RANKS": "2", **env})
    assert r.returncode == 2 and f"[settings] error: {shown}" in r.stderr, r.stderr
    assert "division by 0" not in r.stderr and "unbound variable" not in r.stderr and "deepspeed" not in r.stdout


@pytest.mark.slow
def test_sweep_checks_every_value_before_the_first_configuration(tmp_path):
    sweep = load_script("scripts/sweep.py")
    out = tmp_path / "sw"
    argv = ["--total_bsz", "8,6,0", "--lr=2e-5,nan,-1,inf", "--scheduler", "cosine,foo", "--warmup_ratio=-1,0.1,1",
            "--prompts=-3", "--epochs", "0,1", "--max_steps", "0", "--bsz_per_dev", "4", "--out", str(out)]
    with pytest.raises(SystemExit) as err:
        sweep.main(argv)
    msg = str(err.value)
    lines = msg.splitlines()
    assert lines[0] == "[sweep] error: bad values, nothing trained:"
    for shown in ["--lr nan:", "--lr -1.0:", "--lr inf:", "--warmup_ratio -1.0:", "--warmup_ratio 1.0:",
                  "--scheduler 'foo': not a scheduler", "--total_bsz 0: expected an integer >= 1",
                  "--prompts -3:", "--epochs 0.0 with --max_steps 0: trains nothing",
                  "--total_bsz 6: scripts/sft.sh refuses it: TOTALBSZ 6: not a multiple of devices"]:
        assert sum(ln.strip().startswith(shown) for ln in lines) == 1, (shown, msg)
    assert len(lines) == 11 and not out.exists()  # ten bad values, nothing created


# ----------------------------------------------------------- row 8: extending a finished run
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


# ------------------------------------------------------------------ row 9: silent truncation
@pytest.mark.parametrize("side", ["right", "left"])
def test_truncated_samples_and_lost_trained_tokens_are_counted(tmp_path, tokenizer, side):
    from conversation_func import mask_conversation
    from smolsft.chat.format import normalize_conversation

    max_len = 40 if side == "right" else 20
    path = write_chats(tmp_path / "chats.jsonl", CHATS)
    arrays, stats = sft_data.build_features(str(path), tokenizer, max_len, side, 0, "assistant")
    truncated = lost = 0
    for chat in CHATS:  # independently: the untruncated masking, cut here
        ids, labels = mask_conversation(normalize_conversation([{"role": r, "content": t} for r, t in chat]),
                                        tokenizer, ["assistant"])
        full = int((labels[1:] != -100).sum())
        if len(ids) > max_len:
            truncated += 1
            kept = labels[:max_len] if side == "right" else labels[-max_len:]
            lost += full - int((kept[1:] != -100).sum())
    assert truncated >= 2 and lost > 0  # the case under test
    assert stats["truncated_samples"] == truncated and stats["trained_tokens_lost_to_truncation"] == lost
    line = sft_data.format_stats(stats)
    assert f"truncated: {truncated} samples, {lost} trained tokens lost" in line


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


# ------------------------------------------------------- row 10: one-line errors, not tracebacks
@pytest.mark.slow
def test_bad_bytes_through_sft_sh_is_one_line(setup, tmp_path):
    root, model, _ = setup
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"conversations": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
                    b'{"conversations": [{"role": "user", "content": "h\xe9"}]}\n')
    env = {**os.environ, "MODELPATH": str(model), "DATAPATH": str(bad), "OUTPUTPATH": str(tmp_path / "out"),
           "TOTALBSZ": "1", "BSZPERDEV": "1", "CPU_RANKS": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "sft.sh"), "--max_steps", "1",
                        "--data_cache_dir", str(tmp_path / "cache")], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode != 0
    assert f"[train] error: {bad}:2: not UTF-8 (byte 0xe9 at column " in r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr and "UnicodeDecodeError" not in r.stdout + r.stderr


@pytest.mark.slow
def test_failed_sweep_configuration_ends_on_one_error_line(setup, tmp_path):
    _, model, _ = setup
    r = subprocess.run([sys.executable, "scripts/sweep.py", "--model", str(model), "--max_steps", "1", "--total_bsz",
                        "2", "--bsz_per_dev", "1", "--out", str(tmp_path / "sw"), "--train_args", "--no_such_flag",
                        "1"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "CPU_RANKS": "1"})
    assert r.returncode == 1, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("[sweep] error: 1 of 1 runs failed: lr5e-05_") and "failed (exit" in last
    assert "run.log" in last and "[train] error: unknown argument(s) --no_such_flag 1" in last  # the run's own line
    assert "Traceback" not in r.stderr and "SweepError" not in r.stdout + r.stderr
