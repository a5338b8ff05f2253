"""What a training run adds to a plain HF ``Trainer``: callbacks that record the run's
target and keep the schedule on resume, saves that store tied weights once, DeepSpeed's
fp32 master weights put back before the final save, and the CPU all-reduce buffer that
DeepSpeed leaves in shared memory removed. Used by ``train_hw_parallel.py`` (Part 6)."""
from __future__ import annotations

import os
from typing import Optional

import torch
import transformers
from transformers import Trainer

from smolsft.train.records import RUN_TARGET_KEY


class TargetRecorder(transformers.TrainerCallback):
    """Records in every checkpoint's trainer_state.json (``stateful_callbacks``, written
    with the rest of the state, last) the ``--max_steps`` and ``--num_train_epochs`` the
    run was started with, so that a rerun can tell from the checkpoint alone whether
    the run it continues was finished (``run_records.finished_step``)."""

    def __init__(self, target: dict):
        self.target = target

    def on_train_begin(self, args, state, control, **kwargs):
        state.stateful_callbacks[RUN_TARGET_KEY] = dict(self.target)


class ScheduleOnResume(transformers.TrainerCallback):
    """After a resume, sets each optimizer group's learning rate to this run's schedule
    at the resumed step.

    Why: the optimizer state restored from a checkpoint holds the learning rate the old
    schedule gave its last step, and the Trainer steps the scheduler only after each
    optimizer step; a run extended from ``--max_steps 6`` to 10 under cosine would
    run step 7 at the old schedule's end (0) before following the new one. The Trainer's
    schedulers are ``LambdaLR`` (lr = base_lr x lambda(step)), whose lambdas are rebuilt
    for this run's total while ``last_epoch`` comes from the checkpoint; other
    schedulers are left alone. For an interrupted run resumed with the same settings the
    value set is the one restored (a no-op)."""

    def __init__(self, log=print):
        self.log = log

    def on_train_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        lr_scheduler = getattr(lr_scheduler, "scheduler", lr_scheduler)  # accelerate's wrapper
        if state.global_step == 0 or optimizer is None or not isinstance(lr_scheduler, torch.optim.lr_scheduler.LambdaLR):
            return
        step = lr_scheduler.last_epoch
        new = [base * fn(step) for base, fn in zip(lr_scheduler.base_lrs, lr_scheduler.lr_lambdas)]
        old = [g["lr"] for g in optimizer.param_groups]
        for g, lr in zip(optimizer.param_groups, new):
            g["lr"] = lr
        lr_scheduler._last_lr = list(new)
        if any(abs(a - b) > 1e-12 * max(abs(a), abs(b), 1e-30) for a, b in zip(old, new)):
            self.log(f"[train] resumed at step {state.global_step} on the schedule for {state.max_steps} steps: "
                     f"learning rate {new[0]:.4g} (the checkpoint's optimizer held {old[0]:.4g}, its own schedule's)")


def tie_saved_weights(model, state_dict: Optional[dict]) -> Optional[dict]:
    """``state_dict`` without the weights the model ties to another one (``lm_head.weight``
    to the input embedding when ``tie_word_embeddings``), as ``save_pretrained`` writes a
    tied model; ``None`` stays ``None``.

    Why: under DeepSpeed the Trainer saves the clones accelerate's ``get_state_dict``
    returns, and ``save_pretrained`` detects ties by shared storage only, so it would store
    both. A tie is taken from the live model (the two parameters are one object), never
    from the config alone."""
    if state_dict is None:
        return None
    unwrapped = getattr(model, "module", model)
    tied = getattr(unwrapped, "get_expanded_tied_weights_keys", lambda **kw: {})(all_submodels=True) or {}
    params = dict(unwrapped.named_parameters(remove_duplicate=False))
    drop = [target for target, source in tied.items()
            if target in state_dict and source in state_dict and target in params and source in params
            and params[target] is params[source]]
    return {k: v for k, v in state_dict.items() if k not in drop} if drop else state_dict


def with_tied_save(trainer_cls):
    """``trainer_cls`` whose model saves store tied weights once (:func:`tie_saved_weights`)."""
    class TiedSaveTrainer(trainer_cls):
        def _save(self, output_dir=None, state_dict=None):
            return super()._save(output_dir, state_dict=tie_saved_weights(self.model, state_dict))

    TiedSaveTrainer.__name__ = trainer_cls.__name__
    return TiedSaveTrainer


def restore_fp32_master_weights(trainer: Trainer) -> int:
    """Put DeepSpeed's fp32 master weights back into the model before the final save, so
    a bf16/fp16 run saves the weights it trained (fp32), not their 16-bit copies.

    Under DeepSpeed's bf16/fp16 modes the module holds 16-bit copies; ZeRO-1/2 keep the
    fp32 masters partitioned over the ranks and ``deepspeed.utils.safe_get_full_fp32_param``
    gathers each (a collective: every rank calls it). Returns the number of parameters
    restored (0 without DeepSpeed, or in fp32, where the module already holds them)."""
    if not getattr(trainer, "is_deepspeed_enabled", False) or not (trainer.args.bf16 or trainer.args.fp16):
        return 0
    from deepspeed.utils import safe_get_full_fp32_param

    restored = 0
    for p in trainer.model.parameters():
        full = safe_get_full_fp32_param(p)
        if full is not None:
            p.data = full.detach().reshape(p.shape).to(p.device)
            restored += 1
    return restored


def remove_shm_allreduce_buffer(environ: Optional[dict] = None, shm_dir: str = "/dev/shm") -> Optional[str]:
    """Unlink this rank's DeepSpeed CPU all-reduce buffer, if there is one; returns its path.

    DeepSpeed's CPU accelerator (0.19.8, ``ops/csrc/cpu/comm/shm.cpp``) gives every rank a
    shared-memory file ``deepspeed_allreduce_buffer_{uid}_{MASTER_ADDR}_{MASTER_PORT}_{RANK}``
    and never unlinks it, so without this every CPU run would leave one in RAM per rank.
    Called when the rank is done: the other ranks mapped it at start, and an unlinked
    file stays mapped until they exit."""
    env = os.environ if environ is None else environ
    if not all(k in env for k in ("MASTER_ADDR", "MASTER_PORT", "RANK")):
        return None
    path = os.path.join(shm_dir, f"deepspeed_allreduce_buffer_{os.getuid()}_{env['MASTER_ADDR']}_"
                                 f"{env['MASTER_PORT']}_{env['RANK']}")
    try:
        os.unlink(path)
    except FileNotFoundError:
        return None
    return path
