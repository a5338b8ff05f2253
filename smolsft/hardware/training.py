"""What the hardware decides for one training run (``python -m smolsft.hardware --sft-plan``
and ``python -m smolsft.launch``): devices, precision, attention, launcher, BSZPERDEV and the
IFEval engine, each from its rule in smolsft.hardware.rules, with its reason."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from smolsft.hardware import rules
from smolsft.hardware.facts import HardwareError
from smolsft.hardware.probe import Probe


def offload_of(ds_config: Optional[str]) -> bool:
    """Whether a DeepSpeed config moves the optimizer to the CPU (raises HardwareError naming it)."""
    if not ds_config:
        return False
    try:
        cfg = json.loads(Path(ds_config).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise HardwareError(f"DS_CONFIG {ds_config}: {e}") from None
    return bool(cfg.get("zero_optimization", {}).get("offload_optimizer"))


def sft_plan(p: Probe, maxlen: int, loss: str, total_bsz: int, num_gpus: Optional[int] = None,
             bszperdev: Optional[int] = None, ds_config: Optional[str] = None, world: Optional[int] = None,
             requested_launcher: str = "auto", nnodes: int = 1, hostfile: bool = False,
             precision: str = "auto", cpu_ranks: int = 1, cpu_attention: str = "auto") -> dict:
    """The hardware plan of a training run on the probed machine, as a dict of strings, ints
    and bools (``--sft-plan --format sh`` prints it as HW_* assignments).

    ``num_gpus``: use the first N GPUs; ``cpu_ranks``: processes without GPU; ``nnodes``:
    nodes started alike (torchrun each); ``world``: devices over all nodes when a HOSTFILE
    says (default devices per node x ``nnodes``); ``requested_launcher``: LAUNCHER;
    ``precision``: PRECISION; ``cpu_attention``: --cpu_attention. Keys: ngpu, ndev (per node),
    world, precision, attention, launcher, with_deepspeed, launcher_why, engine, engine_why,
    bszperdev, bsz_note, device, why, torch_problem, warning, offload, toolkit.
    Raises HardwareError with the setting and the reason when a decision cannot be made."""
    if num_gpus is not None and num_gpus > len(p.gpus):
        raise HardwareError(f"NUM_GPUS={num_gpus} but {len(p.gpus)} GPU(s) are visible ({p.smi_note or 'nvidia-smi'})")
    gpus = p.gpus[:num_gpus] if num_gpus is not None else list(p.gpus)
    offload = offload_of(ds_config)
    launch, with_ds, launch_why = rules.launcher(p.deepspeed, p.cuda_toolkit, offload, requested_launcher,
                                                 nnodes, hostfile)
    prec, prec_why = rules.precision(gpus, precision)
    device_type = "cuda" if gpus else "cpu"
    try:
        attn, attn_why = rules.training_attention(cpu_attention, device_type, prec, gpus,
                                                  bool(p.flash_attn and p.flash_attn.ok))
    except ValueError as e:
        raise HardwareError(str(e)) from None
    engine, engine_why = rules.ifeval_engine(gpus)
    ndev = len(gpus) or cpu_ranks
    world = world or ndev * nnodes
    plan = {"ngpu": len(gpus), "ndev": ndev, "world": world, "precision": prec, "attention": attn,
            "launcher": launch, "with_deepspeed": with_ds, "launcher_why": launch_why,
            "engine": engine, "engine_why": engine_why, "bszperdev": None, "bsz_note": "",
            "device": "", "why": "", "torch_problem": "", "warning": "; ".join(p.warnings), "offload": offload,
            "toolkit": p.cuda_toolkit or ""}
    mems = [g.memory_mib for g in gpus]
    small = None if None in mems else min(mems, default=None)  # one GPU of unknown memory: no estimate
    plan["bszperdev"], plan["bsz_note"], _ = rules.batch_per_device(
        total_bsz, world, bszperdev, small, bool(gpus), maxlen, prec, loss, with_ds, offload)
    if not gpus:
        plan["why"] = "; ".join(filter(None, [f"no GPU ({p.smi_note})" if p.smi_note else "no GPU", prec_why,
                                              f"launcher: {launch_why}"]))
        return plan
    plan["device"] = f"{len(gpus)} GPU(s): " + " + ".join(sorted({g.describe() for g in gpus}))
    plan["why"] = "; ".join([prec_why, attn_why, engine_why, f"launcher: {launch_why}"])
    if p.torch is not None and p.torch.problem:
        plan["torch_problem"] = p.torch.problem
    if offload and p.cuda_toolkit is None:
        plan["warning"] = "; ".join(filter(None, [plan["warning"], (
            "optimizer offload JIT-builds DeepSpeed's CPU Adam, which needs a CUDA toolkit (nvcc) "
            "matching torch's CUDA version; none found (nvcc not on PATH, CUDA_HOME unset)")]))
    return plan
