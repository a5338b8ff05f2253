"""The records a training run keeps in its ``--output_dir``, so that a rerun of the same
command resumes it and a rerun with other settings cannot mix two runs:

- ``run_plan.json`` (:func:`run_plan`, :func:`check_run_plan`): the settings a resumed run
  must share with the run it continues, written before training starts;
- ``run_manifest.json`` (:func:`write_manifest`): what was run, on which code and data, and
  what the masking kept, written after a completed run;
- :func:`finished_step`: whether a rerun has anything left to train.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict
from typing import Optional

import torch
import transformers
from transformers import TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from fileio import REPO_ROOT, resolve_path


def git_commit() -> str:
    """The code's commit, with "-dirty" when tracked files differ from it (or "unknown")."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


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
    batch, accumulation, world size), optimizer and schedule, seeds and sampling, and the
    compute precision (``"fp32"``, ``"bf16"`` or ``"fp16"``)."""
    plan = {
        "data_hash": data_hash,
        "model_name_or_path": resolve_path(model_args.model_name_or_path),
        **{k: getattr(data_args, k) for k in ("mask_mode", "model_max_length", "truncation_side", "max_rounds",
                                               "conversation_field", "padding_free")},
        **{k: getattr(training_args, k) for k in PLAN_TRAINING_ARGS if hasattr(training_args, k)},
        # A resumed run continues in the same number format (its checkpoints hold bf16 or fp32 modules).
        "precision": "bf16" if training_args.bf16 else "fp16" if training_args.fp16 else "fp32",
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
