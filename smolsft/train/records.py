"""The records a training run keeps in its ``--output_dir``, so that a rerun of the same
command resumes it and a rerun with other settings cannot mix two runs:

- ``run_plan.json`` (:func:`run_plan`, :func:`check_run_plan`): the settings a resumed run
  must share with the run it continues, written before training starts;
- ``run_manifest.json`` (:func:`write_manifest`): what was run, on which code and data, and
  what the masking kept, written after a completed run;
- :func:`resumable_checkpoint`, :func:`checkpoint_problems`: the newest checkpoint a rerun
  can resume from, with incomplete ones (a kill while they were written) set aside;
- :func:`finished_step`, :func:`export_complete`, :func:`export_from_checkpoint`: whether a
  rerun has anything left to train, and the final export of a run killed while writing it.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
import zipfile
from dataclasses import asdict
from typing import Optional

import torch
import transformers
from transformers import TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from smolsft.files import REPO_ROOT, resolve_path
from smolsft.hardware.rules import precision_name


def git_commit() -> str:
    """The code's commit, with "-dirty" when tracked files differ from it (or "unknown")."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_manifest(path: str, model_args, data_args, training_args, stats, key, global_step: int,
                   resumed_from: Optional[str], exported_from: Optional[str] = None) -> dict:
    """run_manifest.json: what was run, on which code and data, what the masking and the
    truncation kept (``stats``), and the final ``global_step``; ``exported_from`` names
    the checkpoint a rerun exported without training (:func:`export_from_checkpoint`).
    Replaced atomically: a kill while writing leaves the old file or none."""
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
        "exported_from": exported_from,
        "global_step": int(global_step),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=2)
    os.replace(tmp, path)
    return manifest


# ------------------------------------------------------------------ checkpoints
# Key of trainer_state.json's ``stateful_callbacks`` under which every checkpoint records
# the stopping arguments its run was started with (TargetRecorder in train_hw_parallel.py):
# trainer_state.json itself keeps only the Trainer's rounded plan (its max_steps, and
# num_train_epochs rounded up), which cannot tell 1.5 requested epochs from 2.
RUN_TARGET_KEY = "sft_run_target"
_CHECKPOINT_RE = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def _zip_complete(path: str) -> bool:
    """torch.save files are zip archives whose directory is written last: a file cut
    short by a kill has none."""
    return os.path.getsize(path) > 0 and zipfile.is_zipfile(path)


def _safetensors_complete(path: str) -> bool:
    """The safetensors header (8-byte little-endian length + JSON) names each tensor's
    byte range; a complete file ends exactly at the last range's end."""
    try:
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        return os.path.getsize(path) == 8 + n + end
    except (OSError, ValueError, struct.error, KeyError, TypeError):
        return False


def _weights_problems(folder: str) -> list[str]:
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index):
        try:
            with open(index, encoding="utf-8") as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
        except (OSError, ValueError, KeyError):
            return ["model.safetensors.index.json unreadable"]
    elif os.path.exists(os.path.join(folder, "model.safetensors")):
        shards = ["model.safetensors"]
    else:
        return ["no model.safetensors"]
    return [f"{s} missing or cut short" for s in shards if not _safetensors_complete(os.path.join(folder, s))]


# DeepSpeed's checkpoint file names (0.19: DeepSpeedEngine._get_ckpt_name, _get_zero_ckpt_prefix,
# deepspeed/checkpoint/constants.py). The optimizer shard's prefix follows the precision
# (bf16 runs write "bf16_zero_pp_rank_..."); ZeRO-3 writes the model states per rank too.
# Offload changes no name. Every form is accepted, so no precision or stage is special.
DS_OPTIM_PREFIXES = ("zero_pp_rank_", "bf16_zero_pp_rank_", "fp16_zero_pp_rank_")
DS_MODEL_STATES = "mp_rank_00_model_states.pt"


def _ds_optim_names(rank: int) -> list[str]:
    return [f"{p}{rank}_mp_rank_00_optim_states.pt" for p in DS_OPTIM_PREFIXES]


def deepspeed_owns_scheduler(config: dict) -> bool:
    """Whether DeepSpeed saves the learning-rate scheduler inside its own shards, so the
    Trainer writes no ``scheduler.pt``: when the DeepSpeed config names a ``scheduler``, or an
    ``optimizer`` (transformers' ``deepspeed_optim_sched`` then wraps even the Trainer's
    scheduler for DeepSpeed, and ``Trainer._save_optimizer_and_scheduler`` skips the file)."""
    return bool(config.get("scheduler") or config.get("optimizer"))


