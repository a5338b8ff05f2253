"""smolsft/lock.py: one writer per output folder (issue 23 row 4): a second writer is refused
naming the first (pid, host, command); a record left by a killed writer is taken over."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from smolsft.files import REPO_ROOT
from smolsft.lock import FolderLock, FolderLockedError


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
