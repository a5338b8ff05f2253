"""Part 6: supervised fine-tuning of a causal LM on chat data with the HF Trainer,
under DeepSpeed ZeRO-2 when launched through ``scripts/sft.sh``.

    deepspeed --num_gpus N train_hw_parallel.py --deepspeed ds_configs/zero2_no_offload.json \\
        --model_name_or_path SmolLM2-135M --data_path smol-smoltalk-6k.json --output_dir ckpt/HW2 ...
    torchrun --nproc_per_node N train_hw_parallel.py --model_name_or_path ...   # no DeepSpeed: DDP
    python train_hw_parallel.py --help          # every TrainingArguments flag + the ones below

What it adds to a plain Trainer run:
- data: records normalized by ``utils.normalize_conversation`` and masked by Parts 1-4
  (``--mask_mode assistant`` trains assistant turns, ``reverse`` trains user turns: a
  user simulator), cached unpadded (``sft_data``), every drop counted and printed;
- batches padded to their longest sample (multiple of 8) with length-grouped sampling
  (``--train_sampling_strategy group_by_length``, which scripts/sft.sh turns on), or packed without padding when the
  attention can keep samples apart (``--padding_free`` with ``--flash_attn``);
- the token loss as a sum / the token count of the whole accumulated batch (all ranks),
  which the Trainer passes to a custom loss, so gradient accumulation is exact and the
  logged loss is the mean token loss: by default (``--loss fused``) without ever building
  the logits (``fused_loss.FusedLossTrainer``), or (``--loss logits``) Part 5's
  ``compute_loss_from_logits`` on the model's logits through ``compute_loss_func``;
- outputs a report needs: the model in safetensors with a generation config that stops
  at ``<|im_end|>``, the tokenizer with its chat template, ``trainer_state.json``, a loss
  curve PNG and ``run_manifest.json`` (arguments, commit, hashes, masking statistics);
- rerunning the same command resumes from the last checkpoint in ``--output_dir``; the
  run's plan (data hash, model, masking, lengths, batch geometry, optimizer, schedule,
  seeds) is recorded there first (``run_plan.json``), and a rerun with another plan
  stops before training instead of mixing two runs (see :func:`check_run_plan`).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch
import transformers
from transformers import AutoModelForCausalLM, HfArgumentParser, Trainer, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

import sft_data
from fused_loss import FusedLossTrainer
from loss_functions import compute_loss_from_logits
from report import plot_loss_curve
from utils import REPO_ROOT, end_of_turn_ids, load_tokenizer, pad_token_id, resolve_path


@dataclass
class ModelArguments:
    model_name_or_path: str = field(default="SmolLM2-135M", metadata={"help": "Model folder or hub id."})
    flash_attn: bool = field(
        default=False,
        metadata={"help": "Use flash_attention_2 (needs the flash-attn package, an Ampere+ GPU and bf16/fp16); "
                          "otherwise PyTorch sdpa."},
    )
    loss: str = field(
        default="fused",
        metadata={"help": "fused: output layer + cross-entropy in chunks over the trained positions, never "
                          "building the logits (fused_loss.py); logits: the model's logits through Part 5's "
                          "compute_loss_from_logits. Same loss and gradients.",
                  "choices": ["fused", "logits"]},
    )


@dataclass
class DataArguments:
    data_path: str = field(
        default="smol-smoltalk-6k.json",
        metadata={"help": "A .json/.jsonl file, a folder of them, or a hub dataset id (train split)."},
    )
    conversation_field: str = field(
        default="conversations",
        metadata={"help": "Record field holding the turns; 'conversations' and 'messages' are both tried."},
    )
    max_rounds: int = field(
        default=5,
        metadata={"help": "Keep the first N rounds (a user turn and the turns up to the next one); 0 keeps all."},
    )
    preprocess_workers: int = field(default=1, metadata={"help": "Processes for tokenization and masking."})
    truncation_side: str = field(
        default="right", metadata={"help": "right keeps the start of a long chat, left keeps its end.",
                                   "choices": ["right", "left"]}
    )
    model_max_length: int = field(default=2048, metadata={"help": "Tokens per sample after truncation."})
    mask_mode: str = field(
        default="assistant",
        metadata={"help": "assistant: train assistant turns (Parts 1-2); reverse: train user turns (Parts 3-4).",
                  "choices": ["assistant", "reverse"]},
    )
    padding_free: bool = field(
        default=False,
        metadata={"help": "Pack each batch into one row with position ids, no padding (flash_attention_2 only: "
                          "sdpa/eager would let packed samples attend to each other)."},
    )
    data_cache_dir: Optional[str] = field(
        default=None, metadata={"help": f"Preprocessing cache folder (default {sft_data.DEFAULT_CACHE_DIR})."}
    )
    no_data_cache: bool = field(default=False, metadata={"help": "Preprocess without reading or writing the cache."})


@dataclass
class RunArguments:
    # transformers 5 dropped this TrainingArguments flag; the resume logic here still needs it.
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start from scratch even when --output_dir holds checkpoints (default: resume from the last)."},
    )


def git_commit() -> str:
    """The code's commit, with "-dirty" when tracked files differ from it (or "unknown")."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def make_collator(data_args: DataArguments, attn_implementation: str, tokenizer):
    """Pad-to-longest batches, or padding-free packing where the attention supports it."""
    if not data_args.padding_free:
        return sft_data.PadToLongestCollator.for_tokenizer(tokenizer)
    if attn_implementation != "flash_attention_2":
        raise ValueError(
            f"--padding_free needs --flash_attn (attention is {attn_implementation}): packed samples "
            "are kept apart only by flash-attention's variable-length kernels"
        )
    # Library collator: concatenates the batch into one row, restarts position_ids per
    # sample (flash-attention turns them into sequence boundaries) and puts -100 at each
    # sample's first label so no sample is trained to predict the next one's start.
    return transformers.DataCollatorWithFlattening(return_position_ids=True, separator_id=-100)


