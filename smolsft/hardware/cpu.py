"""Which number format training and generation use on the CPU: bf16 where the processor
does bf16 arithmetic in hardware, fp32 elsewhere.

    from smolsft.hardware.cpu import resolve_precision
    resolve_precision("auto")          # "bf16" on a CPU with AVX512-BF16 or AMX, else "fp32"

(smolsft.hardware.rules.precision calls it for a run without GPU; the attention that goes with
it is smolsft.hardware.rules.training_attention.)

Hardware bf16 is AVX512-BF16 (AMD Zen 4 and newer, Intel Cooper Lake, Sapphire Rapids and
newer), AMX (Intel Sapphire Rapids and newer) or the Armv8.6 BF16 extension. Without it
PyTorch still computes in bf16, but by converting to fp32 in software: slower than fp32,
so ``auto`` picks fp32 there. An explicit ``bf16`` is honoured anywhere (with a note).

Detection asks PyTorch first (``torch.cpu._is_avx512_bf16_supported`` and
``torch.cpu._is_amx_tile_supported``: what its kernels will dispatch to) and reads the
CPU flags of ``/proc/cpuinfo`` (``avx512_bf16``, ``amx_bf16``; ``bf16`` in an Arm
``Features`` line) where PyTorch does not say (those helpers are private and may go).
"""
from __future__ import annotations

from typing import Optional

PRECISIONS = ("auto", "fp32", "bf16")
CPU_ATTENTION = "cpu_bmm"  # smolsft/kernels/cpu_attention.py's kernel, as registered with transformers
ATTENTIONS = ("auto", "sdpa", CPU_ATTENTION)
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpuinfo_bf16_flags(cpuinfo: str) -> list[str]:
    """The hardware-bf16 flags named in a ``/proc/cpuinfo`` text (x86 ``flags`` lines,
    Arm ``Features`` lines), sorted; ``[]`` when there is none."""
    found = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        words = set(value.split())
        if key == "flags":
            found |= words & set(CPU_BF16_FLAGS)
        elif key == "features" and "bf16" in words:
            found.add("bf16")
    return sorted(found)


def cpu_bf16_support(cpuinfo_path: str = "/proc/cpuinfo") -> tuple[bool, str]:
    """(whether this CPU does bf16 arithmetic in hardware, how that was found out)."""
    import torch

    cpu = getattr(torch, "cpu", None)
    probes = [(name, getattr(cpu, fn, None)) for name, fn in
              (("AVX512-BF16", "_is_avx512_bf16_supported"), ("AMX", "_is_amx_tile_supported"))]
    answered = [(name, bool(fn())) for name, fn in probes if callable(fn)]
    hits = [name for name, ok in answered if ok]
    if hits:
        return True, f"torch reports {' and '.join(hits)}"
    try:
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as f:
            flags = cpuinfo_bf16_flags(f.read())
    except OSError:
        flags = None
    if flags:
        return True, f"{cpuinfo_path} lists {', '.join(flags)}"
    if answered:
        return False, "torch reports neither AVX512-BF16 nor AMX"
    return False, f"no bf16 flag in {cpuinfo_path}" if flags is not None else f"{cpuinfo_path} unreadable"


def resolve_precision(requested: str = "auto", support: Optional[tuple[bool, str]] = None) -> str:
    """``"fp32"`` or ``"bf16"`` for the CPU: ``auto`` is bf16 exactly when the CPU has bf16
    arithmetic in hardware (``support``, default :func:`cpu_bf16_support`). Raises
    ValueError for a name outside :data:`PRECISIONS`."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision {requested!r}: choose from {', '.join(PRECISIONS)}")
    if requested != "auto":
        return requested
    has_bf16, _ = support if support is not None else cpu_bf16_support()
    return "bf16" if has_bf16 else "fp32"


def describe(requested: str, support: Optional[tuple[bool, str]] = None) -> str:
    """One line for the logs: the resolved precision and why, e.g.
    ``"bf16 (auto: torch reports AVX512-BF16)"``."""
    support = support if support is not None else cpu_bf16_support()
    chosen = resolve_precision(requested, support)
    if requested == "auto":
        return f"{chosen} (auto: {support[1]})"
    if chosen == "bf16" and not support[0]:
        return f"bf16 (requested; this CPU has no bf16 hardware, {support[1]}: emulated, slower than fp32)"
    return f"{chosen} (requested)"
