"""train_hw_parallel.py: exact gradient accumulation (with and without DeepSpeed, one and
two ranks, --loss fused and logits), logged loss = mean token loss, learning on a repeated
batch, outputs.

The reference for one optimizer step is computed here independently of the Trainer and
of the project's loss: per-sample summed cross-entropy (torch's own) over all trained
tokens of the 4 samples, divided by their count, back-propagated, then one plain SGD
step theta - lr * grad. Every run must land on those parameters.
"""
import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from smolsft.data import sft as sft_data
from smolsft.train import hf_trainer
from smolsft.train import records as run_records
import train_hw_parallel
from smolsft.files import REPO_ROOT

LR = 1.0  # large, so a wrong gradient scale moves parameters far beyond the tolerance


def tiny_llama(path: Path, tokenizer, heads: int = 4, kv_heads: int = 2) -> Path:
    """A 2-layer, hidden-64 Llama with SmolLM2's vocabulary, saved with the tokenizer
    (``heads=1, kv_heads=1`` gives head_dim 64, which vLLM's CPU attention supports; 16 it does not)."""
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=heads,
                      num_key_value_heads=kv_heads, vocab_size=49152, bos_token_id=0, eos_token_id=0,
                      tie_word_embeddings=True, max_position_embeddings=512)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# Four chats of different lengths (so padding and per-rank token counts differ).
CHATS = [
    [("user", "What is two plus two?"), ("assistant", "Four.")],
    [("system", "You answer in one short sentence."), ("user", "Why is the sky blue?"),
     ("assistant", "Air scatters blue light more than red light, so the sky looks blue from every direction.")],
    [("user", "Say hi."), ("assistant", "Hi!"), ("user", "Now say bye."), ("assistant", "Bye, and have a good day.")],
    [("user", "List three prime numbers, please."), ("assistant", "Two, three and five are prime numbers.")],
]


def write_chats(path: Path, chats=CHATS) -> Path:
    with open(path, "w") as f:
        for c in chats:
            f.write(json.dumps({"conversations": [{"role": r, "content": t} for r, t in c]}) + "\n")
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_llama_dir):
    root = tmp_path_factory.mktemp("train")
    model = tiny_llama_dir
    data = write_chats(root / "four.jsonl")
    return root, model, data


def common_args(model, data, out, cache):
    return ["--model_name_or_path", str(model), "--data_path", str(data), "--output_dir", str(out),
            "--data_cache_dir", str(cache), "--model_max_length", "256", "--max_steps", "1",
            "--optim", "sgd", "--learning_rate", str(LR), "--lr_scheduler_type", "constant",
            "--max_grad_norm", "0", "--weight_decay", "0", "--logging_steps", "1", "--save_strategy", "no",
            "--report_to", "none", "--dataloader_pin_memory", "False", "--seed", "1",
            "--precision", "fp32"]  # the exactness reference: fp32 whatever the CPU has


def reference_step(model_dir: Path, tokenizer, data: Path):
    """(mean token loss, parameters after one SGD step) over all samples of ``data``."""
    arrays, _ = sft_data.build_features(str(data), tokenizer, 256, "right", 0, "assistant")
    samples = sft_data.ConversationDataset(arrays)
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    total, count = 0.0, 0
    for s in samples:  # one at a time: no padding involved
        logits = model(input_ids=s["input_ids"][None]).logits[0, :-1]
        target = s["labels"][1:]
        total = total + F.cross_entropy(logits, target, ignore_index=-100, reduction="sum")
        count += int((target != -100).sum())
    loss = total / count
    loss.backward()
    with torch.no_grad():
        after = {n: (p - LR * p.grad).clone() for n, p in model.named_parameters()}
    return float(loss.detach()), after


@pytest.fixture(scope="module")
def reference(setup, tokenizer):
    _, model, data = setup
    return reference_step(model, tokenizer, data)


def assert_params_match(model_dir: Path, after: dict, what: str):
    saved = load_file(str(Path(model_dir) / "model.safetensors"))
    checked = 0
    for name, expected in after.items():
        if name not in saved:  # tied lm_head is stored once, as the embedding
            continue
        torch.testing.assert_close(saved[name].float(), expected, rtol=1e-4, atol=2e-5, msg=lambda m: f"{what}: {name}: {m}")
        checked += 1
    assert checked >= len(saved) - 1 and checked > 10