def write_manifest(path: str, model_args, data_args, training_args, stats, key, trainer, resumed_from) -> dict:
    """run_manifest.json: what was run, on which code and data, and what the masking kept."""
    manifest = {
        "command": sys.argv,
        "model_args": asdict(model_args),
        "data_args": asdict(data_args),
        "training_args": json.loads(training_args.to_json_string()),
        "git_commit": git_commit(),
        "tokenizer_fingerprint": key["tokenizer"],
        "data_hash": key["data_hash"],
        "preprocess_key": key,
        "masking": {
            **{k: int(v) for k, v in sorted(stats.items())},
            "trained_token_fraction": stats.get("trained_tokens", 0) / max(stats.get("tokens", 0), 1),
        },
        "world_size": training_args.world_size,
        "resumed_from": resumed_from,
        "global_step": trainer.state.global_step,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    with open(path, "w") as f:
        json.dump(manifest, f, indent=2)
    return manifest


def finished_step(checkpoint: Optional[str], training_args: TrainingArguments) -> Optional[int]:
    """The step at which a run resumed from ``checkpoint`` is already complete, else None.

    Why: the Trainer resumed from a checkpoint at its last step still runs one more
    optimizer step before it notices it is done, so rerunning a finished command would
    change the saved model. The decision is made here, before anything loads, because a
    callback cannot stop the Trainer before that step. A run counts as finished when
    ``run_manifest.json`` (written only after a completed run) records the same plan as
    requested now: a ``--max_steps`` it reached, or, without ``--max_steps``, the same
    ``--num_train_epochs`` (compared with the requested arguments, not the Trainer's
    rounded-up plan in trainer_state.json).
    """
    manifest_path = os.path.join(training_args.output_dir, "run_manifest.json")
    if not checkpoint or not os.path.exists(manifest_path):
        return None
    with open(manifest_path, encoding="utf-8") as f:
        manifest = json.load(f)
    step, done_args = manifest.get("global_step", 0), manifest.get("training_args", {})
    if training_args.max_steps > 0:
        return step if step >= training_args.max_steps else None
    same_plan = done_args.get("max_steps", -1) <= 0 and done_args.get("num_train_epochs") == training_args.num_train_epochs
    return step if same_plan else None


RUN_PLAN_FILE = "run_plan.json"
# TrainingArguments that decide which samples each optimizer step trains on and how the
# weights move. --max_steps and --num_train_epochs are left out: extending a run is allowed.
PLAN_TRAINING_ARGS = (
    "per_device_train_batch_size", "gradient_accumulation_steps", "world_size",
    "optim", "optim_args", "learning_rate", "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps",
    "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm",
    "seed", "data_seed", "train_sampling_strategy", "dataloader_drop_last",
)


def run_plan(model_args, data_args, training_args, data_hash: str) -> dict:
    """The settings a resumed run must share with the run it continues, as JSON values:
    the data (``data_hash``, from ``sft_data.data_fingerprint``), the model, masking and lengths, batch geometry (per-device
    batch, accumulation, world size), optimizer and schedule, seeds and sampling."""
    plan = {
        "data_hash": data_hash,
        "model_name_or_path": resolve_path(model_args.model_name_or_path),
        **{k: getattr(data_args, k) for k in ("mask_mode", "model_max_length", "truncation_side", "max_rounds",
                                               "conversation_field", "padding_free")},
        **{k: getattr(training_args, k) for k in PLAN_TRAINING_ARGS if hasattr(training_args, k)},
    }
    return json.loads(json.dumps(plan, default=lambda v: getattr(v, "value", str(v))))  # enums -> their strings


def check_run_plan(output_dir: str, plan: dict, data_path: str, overwrite: bool, keep: Optional[str],
                   writer: bool, log=print) -> None:
    """Record ``plan`` in ``output_dir/run_plan.json`` at the start of a run, or stop a
    rerun that would mix two runs in one folder.

    - A recorded plan that differs from ``plan`` (settings recorded by both) raises
      ``SystemExit`` naming each differing setting with its old and new value and the
      two ways forward; nothing in the folder is touched.
    - The same plan: nothing is written (the run resumes as before).
    - ``overwrite`` (``--overwrite_output_dir True``): the old run's ``checkpoint-*``
      folders (except ``keep``, an explicit ``--resume_from_checkpoint``) and its
      ``run_manifest.json`` are removed, so no later rerun resumes from them, and the
      new plan is recorded.
    - A folder with checkpoints but no record (an older version of this script)
      resumes with a warning, and the plan is recorded from now on.

    Only the ``writer`` process (rank 0) writes; the file is replaced atomically.
    """
    path = os.path.join(output_dir, RUN_PLAN_FILE)
    if os.path.exists(path) and not overwrite:
        with open(path, encoding="utf-8") as f:
            recorded = json.load(f)
        old = recorded.get("plan", {})
        diffs = [k for k in plan if k in old and old[k] != plan[k]]
        if not diffs:
            return

        def shown(key, value, where):
            return f"{value} ({where})" if key == "data_hash" else json.dumps(value)

        names = {"data_hash": "data (--data_path content hash)", "world_size": "world size (ranks)"}
        lines = [f"  {names.get(k, '--' + k)}: {shown(k, old[k], recorded.get('data_path'))} -> "
                 f"{shown(k, plan[k], data_path)}" for k in diffs]
        raise SystemExit(
            f"{output_dir} holds a run with another plan ({RUN_PLAN_FILE}); resuming it with these settings "
            f"would mix two runs:\n" + "\n".join(lines) + "\n"
            f"Either train into a new folder (another RUNNAME, or --output_dir), or start this folder over "
            f"with --overwrite_output_dir True (its checkpoints are then deleted).")
    if not writer:
        return
    if overwrite and os.path.isdir(output_dir):
        stale = [os.path.join(output_dir, n) for n in sorted(os.listdir(output_dir))
                 if (n.startswith(PREFIX_CHECKPOINT_DIR + "-") or n == "run_manifest.json")]
        stale = [p for p in stale if not (keep and os.path.abspath(p) == os.path.abspath(keep))]
        for p in stale:
            shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
        if stale:
            names = ", ".join(os.path.basename(p) for p in stale)
            log(f"[plan] --overwrite_output_dir: removed {names} from {output_dir}")
    elif not os.path.exists(path) and os.path.isdir(output_dir) and get_last_checkpoint(output_dir):
        log(f"[plan] warning: {output_dir} has checkpoints but no {RUN_PLAN_FILE} (made by an older version): "
            f"resuming without checking that it was trained with the same settings; recording them now")
    os.makedirs(output_dir, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"plan": plan, "data_path": data_path}, f, indent=2)
    os.replace(tmp, path)


