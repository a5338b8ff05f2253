"""One writer per output folder: a training run's ``--output_dir``, an evaluation's
results folder, a sweep folder.

    from smolsft.lock import FolderLock, FolderLockedError

    with FolderLock(out, what="training output folder"):
        ...   # only this process writes into ``out``

The lock is an OS lock (``flock`` through the ``filelock`` package) on ``out/.writer.lock``:
the kernel drops it when its process ends, however it ends (kill -9, power loss, a
crashed node's NFS client excepted), so a lock can never be left held by a dead process.
Beside it, ``out/.writer.json`` names the holder (pid, host, start time, command). A
second writer is refused at once with :class:`FolderLockedError` naming the first; a
``.writer.json`` found while the lock is free was left by a writer that died, and taking
over is announced with its details. A clean exit removes ``.writer.json`` (the empty
``.writer.lock`` stays: removing a lock file others may hold open is racy).
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

from filelock import FileLock, Timeout

LOCK_NAME = ".writer.lock"
OWNER_NAME = ".writer.json"


class FolderLockedError(RuntimeError):
    """Another live process holds the folder's lock; the message names it."""


def _describe(owner: dict) -> str:
    return (f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}, started {owner.get('started', '?')}, "
            f"command: {owner.get('command', '?')}")


def read_owner(folder) -> Optional[dict]:
    """The holder record of ``folder`` (or of its last writer that died), or None."""
    try:
        return json.loads((Path(folder) / OWNER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


class FolderLock:
    """Context manager holding ``folder``'s writer lock (the folder is created).

    Raises :class:`FolderLockedError` on entry, without waiting, when another process
    holds it: "<what> <folder> is in use by pid P on HOST, started T, command: C".
    ``log`` gets one line when a dead writer's record is taken over. Not re-entrant
    across processes by design; within one process a second ``FolderLock`` on the same
    folder is refused too (one writer per folder)."""

    def __init__(self, folder, what: str = "output folder", log: Callable[[str], None] = print):
        self.folder, self.what, self.log = Path(folder), what, log
        self._lock: Optional[FileLock] = None

    def __enter__(self) -> "FolderLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        # is_singleton=False (the default) and thread_local=False: a second FolderLock in
        # this process opens its own descriptor, which flock refuses like another process.
        lock = FileLock(str(self.folder / LOCK_NAME), timeout=0, thread_local=False)
        try:
            lock.acquire()
        except Timeout:
            owner = read_owner(self.folder)
            who = _describe(owner) if owner else "another process (its record is missing)"
            raise FolderLockedError(
                f"{self.what} {self.folder} is in use by {who}; wait for it to finish or stop it, "
                f"or use another folder") from None
        self._lock = lock
        stale = read_owner(self.folder)
        if stale:
            self.log(f"[lock] {self.what} {self.folder}: the last writer ({_describe(stale)}) ended without "
                     f"releasing its record (killed?); taking over")
        record = {"pid": os.getpid(), "host": socket.gethostname(), "what": self.what,
                  "started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "command": " ".join(sys.argv)}
        tmp = self.folder / f"{OWNER_NAME}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(record), encoding="utf-8")
        os.replace(tmp, self.folder / OWNER_NAME)
        return self

    def __exit__(self, *exc) -> None:
        try:
            (self.folder / OWNER_NAME).unlink(missing_ok=True)
        finally:
            if self._lock is not None:
                self._lock.release()
                self._lock = None


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str) -> Iterator[Path]:
    """Hold ``folder``'s writer lock for the ``with`` block (:class:`FolderLock`,
    the one lock of training, evaluation and sweep folders; the folder is created). Raises
    :class:`FolderLockedError` at once, naming the holder, when a live process holds it; a
    dead writer's record is reported on stderr and taken over. ``what`` (e.g. ``"IFEval
    run"``) names the job in the refusal."""
    with FolderLock(folder, what, log=lambda msg: print(msg, file=sys.stderr)):
        yield Path(folder)
