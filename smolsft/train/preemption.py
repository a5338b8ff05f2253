"""Preemption: a training run told to stop (SIGTERM, SIGUSR1, or a stop file) finishes the
optimizer step it is in, writes a complete checkpoint and exits with :data:`PREEMPTED_EXIT_CODE`,
so that rerunning the same command (or the requeued SLURM job) resumes from that checkpoint.

Who tells it:
- SIGTERM: SLURM sends it to every process of the job at a preemption, at the time limit and on
  ``scancel``, ``KillWait`` seconds (cluster setting, often 30) before SIGKILL; torchrun and
  DeepSpeed's launcher also forward it to their ranks, and SIGKILL them 30 s later.
- SIGUSR1: a signal sent to the training processes themselves (``scancel --signal=USR1``, or
  ``kill -USR1`` on one rank).
- The stop file (``$SFT_STOP_FILE``, checked after every optimizer step): what
  ``scripts/sft.slurm`` creates on its ``--signal=B:USR1@120`` warning, since a signal sent to a
  SLURM job step reaches every process in it, launchers included, and USR1 ends those.

Every rank must stop at the same step (a rank that stops alone leaves the others waiting in a
collective), so at each step end the ranks take the maximum of their flags over
``torch.distributed`` when it is initialized: one rank told is enough.

A signal that arrives while the checkpoint is written only sets the flag again (the handlers
are in place from ``on_train_begin`` to ``on_train_end``, after the last save of the loop). SIGKILL cannot be caught: a checkpoint it cuts is
set aside by the rerun (``smolsft.train.records.resumable_checkpoint``).
"""
from __future__ import annotations

import os
import signal
import threading
from typing import Callable, Optional

import torch
import transformers

from smolsft.train.settings import SettingsError

PREEMPTED_EXIT_CODE = 75  # sysexits.h EX_TEMPFAIL: "temporary failure, try again" (here: rerun resumes)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
STOP_FILE_ENV = "SFT_STOP_FILE"


class PreemptionCallback(transformers.TrainerCallback):
    """Turns a stop request into a checkpoint and the end of training.

    ``install()`` (main thread only; a no-op elsewhere), called at ``on_train_begin`` and undone
    at ``on_train_end``, makes :data:`STOP_SIGNALS` set ``requested`` (the signal number)
    instead of ending the process. At every ``on_step_end`` the request (a signal, or
    ``stop_file`` existing) is agreed over the ranks; when set and the run is not at its last step, ``control.should_save`` and
    ``control.should_training_stop`` are set and ``stopped_at`` records the step (an int,
    else None). At the last step the run ends as usual (``stopped_at`` stays None).
    """

    def __init__(self, stop_file: Optional[str] = None, log: Callable[[str], None] = print):
        self.stop_file = stop_file if stop_file is not None else os.environ.get(STOP_FILE_ENV) or None
        self.log = log
        self.requested: Optional[int] = None
        self.stopped_at: Optional[int] = None
        self._previous: dict = {}

    def install(self) -> "PreemptionCallback":
        if threading.current_thread() is threading.main_thread() and not self._previous:
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def uninstall(self) -> None:
        """Put back the handlers :meth:`install` replaced."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _on_signal(self, signum, frame) -> None:
        # Only a flag and a raw write here: print() could be re-entered mid-write (RuntimeError).
        if self.requested is None:
            self.requested = signum
            os.write(2, f"[preempt] {signal.Signals(signum).name} received: checkpoint after this optimizer "
                        f"step, then exit status {PREEMPTED_EXIT_CODE}\n".encode())

    def _local_request(self) -> bool:
        return self.requested is not None or bool(self.stop_file and os.path.exists(self.stop_file))

    def agreed(self, device: torch.device) -> bool:
        """Whether any rank has a stop request (a collective when torch.distributed is
        initialized with several ranks: every rank must call it at the same step)."""
        local = self._local_request()
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()
                and torch.distributed.get_world_size() > 1):
            return local
        flag = torch.tensor([1 if local else 0], dtype=torch.int32, device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def on_init_end(self, args, state, control, **kwargs):
        """Raises SettingsError under ``--enable_jit_checkpoint``: transformers' own SIGTERM
        handler would replace this one, save without the ranks agreeing on a step, and let the
        run end as if finished."""
        if getattr(args, "enable_jit_checkpoint", False):
            raise SettingsError("--enable_jit_checkpoint True: this run already saves on SIGTERM/SIGUSR1 and exits "
                                f"{PREEMPTED_EXIT_CODE} (smolsft/train/preemption.py, docs/cluster.md); leave it off")
        return control

    def on_train_begin(self, args, state, control, **kwargs):
        self.install()
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self.uninstall()
        return control

    def on_step_end(self, args, state, control, **kwargs):
        if self.stopped_at is not None or not self.agreed(args.device):
            return control
        if state.max_steps > 0 and state.global_step >= state.max_steps:
            return control  # the last step: the run finishes and exports as usual
        why = (signal.Signals(self.requested).name if self.requested is not None
               else f"stop file {self.stop_file}" if self._local_request() else "another rank's request")
        self.log(f"[preempt] stopping at step {state.global_step} of {state.max_steps} ({why}): "
                 f"writing checkpoint-{state.global_step}; rerun the same command to resume")
        control.should_save = True
        control.should_training_stop = True
        self.stopped_at = state.global_step
        return control
