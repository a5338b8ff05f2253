"""What a run's ``summary.json`` says about the machine that generated the answers: the CPU
model with its bf16/AMX flags, or the GPU's name and compute capability (bf16 kernels differ
between CPUs and GPUs, so the same checkpoint can score differently on another machine)."""
from __future__ import annotations

import platform
from typing import Optional

from smolsft.hardware.cpu import cpu_bf16_support, cpuinfo_bf16_flags


def cpu_model(cpuinfo: str) -> Optional[str]:
    """The ``model name`` of a ``/proc/cpuinfo`` text (x86), ``None`` when it has none."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() == "model name" and value.strip():
            return value.strip()
    return None


def device_record(device: str, cpuinfo_path: str = "/proc/cpuinfo") -> dict:
    """``{"type": "cpu", "name", "bf16_flags", "bf16_hardware"}`` for ``device`` ``"cpu"``
    (name: ``/proc/cpuinfo``'s model name, else ``platform.processor()``; flags: those of
    ``cpu.CPU_BF16_FLAGS`` it lists), ``{"type": "cuda", "name", "capability": "8.0"}`` for a
    CUDA device. Fields that cannot be read are ``None``."""
    if device.startswith("cuda"):
        import torch

        major, minor = torch.cuda.get_device_capability(torch.device(device))
        return {"type": "cuda", "name": torch.cuda.get_device_name(torch.device(device)),
                "capability": f"{major}.{minor}"}
    try:
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        text = None
    return {"type": "cpu", "name": (cpu_model(text) if text else None) or platform.processor() or None,
            "bf16_flags": cpuinfo_bf16_flags(text) if text is not None else None,
            "bf16_hardware": cpu_bf16_support(cpuinfo_path)[0]}