def deepspeed_shard_problems(tag_dir: str, tag: str, world_size: int) -> list[str]:
    """What is missing or cut short in DeepSpeed's ``tag_dir`` (``checkpoint-N/global_stepN``)
    for a run of ``world_size`` ranks, each as ``"<tag>/<file> missing or cut short"``;
    ``[]`` when complete. Complete: the model states (one ``mp_rank_00_model_states.pt``, or
    ZeRO-3's ``zero_pp_rank_R_mp_rank_00_model_states.pt`` for every rank R) and one ZeRO
    optimizer shard per rank under any of DeepSpeed's precision prefixes (``DS_OPTIM_PREFIXES``),
    each a torch.save file with its closing zip directory."""
    def ok(name: str) -> bool:
        p = os.path.join(tag_dir, name)
        return os.path.exists(p) and _zip_complete(p)

    problems = []
    zero3 = [f"zero_pp_rank_{r}_mp_rank_00_model_states.pt" for r in range(world_size)]
    if not ok(DS_MODEL_STATES) and not all(ok(n) for n in zero3):
        present = [n for n in zero3 if os.path.exists(os.path.join(tag_dir, n))]
        missing = [n for n in zero3 if not ok(n)] if present else [DS_MODEL_STATES]
        problems += [f"{tag}/{n} missing or cut short" for n in missing]
    for r in range(world_size):
        names = _ds_optim_names(r)
        if not any(ok(n) for n in names):
            found = [n for n in names if os.path.exists(os.path.join(tag_dir, n))]
            problems.append(f"{tag}/{(found or names)[0]} missing or cut short")
    return problems


def checkpoint_problems(folder: str, world_size: int, deepspeed: bool, save_only_model: bool = False,
                        deepspeed_scheduler: bool = False) -> list[str]:
    """Why ``folder`` (a ``checkpoint-N`` of the Trainer) cannot be resumed from; ``[]``
    when it is complete.

    Complete means: ``trainer_state.json`` parses and records ``global_step`` N (the
    Trainer writes it last, after the weights, the optimizer and every rank's random
    state, and under DeepSpeed after the barrier that follows every rank's shards and
    ``latest``); the weights' safetensors files end where their headers say; a non-empty
    ``training_args.bin``; unless ``save_only_model``, the optimizer and scheduler state
    (with ``deepspeed``: ``latest`` naming ``global_stepN`` with the model states and one
    ZeRO optimizer shard per rank of ``world_size``; ``scheduler.pt`` unless
    ``deepspeed_scheduler``, a scheduler of the DeepSpeed config) and each rank's ``rng_state``, every
    torch.save file with its closing zip directory. The content checks catch a file cut
    short even when the file system lost writes out of order (power loss)."""
    problems = []
    m = _CHECKPOINT_RE.match(os.path.basename(os.path.normpath(folder)))
    step = int(m.group(1)) if m else None
    state_path = os.path.join(folder, "trainer_state.json")
    try:
        with open(state_path, encoding="utf-8") as f:
            state = json.load(f)
        if step is not None and state.get("global_step") != step:
            problems.append(f"trainer_state.json records step {state.get('global_step')}, not {step}")
    except FileNotFoundError:
        problems.append("no trainer_state.json")
    except (OSError, ValueError):
        problems.append("trainer_state.json cut short")
    problems += _weights_problems(folder)
    args_bin = os.path.join(folder, "training_args.bin")
    if not os.path.exists(args_bin) or os.path.getsize(args_bin) == 0:
        problems.append("training_args.bin missing or empty")
    if save_only_model:
        return problems
    if deepspeed:
        try:
            with open(os.path.join(folder, "latest"), encoding="utf-8") as f:
                tag = f.read().strip()
        except OSError:
            tag = None
            problems.append("no DeepSpeed 'latest' file")
        if tag is not None:
            problems += [f"DeepSpeed {s}" for s in deepspeed_shard_problems(os.path.join(folder, tag), tag, world_size)]
    # The Trainer saves its scheduler beside DeepSpeed's files unless DeepSpeed runs its own.
    for name in ([] if deepspeed else ["optimizer.pt"]) + ([] if deepspeed_scheduler else ["scheduler.pt"]):
        p = os.path.join(folder, name)
        if not os.path.exists(p) or not _zip_complete(p):
            problems.append(f"{name} missing or cut short")
    rng = ["rng_state.pth"] if world_size == 1 else [f"rng_state_{r}.pth" for r in range(world_size)]
    problems += [f"{n} missing or cut short" for n in rng
                 if not os.path.exists(os.path.join(folder, n)) or not _zip_complete(os.path.join(folder, n))]
    return problems


