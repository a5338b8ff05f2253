"""The summary block of ``scripts/gpu_check.sh --bundle`` (scripts/gpu_check_bundle.sh), from
the files its stages leave in OUT: stages.tsv (name, status, seconds), engine.txt, the
trainer's ckpt/trainer_state.json and run_manifest.json, loss_step.json
(benchmarks/loss_step.py), ifeval/summary.json and the IFEval stage's log.

    python scripts/gpu_check_summary.py gpu_check_out --bundle gpu_bundle

A missing file (its stage failed or ran out of time) shows as "-"; nothing here raises on it.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

MIB = 2**20


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def ver(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "-"


def gpu_line() -> tuple[str, str]:
    """(GPUs, CUDA toolkit) as this machine's torch sees them."""
    import torch
    from torch.utils import cpp_extension

    toolkit = (f"CUDA_HOME {cpp_extension.CUDA_HOME}" if cpp_extension.CUDA_HOME else "no CUDA_HOME") + \
        (f", nvcc {shutil.which('nvcc')}" if shutil.which("nvcc") else ", no nvcc on PATH")
    if not torch.cuda.is_available():
        return "none (CPU: --allow_cpu plumbing run)", toolkit
    p = torch.cuda.get_device_properties(0)
    driver = "-"
    if shutil.which("nvidia-smi"):
        r = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True)
        driver = r.stdout.strip().splitlines()[0] if r.returncode == 0 and r.stdout.strip() else "-"
    return (f"{p.name} x{torch.cuda.device_count()}, compute capability {p.major}.{p.minor}, "
            f"{p.total_memory / 2**30:.0f} GiB, driver {driver}"), toolkit


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--bundle", type=Path, help="the bundle folder (its MANIFEST.json)")
    ap.add_argument("--wall_s", type=int, help="the whole check's wall time in seconds")
    args = ap.parse_args(argv)
    out = args.out
    import torch

    stages = [line.split("\t") for line in (out / "stages.tsv").read_text().splitlines() if line.strip()] \
        if (out / "stages.tsv").is_file() else []
    engine = (out / "engine.txt").read_text().splitlines() if (out / "engine.txt").is_file() else []
    state = read_json(out / "ckpt" / "trainer_state.json")
    losses = [h["loss"] for h in state.get("log_history", []) if "loss" in h]
    runtime = next((h["train_runtime"] for h in state.get("log_history", []) if "train_runtime" in h), None)
    targs = read_json(out / "ckpt" / "run_manifest.json").get("training_args", {})
    prec = "bf16" if targs.get("bf16") else "fp16" if targs.get("fp16") else "fp32" if targs else "-"
    bench = read_json(out / "loss_step.json")
    ifeval = read_json(out / "ifeval" / "summary.json")
    settings = next(iter(sorted((out / "ifeval").glob("responses_*.settings.json"))), None)
    gen = read_json(settings) if settings else {}
    log = (out / "ifeval.log").read_text(errors="replace") if (out / "ifeval.log").is_file() else ""
    m = re.search(r"generated (\d+) answers with \S+ in ([\d.]+)s \(start [\d.]+s, ([\d.]+) tokens/s of "
                  r"generation\); (\d+) hit", log)
    manifest = read_json(args.bundle / "MANIFEST.json") if args.bundle else {}
    gpu, toolkit = gpu_line()

    lines = ["==================== gpu_check --bundle summary ====================",
             f"GPU            {gpu}",
             f"CUDA toolkit   {toolkit}",
             f"versions       torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {ver('transformers')}, "
             f"accelerate {ver('accelerate')}, deepspeed {ver('deepspeed')}, lm_eval {ver('lm_eval')}"]
    if manifest:
        lines.append(f"bundle         {args.bundle.name}: {len(manifest.get('wheels', {}))} wheels for CPython "
                     f"{manifest.get('python_version')}, {manifest.get('total_bytes', 0) / MIB:.1f} MiB, "
                     f"built {manifest.get('created')}")
    if engine:
        lines.append(f"engine         {engine[0]} ({engine[1] if len(engine) > 1 else ''}); batch "
                     f"{engine[2] if len(engine) > 2 else '-'}, MAXLEN {engine[3] if len(engine) > 3 else '-'}")
    lines.append(f"training       {state.get('global_step', '-')} steps, {prec}, loss "
                 f"{f'{losses[0]:.4f}' if losses else '-'} -> {f'{losses[-1]:.4f}' if losses else '-'}, "
                 f"train_runtime {f'{runtime:.0f}s' if runtime is not None else '-'}")
    for shape in bench.get("shapes", []):
        res = {k: bench["results"][k][shape] for k in ("logits", "fused")}
        mem = " / ".join(f"{r['peak_bytes'] / MIB:.0f}" if r["peak_bytes"] is not None else "-" for r in res.values())
        ratio = bench["ratios"][shape]
        lines.append(f"loss {shape:9} logits / fused: peak {mem} MiB, step "
                     + " / ".join(f"{r['step_s'] * 1e3:.0f}" for r in res.values()) + " ms; fused/logits "
                     + (f"memory {ratio['memory']:.2f}x, " if ratio["memory"] is not None else "")
                     + f"time {ratio['time']:.2f}x")
    for name, ps in bench.get("per_sample", {}).items():
        lines.append(f"batch rule     {name}: {ps['bytes_per_sample'] / MIB:.0f} MiB per sample of {ps['length']} "
                     f"tokens + {ps['fixed_bytes'] / MIB:.0f} MiB fixed ({bench.get('device')})")
    if ifeval:
        lines.append(f"IFEval         {ifeval.get('num_prompts')} prompts x {gen.get('max_tokens')} tokens, "
                     f"{gen.get('engine_version', '-')}, {gen.get('dtype', '-')}; "
                     f"{m.group(3) if m else '-'} tokens/s, {m.group(4) if m else '-'} hit the limit")
        lines.append(f"metrics        prompt strict {ifeval['prompt_level_strict_acc']:.3f} | inst strict "
                     f"{ifeval['inst_level_strict_acc']:.3f} | prompt loose {ifeval['prompt_level_loose_acc']:.3f} | "
                     f"inst loose {ifeval['inst_level_loose_acc']:.3f}")
    else:
        lines.append("IFEval         - (no summary.json: see the ifeval stage)")
    lines.append("stages         " + ", ".join(f"{n} {s} {t}s" for n, s, t in stages)
                 + f"; stages {sum(int(t) for _, _, t in stages)}s"
                 + (f", wall {args.wall_s}s (goal <= 480s)" if args.wall_s is not None else ""))
    lines.append("NOTE           RANDOM WEIGHTS (SmolLM2-135M configuration): the IFEval scores are meaningless; "
                 "speed, memory and precision paths are the real model's.")
    bad = [f"{n} {s}" for n, s, _ in stages if s != "ok"]
    if bad:
        lines.append(f"NOT OK         {', '.join(bad)} (logs: {out}/<stage>.log)")
    lines.append("=" * len(lines[0]))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