@contextlib.contextmanager
def deepspeed_blocked(block: bool):
    """Within the block, ``import deepspeed`` raises ImportError and transformers and
    accelerate see DeepSpeed as not installed (``sys.modules["deepspeed"] = None``, which
    ``importlib.util.find_spec`` reports as absent).

    Why: a run without ``--deepspeed`` (torchrun / DDP, one process) needs nothing from
    DeepSpeed, but accelerate's ``unwrap_model`` imports it whenever the package is
    installed, so a release that fails to import (no CUDA toolkit, deepspeed issue #7452)
    would stop a run that never asked for it. Nothing is blocked when ``block`` is False or
    deepspeed is already imported; the entry is removed again on exit.
    """
    if not block or "deepspeed" in sys.modules:
        yield
        return
    sys.modules["deepspeed"] = None
    try:
        yield
    finally:
        if "deepspeed" in sys.modules and sys.modules["deepspeed"] is None:
            del sys.modules["deepspeed"]


def main(argv: Optional[list[str]] = None) -> Optional[Trainer]:
    parser = HfArgumentParser((ModelArguments, DataArguments, RunArguments, TrainingArguments), description=__doc__)
    model_args, data_args, run_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    with deepspeed_blocked(not training_args.deepspeed):
        return train(model_args, data_args, run_args, training_args)