def logged_losses(out: Path) -> list:
    state = json.loads((Path(out) / "trainer_state.json").read_text())
    return [h["loss"] for h in state["log_history"] if "loss" in h]


@pytest.mark.slow
@pytest.mark.parametrize("bsz,ga,loss", [(4, 1, "fused"), (1, 4, "fused"), (1, 4, "logits")])
def test_accumulation_exact_without_deepspeed(setup, reference, bsz, ga, loss):
    root, model, data = setup
    out = root / f"plain_{bsz}x{ga}_{loss}"
    argv = common_args(model, data, out, root / "cache") + [
        "--per_device_train_batch_size", str(bsz), "--gradient_accumulation_steps", str(ga), "--loss", loss]
    trainer = train_hw_parallel.main(argv)
    assert trainer.state.global_step == 1
    ref_loss, ref_after = reference
    # Logged loss is the mean token loss (rounded to 4 decimals by the Trainer), not / GA.
    assert logged_losses(out)[0] == pytest.approx(ref_loss, abs=1e-4)
    assert_params_match(out, ref_after, f"bsz {bsz} x GA {ga}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _single_rank_env() -> dict:
    # One DeepSpeed rank without the launcher: torch.distributed reads these.
    return {**os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(_free_port()), "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_accumulation_exact_with_deepspeed(setup, reference):
    """ZeRO-2 on the CPU accelerator: 1 rank 4x1 with --loss logits, 1 rank 1x4 (in
    parallel), then 2 ranks through the launcher, 1 sample x GA 2 each (both with the
    default --loss fused); all land on the reference step."""
    root, model, data = setup
    ds = str(REPO_ROOT / "ds_configs" / "zero2_no_offload.json")
    procs, ports = {}, []
    for bsz, ga, loss in [(4, 1, "logits"), (1, 4, "fused")]:
        out = root / f"ds_{bsz}x{ga}_{loss}"
        cmd = [sys.executable, str(REPO_ROOT / "train_hw_parallel.py"), "--deepspeed", ds,
               *common_args(model, data, out, root / "cache"),
               "--per_device_train_batch_size", str(bsz), "--gradient_accumulation_steps", str(ga), "--loss", loss]
        env = _single_rank_env()
        ports.append(env["MASTER_PORT"])
        procs[out] = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for out, p in procs.items():
        log = p.communicate(timeout=300)[0]
        assert p.returncode == 0, log[-3000:]
    out2 = root / "ds_2ranks"
    ports.append(str(_free_port()))
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", ports[-1],
           str(REPO_ROOT / "train_hw_parallel.py"), "--deepspeed", ds,
           *common_args(model, data, out2, root / "cache"),
           "--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "2"]
    r = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    # No rank leaves its shared-memory all-reduce buffer behind (it would hold RAM until reboot).
    left = [p.name for port in ports for p in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*")]
    assert not left, left
    ref_loss, ref_after = reference
    for out, what in [*((o, o.name) for o in procs), (out2, "2 ranks x 1 x GA 2")]:
        assert logged_losses(out)[0] == pytest.approx(ref_loss, abs=1e-4), what
        assert_params_match(out, ref_after, what)


# Two long answers: with --model_max_length 24 --truncation_side left their windows
# start inside the answer, so the masking labels position 0 (never a target).
LONG_ANSWER_CHATS = [
    [("user", "Hi."), ("assistant", "Hello there, how can I help you today with anything at all you might need? "
                                    "I am happy to answer questions about science, cooking, travel and more.")],
    [("user", "Name a color."), ("assistant", "Blue.")],
    [("user", "Explain rain."), ("assistant", "Water vapour rises, cools and condenses into tiny droplets around "
                                              "dust; the droplets merge, grow heavy and finally fall as rain.")],
    [("user", "Say yes."), ("assistant", "Yes.")],
]


@pytest.mark.slow
def test_logged_loss_counts_shifted_targets_when_windows_start_mid_answer(setup, tokenizer, tmp_path):
    """One step at learning rate 0: the logged loss is sum(-log p) / shifted targets,
    both computed here from the Part 1-2 masking and a plain forward pass, and the
    manifest's trained-token count is that number of targets."""
    from conversation_func import conversation_to_unpadded
    from smolsft.chat.format import normalize_conversation

    _, model, _ = setup
    data = write_chats(tmp_path / "long.jsonl", LONG_ANSWER_CHATS)
    ref_model = LlamaForCausalLM.from_pretrained(model, dtype=torch.float32)
    total, targets, starts_trained = 0.0, 0, 0
    with torch.no_grad():
        for chat in LONG_ANSWER_CHATS:
            msgs = normalize_conversation([{"role": r, "content": t} for r, t in chat])
            s = conversation_to_unpadded(msgs, tokenizer, 24, "left")
            starts_trained += int(s["labels"][0] != -100)
            logp = torch.log_softmax(ref_model(input_ids=s["input_ids"][None]).logits[0, :-1].double(), -1)
            target = s["labels"][1:]
            keep = target != -100
            total += float(-logp[keep].gather(1, target[keep][:, None]).sum())
            targets += int(keep.sum())
    assert starts_trained == 2  # the case under test: two windows start mid-answer
    out = tmp_path / "run"
    argv = common_args(model, data, out, tmp_path / "cache") + [
        "--per_device_train_batch_size", "4", "--learning_rate", "0", "--model_max_length", "24",
        "--truncation_side", "left"]
    train_hw_parallel.main(argv)
    assert logged_losses(out)[0] == pytest.approx(total / targets, abs=1e-4)
    manifest = json.loads((out / "run_manifest.json").read_text())
    assert manifest["masking"]["trained_tokens"] == targets


@pytest.mark.slow
def test_loss_decreases_on_repeated_batch(setup, tmp_path):
    _, model, _ = setup
    data = write_chats(tmp_path / "two.jsonl", CHATS[:2])
    out = tmp_path / "run"
    argv = common_args(model, data, out, tmp_path / "cache")
    argv += ["--per_device_train_batch_size", "2", "--max_steps", "8", "--optim", "adamw_torch",
             "--learning_rate", "3e-3"]
    train_hw_parallel.main(argv)
    losses = logged_losses(out)
    assert len(losses) == 8
    assert losses[-1] < losses[0] - 2.0, losses


def test_padding_free_refuses_sdpa(setup, tmp_path):
    _, model, data = setup
    argv = common_args(model, data, tmp_path / "x", tmp_path / "cache") + ["--padding_free", "True"]
    with pytest.raises(ValueError, match="--padding_free needs --flash_attn"):
        train_hw_parallel.main(argv)


def test_bad_data_stops_with_file_and_line(setup, tmp_path):
    _, model, _ = setup
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"conversations": []}\n{"conversations": [{"role": "user", "content": "x"}\n')
    argv = common_args(model, bad, tmp_path / "x", tmp_path / "cache")
    with pytest.raises(sft_data.DataFormatError, match=r"bad.jsonl:2: malformed JSON"):
        train_hw_parallel.main(argv)
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"conversations": [{"role": "user", "content": "no answer"}]}\n')
    with pytest.raises(SystemExit, match="no trainable conversation"):
        train_hw_parallel.main(common_args(model, empty, tmp_path / "y", tmp_path / "cache"))


def test_finished_run_is_not_trained_again(tmp_path):
    """A finished run is recognised (the Trainer would otherwise add one step on resume);
    a longer --max_steps, a changed epoch plan or a run that never completed resume instead."""
    from transformers import TrainingArguments
    out = tmp_path / "run"
    ckpt = out / "checkpoint-2"
    ckpt.mkdir(parents=True)
    manifest = out / "run_manifest.json"
    args = lambda **kw: TrainingArguments(output_dir=str(out), report_to="none", **kw)  # noqa: E731
    assert run_records.finished_step(str(ckpt), args(max_steps=2)) is None  # never completed: no manifest
    manifest.write_text(json.dumps({"global_step": 2, "training_args": {"max_steps": -1, "num_train_epochs": 1.0}}))
    assert run_records.finished_step(str(ckpt), args(max_steps=2)) == 2
    assert run_records.finished_step(str(ckpt), args(max_steps=3)) is None
    assert run_records.finished_step(str(ckpt), args(num_train_epochs=1)) == 2
    assert run_records.finished_step(str(ckpt), args(num_train_epochs=2)) is None
    assert run_records.finished_step(None, args(max_steps=2)) == 2  # no checkpoint (--save_strategy no): the export
    assert run_records.finished_step(None, args(max_steps=3)) is None
    # A run cut short by --max_steps is not a finished epoch plan, and fractional epochs
    # compare as requested (the Trainer's state rounds them up).
    manifest.write_text(json.dumps({"global_step": 2, "training_args": {"max_steps": 2, "num_train_epochs": 1.0}}))
    assert run_records.finished_step(str(ckpt), args(num_train_epochs=1)) is None
    manifest.write_text(json.dumps({"global_step": 3, "training_args": {"max_steps": -1, "num_train_epochs": 1.5}}))
    assert run_records.finished_step(str(ckpt), args(num_train_epochs=1.5)) == 3


# ------------------------------------------------ one run per folder (issue 11, kind 2)
def _folder_state(folder: Path) -> dict:
    """Every file under ``folder`` with its size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_rerun_with_another_plan_is_refused_same_plan_resumes(setup, tmp_path, capsys):
    root, model, data = setup
    out = tmp_path / "run"
    base = common_args(model, data, out, root / "cache") + [
        "--per_device_train_batch_size", "2", "--save_strategy", "steps", "--save_steps", "1"]
    train_hw_parallel.main(base)  # --max_steps 1 (from common_args): checkpoint-1
    other_data = write_chats(tmp_path / "other.jsonl", CHATS[:3])
    old_hash, new_hash = (hashlib.sha256(Path(f).read_bytes()).hexdigest() for f in (data, other_data))
    changes = [  # (extra arguments, the message line naming the setting with old and new value)
        (["--data_path", str(other_data)],
         f"data (--data_path content hash): {old_hash} ({data}) -> {new_hash} ({other_data})"),
        (["--gradient_accumulation_steps", "2"], "--gradient_accumulation_steps: 1 -> 2"),
        (["--learning_rate", "0.5"], f"--learning_rate: {LR} -> 0.5"),
    ]
    before = _folder_state(out)
    for extra, line in changes:
        with pytest.raises(SystemExit) as err:
            train_hw_parallel.main(base + ["--max_steps", "2"] + extra)
        msg = str(err.value)
        assert line in msg and "another RUNNAME" in msg and "--overwrite_output_dir True" in msg, msg
        assert msg.count("\n  --") + msg.count("\n  data (") == 1, msg  # only the changed setting is named
        assert _folder_state(out) == before, extra  # nothing written, nothing removed
    plan = json.loads((out / "run_plan.json").read_text())
    assert plan["plan"]["gradient_accumulation_steps"] == 1 and plan["plan"]["learning_rate"] == LR
    # The same plan with a larger --max_steps resumes from checkpoint-1.
    capsys.readouterr()
    trainer = train_hw_parallel.main(base + ["--max_steps", "2"])
    assert trainer.state.global_step == 2 and "resuming from" in capsys.readouterr().out
    assert json.loads((out / "run_plan.json").read_text()) == plan
    # A folder from before run_plan.json resumes with a warning and records the plan.
    (out / "run_plan.json").unlink()
    trainer = train_hw_parallel.main(base + ["--max_steps", "3"])
    log = capsys.readouterr().out
    assert trainer.state.global_step == 3 and "no run_plan.json" in log and "resuming from" in log
    assert json.loads((out / "run_plan.json").read_text()) == plan
    # --overwrite_output_dir True starts the folder over: old checkpoints go, the new plan is recorded.
    trainer = train_hw_parallel.main(base + ["--learning_rate", "0.5", "--overwrite_output_dir", "True"])
    assert trainer.state.global_step == 1
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]
    assert json.loads((out / "run_plan.json").read_text())["plan"]["learning_rate"] == 0.5


def test_remove_shm_allreduce_buffer_unlinks_only_this_ranks_file(tmp_path):
    uid = os.getuid()
    mine = tmp_path / f"deepspeed_allreduce_buffer_{uid}_127.0.0.1_29611_1"
    other = tmp_path / f"deepspeed_allreduce_buffer_{uid}_127.0.0.1_29611_0"
    for f in (mine, other):
        f.write_bytes(b"x")
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29611", "RANK": "1"}
    assert hf_trainer.remove_shm_allreduce_buffer(env, str(tmp_path)) == str(mine)
    assert not mine.exists() and other.exists()
    assert hf_trainer.remove_shm_allreduce_buffer(env, str(tmp_path)) is None  # already gone
    assert hf_trainer.remove_shm_allreduce_buffer({}, str(tmp_path)) is None  # not a distributed run
