"""Peak resident memory of this process on Linux, for the memory benchmarks.

PyTorch's CPU allocator keeps no peak counter, so the kernel's is used: writing 5 to
``/proc/self/clear_refs`` resets ``VmHWM`` (the peak resident set size) in
``/proc/self/status`` to the current size (proc(5))."""
from __future__ import annotations


def status_bytes(field: str) -> int:
    """A ``/proc/self/status`` memory field (e.g. ``VmRSS``, ``VmHWM``) in bytes; raises
    ``RuntimeError`` when the field is missing (not Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak() -> None:
    """Make ``VmHWM`` start again from the current resident size."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
