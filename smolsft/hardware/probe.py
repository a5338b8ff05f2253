"""The probe: what this machine has, read without deciding anything.

- ``nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv,noheader,nounits``
  (one CSV line per GPU; memory in MiB), filtered by ``CUDA_VISIBLE_DEVICES`` when it holds indices;
  a field it cannot read (``[N/A]`` memory on a MIG slice) is kept as unknown (None);
- torch's version, the CUDA version it was built for, its kernel architectures and whether a
  kernel runs on the GPU (smolsft/hardware/torch_check.py);
- a CUDA toolkit: ``nvcc`` on ``PATH`` or ``CUDA_HOME``/``CUDA_PATH``;
- whether ``flash_attn`` and ``deepspeed`` import, each in a subprocess with a timeout (a broken
  DeepSpeed fails inside ``import deepspeed``, and an import can hang on a bad CUDA setup).

Standard library only (setup.sh runs it before torch is installed).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

from smolsft.hardware.facts import FLASH_ATTN_MIN_CAP, SMI_TIMEOUT_S, HardwareError

if TYPE_CHECKING:
    from smolsft.hardware.torch_check import TorchInfo


@dataclass
class GPU:
    """One GPU as nvidia-smi reports it. ``memory_mib``: memory.total in MiB, None where
    nvidia-smi cannot read it (``[N/A]``, as on a MIG slice)."""
    index: int
    name: str
    capability: tuple
    memory_mib: Optional[int]
    driver: str

    @property
    def family(self) -> str:
        return family(self.capability)

    @property
    def driver_major(self) -> int:
        return int(self.driver.split(".")[0])

    def describe(self) -> str:
        mem = "memory unknown" if self.memory_mib is None else f"{self.memory_mib} MiB"
        return f"{self.name} ({self.family} {cap_str(self.capability)}, {mem})"


@dataclass
class ImportCheck:
    """``installed``: the package is on sys.path; ``ok``: ``import`` succeeded; ``error``: the
    last line of the failure (or "not installed"); ``version``: its distribution version."""
    installed: bool
    ok: bool
    error: Optional[str] = None
    version: Optional[str] = None


@dataclass
class Probe:
    gpus: list
    smi_note: str
    torch: Optional["TorchInfo"] = None  # smolsft.hardware.torch_check
    cuda_toolkit: Optional[str] = None
    flash_attn: Optional[ImportCheck] = None
    deepspeed: Optional[ImportCheck] = None
    warnings: list = field(default_factory=list)  # one line each: what could not be read, and what follows


def family(cap: Sequence[int]) -> str:
    """NVIDIA architecture name of a compute capability (CUDA C Programming Guide's table)."""
    cap = tuple(cap)
    if cap >= (10, 0):
        return "Blackwell"
    if cap >= (9, 0):
        return "Hopper"
    if cap == (8, 9):
        return "Ada"
    if cap >= (8, 0):
        return "Ampere"
    if cap >= (7, 5):
        return "Turing"
    if cap >= (7, 0):
        return "Volta"
    if cap >= (6, 0):
        return "Pascal"
    if cap >= (5, 0):
        return "Maxwell"
    return "pre-Maxwell"


def cap_str(cap: Sequence[int]) -> str:
    return f"{cap[0]}.{cap[1]}"


SMI_QUERY = ["--query-gpu=name,compute_cap,memory.total,driver_version", "--format=csv,noheader,nounits"]


def parse_smi_csv(text: str) -> list:
    """GPUs from the output of ``nvidia-smi`` with :data:`SMI_QUERY`: one line per GPU,
    ``name, compute_cap, memory.total (MiB), driver_version``. The name may itself hold
    commas, so the line is split from the right. Blank lines are skipped. A memory.total
    that is not a number (``[N/A]``, ``[Not Supported]``) becomes None: unknown, not fatal.

    Raises HardwareError naming the line (1-based) and field it could not parse."""
    gpus = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"nvidia-smi output line {lineno} ({line.strip()!r})"
        parts = [p.strip() for p in line.rsplit(",", 3)]
        if len(parts) != 4 or not parts[0]:
            raise HardwareError(f"{where}: expected 4 comma-separated fields "
                                f"(name, compute_cap, memory.total, driver_version)")
        name, cap, mem, driver = parts
        m = re.fullmatch(r"(\d+)\.(\d+)", cap)
        if not m:
            raise HardwareError(f"{where}: compute_cap {cap!r} is not MAJOR.MINOR "
                                f"(drivers older than 510 cannot report it)")
        try:
            memory = int(float(mem))
        except ValueError:
            memory = None  # unknown_memory_warning names it
        if not re.fullmatch(r"\d+(\.\d+)*", driver):
            raise HardwareError(f"{where}: driver_version {driver!r} is not a version number")
        gpus.append(GPU(len(gpus), name, (int(m.group(1)), int(m.group(2))), memory, driver))
    return gpus


def visible(gpus: list, cuda_visible: Optional[str]) -> tuple:
    """The GPUs CUDA_VISIBLE_DEVICES leaves to CUDA programs, as (gpus, note). Indices are
    applied in order up to the first invalid one (CUDA's rule); UUIDs and MIG names are not
    resolved here, so every GPU is kept and the note says so."""
    if cuda_visible is None:
        return gpus, ""
    items = [s.strip() for s in cuda_visible.split(",")]
    if items == [""] or items[0].startswith("-"):
        return [], f"CUDA_VISIBLE_DEVICES={cuda_visible!r} hides every GPU"
    picked = []
    for s in items:
        if not s.isdigit() or int(s) >= len(gpus):
            if not s.isdigit():
                return gpus, f"CUDA_VISIBLE_DEVICES={cuda_visible!r} is not a list of indices: using every GPU"
            break
        picked.append(gpus[int(s)])
    return picked, f"CUDA_VISIBLE_DEVICES={cuda_visible}"


def unknown_memory_warning(gpus: Sequence[GPU]) -> Optional[str]:
    """One line naming the GPUs whose memory.total nvidia-smi could not read, else None."""
    unknown = [g for g in gpus if g.memory_mib is None]
    if not unknown:
        return None
    return (f"nvidia-smi reports no memory.total for {', '.join(f'GPU {g.index} ({g.name})' for g in unknown)} "
            f"(a MIG slice reports [N/A]): memory is unknown, so no batch estimate is made")


def hides_every_gpu(cuda_visible: Optional[str]) -> bool:
    """Whether CUDA_VISIBLE_DEVICES (None: unset) leaves CUDA programs no GPU: empty or
    starting with ``-`` (``-1``), CUDA's way of meaning the CPU on purpose."""
    if cuda_visible is None:
        return False
    first = cuda_visible.split(",")[0].strip()
    return first == "" or first.startswith("-")


# nvidia-smi's exit status 6: "No devices were found" (a driver, no GPU): a machine without GPU.
SMI_NO_DEVICE = 6


def query_gpus(env: Optional[dict] = None, timeout: float = SMI_TIMEOUT_S) -> tuple:
    """(visible GPUs, note) from nvidia-smi on PATH. No nvidia-smi, one that finds no device
    (exit 6), or CUDA_VISIBLE_DEVICES hiding every GPU (then nvidia-smi is not asked): no
    GPUs, and the note says which.

    Raises HardwareError when nvidia-smi exists but fails otherwise (exit 9: the driver does
    not answer) or does not answer within ``timeout`` seconds: a GPU machine whose driver is
    broken must not silently train on the CPU. The message names the failure and
    ``CUDA_VISIBLE_DEVICES=`` (the CPU on purpose). A line it cannot parse raises too."""
    env = os.environ if env is None else env
    cuda_visible = env.get("CUDA_VISIBLE_DEVICES")
    if hides_every_gpu(cuda_visible):
        return [], f"CUDA_VISIBLE_DEVICES={cuda_visible!r} hides every GPU"
    smi = shutil.which("nvidia-smi", path=env.get("PATH"))
    if smi is None:
        return [], "nvidia-smi not found"
    cpu_hint = ("fix the driver (or the GPU), or set CUDA_VISIBLE_DEVICES= (empty) to run on the CPU on purpose")
    try:
        r = subprocess.run([smi, *SMI_QUERY], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise HardwareError(f"{smi} did not answer in {timeout:g}s (a hung driver?): {cpu_hint}") from None
    except OSError as e:
        raise HardwareError(f"{smi} could not be run ({e}): {cpu_hint}") from None
    first = (r.stdout + r.stderr).strip().splitlines()
    if r.returncode == SMI_NO_DEVICE:
        return [], "nvidia-smi finds no GPU" + (f" ({first[0]})" if first else "")
    if r.returncode != 0:
        raise HardwareError(f"{smi} failed (exit {r.returncode}" + (f": {first[0]}" if first else "")
                            + f"): {cpu_hint}")
    gpus = parse_smi_csv(r.stdout)
    if not gpus:
        return [], "nvidia-smi lists no GPU"
    return visible(gpus, cuda_visible)


def cuda_toolkit(env: Optional[dict] = None) -> Optional[str]:
    """Path of a CUDA toolkit's nvcc (PATH, then CUDA_HOME/CUDA_PATH), else None."""
    env = os.environ if env is None else env
    nvcc = shutil.which("nvcc", path=env.get("PATH"))
    if nvcc:
        return nvcc
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = env.get(var)
        if home and (Path(home) / "bin" / "nvcc").is_file():
            return str(Path(home) / "bin" / "nvcc")
    return None


def check_import(module: str, dist: Optional[str] = None, timeout: float = 180.0,
                 python: Optional[str] = None) -> ImportCheck:
    """Whether ``import module`` succeeds in a fresh interpreter (``python``, default this one)
    within ``timeout`` seconds. Its third-party log lines are not kept; a failure keeps the
    last line of stderr (the exception)."""
    import importlib.util
    from importlib.metadata import PackageNotFoundError, version

    python = python or sys.executable
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        return ImportCheck(False, False, "not installed")
    try:
        ver = version(dist or module)
    except PackageNotFoundError:
        ver = None
    try:
        r = subprocess.run([python, "-c", f"import {module}"], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return ImportCheck(True, False, f"import {module} did not finish in {timeout:.0f}s", ver)
    if r.returncode == 0:
        return ImportCheck(True, True, None, ver)
    lines = [x for x in r.stderr.strip().splitlines() if x.strip()]
    return ImportCheck(True, False, lines[-1].strip() if lines else f"exit status {r.returncode}", ver)


def probe(torch_check: bool = True, flash_attn: Optional[bool] = None, deepspeed: bool = True,
          env: Optional[dict] = None) -> Probe:
    """Everything the decisions need. ``flash_attn=None``: check it only where every GPU is
    capability 8.0+ (elsewhere it could not be used). torch is probed only where nvidia-smi
    lists GPUs: no CPU decision reads it, and importing it costs seconds per script."""
    gpus, note = query_gpus(env)
    p = Probe(gpus, note, cuda_toolkit=cuda_toolkit(env))
    memory = unknown_memory_warning(gpus)
    if memory:
        p.warnings.append(memory)
    if torch_check and gpus:
        from smolsft.hardware.torch_check import probe_torch

        p.torch = probe_torch(gpus)
    if flash_attn or (flash_attn is None and gpus and min(tuple(g.capability) for g in gpus) >= FLASH_ATTN_MIN_CAP):
        p.flash_attn = check_import("flash_attn", "flash-attn")
    if deepspeed:
        p.deepspeed = check_import("deepspeed")
    return p