# Incomplete checkpoints are moved here, one level down: the Trainer's rotation
# (``checkpoint-*`` directly in the output folder) and resume never see them.
SET_ASIDE_DIR = "incomplete_checkpoints"


def set_aside(output_dir: str, name: str) -> str:
    """Move ``output_dir/name`` to ``output_dir/incomplete_checkpoints/name.<time>[-k]``
    (a fresh name, never over an earlier one) and return the new path."""
    dest_dir = os.path.join(output_dir, SET_ASIDE_DIR)
    os.makedirs(dest_dir, exist_ok=True)
    base = os.path.join(dest_dir, f"{name}.{time.strftime('%Y%m%d-%H%M%S')}")
    dest, k = base, 1
    while os.path.exists(dest):
        dest, k = f"{base}-{k}", k + 1
    os.rename(os.path.join(output_dir, name), dest)
    return dest


def resumable_checkpoint(output_dir: str, world_size: int, deepspeed: bool, save_only_model: bool = False,
                         writer: bool = False, log=print, deepspeed_scheduler: bool = False) -> Optional[str]:
    """The newest complete ``checkpoint-N`` of ``output_dir`` (:func:`checkpoint_problems`),
    or None. Every rank computes the same answer from the folder's content. The
    ``writer`` (rank 0, holding the folder's lock) moves each incomplete checkpoint to
    :data:`SET_ASIDE_DIR` (:func:`set_aside`) and logs it with its problems."""
    if not os.path.isdir(output_dir):
        return None
    found = sorted(((int(m.group(1)), n) for n in os.listdir(output_dir) if (m := _CHECKPOINT_RE.match(n))
                    and os.path.isdir(os.path.join(output_dir, n))), reverse=True)
    chosen = None
    for _, name in found:
        path = os.path.join(output_dir, name)
        problems = checkpoint_problems(path, world_size, deepspeed, save_only_model, deepspeed_scheduler)
        if not problems:
            chosen = chosen or path
            continue
        if writer:
            aside = set_aside(output_dir, name)
            log(f"[resume] {name} is incomplete ({'; '.join(problems)}), probably cut by a kill while it was "
                f"written: set aside as {os.path.relpath(aside, output_dir)} (nothing deleted; delete it once "
                f"you no longer need it)")
    return chosen


def _requested_target(training_args: TrainingArguments) -> dict:
    return {"max_steps": int(training_args.max_steps), "num_train_epochs": float(training_args.num_train_epochs)}


def finished_step(checkpoint: Optional[str], training_args: TrainingArguments) -> Optional[int]:
    """The step at which a run resumed from ``checkpoint`` is already complete, else None.

    Why: the Trainer resumed from a checkpoint at its last step still runs one more
    optimizer step before it notices it is done, so rerunning a finished command would
    change the saved model. The decision is made here, before anything loads, because a
    callback cannot stop the Trainer before that step.

    The checkpoint's own ``trainer_state.json`` decides (its run may have been killed
    during the final save, before ``run_manifest.json``): with ``--max_steps`` M, it is
    finished when its ``global_step`` reached M; without, when its run was started with
    the same ``--num_train_epochs`` and no ``--max_steps`` (recorded under
    ``stateful_callbacks[RUN_TARGET_KEY]``) and its ``global_step`` reached the
    Trainer's plan (``max_steps`` there). A checkpoint from before that record falls back
    to ``run_manifest.json`` (written only after a completed run). Without a checkpoint,
    a ``run_manifest.json`` recording the same plan counts as finished."""
    state_path = os.path.join(checkpoint, "trainer_state.json") if checkpoint else None
    if state_path and os.path.exists(state_path):
        with open(state_path, encoding="utf-8") as f:
            state = json.load(f)
        step = int(state.get("global_step", 0))
        if training_args.max_steps > 0:
            return step if step >= training_args.max_steps else None
        target = (state.get("stateful_callbacks") or {}).get(RUN_TARGET_KEY)
        if target is not None:
            same = target.get("max_steps", -1) <= 0 and target.get("num_train_epochs") == training_args.num_train_epochs
            return step if same and step >= int(state.get("max_steps", 0)) else None
    manifest_path = os.path.join(training_args.output_dir, "run_manifest.json")
    if not os.path.exists(manifest_path):
        return None
    with open(manifest_path, encoding="utf-8") as f:
        manifest = json.load(f)
    step, done_args = manifest.get("global_step", 0), manifest.get("training_args", {})
    if checkpoint and state_path and os.path.exists(state_path):
        with open(state_path, encoding="utf-8") as f:
            if json.load(f).get("global_step") != step:  # the manifest is another (older) export's
                return None
    if training_args.max_steps > 0:
        return step if step >= training_args.max_steps else None
    same_plan = done_args.get("max_steps", -1) <= 0 and done_args.get("num_train_epochs") == training_args.num_train_epochs
    return step if same_plan else None


