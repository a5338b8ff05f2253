"""The install plan: which builds of torch, vLLM and flash-attn setup.sh installs for the
GPUs and driver the probe found (rules in order in :func:`setup_plan`; sources in docs/gpu.md),
and the one-off build of DeepSpeed's CPU op. Standard library only at module level: setup.sh
runs it before anything is installed."""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from smolsft.hardware.facts import (CU126_MAX_CAP, CU126_MIN_CAP, CUDA12_TAG, CUDA13_MIN_CAP, DRIVER_MIN_CUDA12,
                                    DRIVER_MIN_CUDA13, FLASH_ATTN_MIN_CAP, LEGACY_TAG, REPO_ROOT, TORCH_COMPANIONS,
                                    TORCH_INDEX, VLLM_INDEX, HardwareError)
from smolsft.hardware.probe import GPU, cap_str
from smolsft.hardware.rules import ifeval_engine, oldest


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
    old, new = oldest(gpus), max(gpus, key=lambda g: tuple(g.capability))
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


def setup_plan_here(gpus: Sequence[GPU]) -> SetupPlan:
    """:func:`setup_plan` with this repository's pins and FLASH_ATTN_WHEEL."""
    return setup_plan(gpus, read_pin(REPO_ROOT / "requirements.txt", "torch"),
                      read_pin(REPO_ROOT / "requirements-gpu.txt", "vllm"), os.environ.get("FLASH_ATTN_WHEEL"),
                      flash_pin=read_pin(REPO_ROOT / "requirements-gpu-optional.txt", "flash-attn"))


# DeepSpeed's CPU ops a run here compiles on first use: (op builder, what it is for).
CPU_OPS = (("ShareMemCommBuilder", "all-reduce"), ("CPUAdamBuilder", "Adam of the offload launcher"))


def build_deepspeed_cpu_ops() -> str:
    """Compile DeepSpeed's CPU ops (:data:`CPU_OPS`: the shared-memory all-reduce
    ``deepspeed_shm_comm``, which every multi-rank CPU run loads, and ``cpu_adam``, the
    optimizer of ``ds_configs/zero2_offload.json``) into the torch extensions cache
    (``$TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``). DeepSpeed builds each
    with ninja on first use otherwise, a minute or two on 2 cores, inside the user's first
    training. Returns one line saying what was done; raises ``HardwareError`` when DeepSpeed
    is missing or a build fails (the run would then build it again, or fail the same way)."""
    import contextlib
    import io
    import time

    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            import deepspeed
            from deepspeed.accelerator import get_accelerator
    except Exception as e:
        raise HardwareError(f"DeepSpeed does not import: {type(e).__name__}: {e}") from e
    if get_accelerator()._name != "cpu":
        return f"DeepSpeed's accelerator here is {get_accelerator()._name}: no CPU op to build"
    done = []
    for name, purpose in CPU_OPS:
        t0 = time.perf_counter()
        builder = get_accelerator().create_op_builder(name)
        if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
            done.append(f"no {purpose} op for this machine ({name})")
            continue
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                builder.load(verbose=False)
        except Exception as e:  # DeepSpeed's build raises plain RuntimeErrors with the compiler's output
            tail = log.getvalue().strip().splitlines()[-1:] or [""]
            raise HardwareError(f"building DeepSpeed's CPU {purpose} op failed: {type(e).__name__}: {e} {tail[0]}".strip()) from e
        done.append(f"{purpose} ({builder.NAME}) built in {time.perf_counter() - t0:.0f}s")
    return "DeepSpeed's CPU ops: " + "; ".join(done)