def train(model_args: ModelArguments, data_args: DataArguments, run_args: RunArguments,
          training_args: TrainingArguments) -> Optional[Trainer]:
    """One training run from parsed arguments (see the module docstring); None when the
    run in ``--output_dir`` is already finished."""
    log = print if training_args.process_index == 0 else (lambda *a, **k: None)
    transformers.set_seed(training_args.seed)

    data_hash = sft_data.data_fingerprint(data_args.data_path)  # hashes every data file: once per run
    check_run_plan(training_args.output_dir, run_plan(model_args, data_args, training_args, data_hash),
                   data_args.data_path, run_args.overwrite_output_dir, training_args.resume_from_checkpoint, training_args.should_save, log)
    resume = training_args.resume_from_checkpoint
    if resume is None and os.path.isdir(training_args.output_dir) and not run_args.overwrite_output_dir:
        resume = get_last_checkpoint(training_args.output_dir)
    done_at = finished_step(resume, training_args)
    if done_at is not None:
        log(f"[done] {training_args.output_dir} already finished at step {done_at} (checkpoint {resume}); "
            f"nothing to train. Use a new --output_dir or --overwrite_output_dir True to train again.")
        return None

    model_path = resolve_path(model_args.model_name_or_path)
    tokenizer = load_tokenizer(model_path, data_args.model_max_length)

    # Rank 0 preprocesses and writes the cache while the other ranks wait, then read it.
    with training_args.main_process_first(desc="preprocessing"):
        arrays, stats, key = sft_data.load_or_build(
            data_args.data_path, tokenizer, data_args.model_max_length, data_args.truncation_side,
            data_args.max_rounds, data_args.mask_mode, data_args.conversation_field,
            data_args.preprocess_workers, data_args.data_cache_dir, not data_args.no_data_cache, log=log,
            data_hash=data_hash,
        )
    log(f"[data] {data_args.data_path}: {sft_data.format_stats(stats)}")
    if stats["conversations_kept"] == 0:
        raise SystemExit(f"{data_args.data_path}: no trainable conversation left (see the drop counts above)")
    dataset = sft_data.ConversationDataset(arrays)

    attn = "flash_attention_2" if model_args.flash_attn else "sdpa"
    collator = make_collator(data_args, attn, tokenizer)
    # fp32 master weights; the Trainer/DeepSpeed casts for bf16/fp16 compute.
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, attn_implementation=attn)
    model.generation_config.eos_token_id = end_of_turn_ids(tokenizer)
    model.generation_config.pad_token_id = pad_token_id(tokenizer)
    if training_args.gradient_checkpointing:
        model.config.use_cache = False

    if model_args.loss == "fused":
        trainer_cls, loss_kwargs = FusedLossTrainer, {}
    else:
        trainer_cls, loss_kwargs = Trainer, {"compute_loss_func": compute_loss_from_logits}
    trainer = trainer_cls(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=collator,
        processing_class=tokenizer,
        **loss_kwargs,
    )

    if resume:
        log(f"[train] resuming from {resume}")
    result = trainer.train(resume_from_checkpoint=resume)

    trainer.save_model()  # safetensors + generation_config.json + tokenizer and chat template
    trainer.save_state()
    if trainer.is_world_process_zero():
        out = training_args.output_dir
        write_manifest(os.path.join(out, "run_manifest.json"), model_args, data_args, training_args, stats, key,
                       trainer, resume)
        png = plot_loss_curve(out)
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        print(f"[done] {trainer.state.global_step} steps, first/last logged loss "
              f"{losses[0] if losses else float('nan'):.4f}/{losses[-1] if losses else float('nan'):.4f}, "
              f"{result.metrics.get('train_runtime', 0):.0f}s; model, manifest and {os.path.basename(png)} in {out}")
    return trainer


if __name__ == "__main__":
    main()