# Files of a checkpoint that belong to the resumable training state, not to the model export.
_TRAINING_STATE_FILES = re.compile(r"^(optimizer\.pt|scheduler\.pt|scaler\.pt|rng_state(_\d+)?\.pth|latest|"
                                   r"zero_to_fp32\.py|global_step\d+)$")


def export_complete(output_dir: str, step: int) -> bool:
    """Whether ``output_dir`` holds the final export of step ``step``: a readable
    ``run_manifest.json`` (written last) recording that step, and complete weights."""
    try:
        with open(os.path.join(output_dir, "run_manifest.json"), encoding="utf-8") as f:
            recorded = json.load(f).get("global_step")
    except (OSError, ValueError):
        return False
    return recorded == step and not _weights_problems(output_dir)


def export_from_checkpoint(checkpoint: str, output_dir: str) -> list[str]:
    """Copy the model export of a finished run's last checkpoint (weights, config,
    generation config, tokenizer, chat template, trainer_state.json, training_args.bin)
    into ``output_dir``, each file replaced atomically; the optimizer, scheduler, random
    and DeepSpeed state stay in the checkpoint. These are the files ``Trainer.save_model``
    and ``save_state`` would write at that step (same weights, bit for bit), without
    loading the model. Returns the names copied."""
    copied = []
    for name in sorted(os.listdir(checkpoint)):
        src = os.path.join(checkpoint, name)
        if _TRAINING_STATE_FILES.match(name) or not os.path.isfile(src):
            continue
        tmp = os.path.join(output_dir, f".{name}.{os.getpid()}.tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, os.path.join(output_dir, name))
        copied.append(name)
    return copied


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
    the data (``data_hash``, from ``sft_data.data_fingerprint``; it covers per-message ``train``
    flags), the model, masking (``mask_mode``, ``train_turns``) and lengths, batch geometry (per-device
    batch, accumulation, world size), optimizer and schedule, seeds and sampling, and the
    compute precision (``"fp32"``, ``"bf16"`` or ``"fp16"``)."""
    plan = {
        "data_hash": data_hash,
        "model_name_or_path": resolve_path(model_args.model_name_or_path),
        **{k: getattr(data_args, k) for k in ("mask_mode", "train_turns", "model_max_length", "truncation_side",
                                               "max_rounds", "conversation_field", "padding_free")},
        # An end-of-conversation turn changes what the simulator learns (absent: off).
        **({"simulator_end_marker": True} if getattr(data_args, "simulator_end_marker", False) else {}),
        **{k: getattr(training_args, k) for k in PLAN_TRAINING_ARGS if hasattr(training_args, k)},
        # A resumed run continues in the same number format (its checkpoints hold bf16 or fp32 modules).
        "precision": precision_name(training_args.bf16, training_args.fp16),
    }
    return json.loads(json.dumps(plan, default=lambda v: getattr(v, "value", str(v))))  # enums -> their strings


def same_plan_on_every_rank(plan: dict, output_dir: str) -> None:
    """Refuse a run whose ranks were started with other settings than rank 0's (a node
    launched with another command line, data file or model): every rank sends its
    ``plan`` (:func:`run_plan`) and ``output_dir`` to all (``torch.distributed``'s
    ``all_gather_object``, a collective every rank calls), and each raises ``SystemExit``
    naming the first rank that differs, its host and each differing setting. Does nothing
    without an initialized process group of two or more ranks."""
    import socket

    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return
    mine = {"plan": {**plan, "output_dir": os.path.abspath(output_dir)}, "host": socket.gethostname()}
    every = [None] * dist.get_world_size()
    dist.all_gather_object(every, mine)
    first = every[0]["plan"]
    for rank, other in enumerate(every[1:], start=1):
        diff = {k: (first.get(k), other["plan"].get(k)) for k in sorted(set(first) | set(other["plan"]))
                if first.get(k) != other["plan"].get(k)}
        if diff:
            shown = "; ".join(f"{k}: rank 0 {a!r}, rank {rank} {b!r}" for k, (a, b) in diff.items())
            raise SystemExit(f"[train] error: rank {rank} (on {other['host']}) was started with other settings "
                             f"than rank 0 (on {every[0]['host']}): {shown}. Start every node with the same "
                             "command and files.")


# What a run leaves once it has trained a step: checkpoints (kept or set aside), the
# Trainer's state and the final export. A folder holding none of them trained nothing.
_TRAINED_OUTPUTS = ("trainer_state.json", "run_manifest.json", "model.safetensors", "pytorch_model.bin")


def trained_outputs(output_dir: str) -> list[str]:
    """Names in ``output_dir`` that show a trained step: ``checkpoint-*`` folders, a
    non-empty :data:`SET_ASIDE_DIR`, the Trainer's state or the exported model
    (sorted; ``[]`` for a missing folder or one holding only a plan, locks and logs)."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in sorted(os.listdir(output_dir)):
        path = os.path.join(output_dir, name)
        if name.startswith(PREFIX_CHECKPOINT_DIR + "-") or name in _TRAINED_OUTPUTS \
                or (name == SET_ASIDE_DIR and os.path.isdir(path) and os.listdir(path)):
            found.append(name)
    return found


_PLAN_NAMES = {"data_hash": "data (--data_path content hash)", "world_size": "world size (ranks)"}


def _plan_refusal(output_dir: str, recorded: dict, plan: dict, data_path: str, diffs: list[str]) -> str:
    """The message refusing ``plan`` in a folder trained with ``recorded``: each setting of
    ``diffs`` with its old and new value, and the two ways forward."""
    def shown(key, value, where):
        return f"{value} ({where})" if key == "data_hash" else json.dumps(value)

    old = recorded.get("plan", {})
    lines = [f"  {_PLAN_NAMES.get(k, '--' + k)}: {shown(k, old[k], recorded.get('data_path'))} -> "
             f"{shown(k, plan[k], data_path)}" for k in diffs]
    return (f"{output_dir} holds a run with another plan ({RUN_PLAN_FILE}); resuming it with these settings "
            f"would mix two runs:\n" + "\n".join(lines) + "\n"
            f"Either train into a new folder (another RUNNAME, or --output_dir), or start this folder over "
            f"with --overwrite_output_dir True (its checkpoints are then deleted).")


def check_run_plan(output_dir: str, plan: dict, data_path: str, overwrite: bool, keep: Optional[str],
                   writer: bool, log=print) -> None:
    """Record ``plan`` in ``output_dir/run_plan.json`` at the start of a run, or stop a
    rerun that would mix two runs in one folder.

    - A recorded plan that differs from ``plan`` (settings recorded by both) raises
      ``SystemExit`` naming each differing setting with its old and new value and the
      two ways forward; nothing in the folder is touched. A folder whose earlier run
      stopped before its first step (:func:`trained_outputs` is empty, e.g. a data file
      that failed to read) has nothing to mix: the new plan replaces the old, with a log line.
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
        if not trained_outputs(output_dir):
            if writer:
                log(f"[plan] {output_dir} holds the plan of a run that trained no step "
                    f"({', '.join(_PLAN_NAMES.get(k, '--' + k) for k in diffs)} changed): "
                    f"starting it again with these settings")
            _write_plan(path, output_dir, plan, data_path, writer)
            return
        raise SystemExit(_plan_refusal(output_dir, recorded, plan, data_path, diffs))
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
    _write_plan(path, output_dir, plan, data_path, writer)


def _write_plan(path: str, output_dir: str, plan: dict, data_path: str, writer: bool) -> None:
    """Replace ``path`` by ``{"plan", "data_path"}`` atomically (the ``writer`` only)."""
    if not writer:
        return
    os.makedirs(output_dir, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"plan": plan, "data_path": data_path}, f, indent=2)
    os.replace(tmp, path)
