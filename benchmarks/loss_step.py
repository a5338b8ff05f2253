"""Benchmark: one training step at length 2048 on the GPU, ``--loss fused`` against ``--loss logits``:
peak allocated memory and step time, and the bytes per sample that sft.sh's batch rule needs.

    python benchmarks/loss_step.py --model gpu_check_out/smollm2-random            # 1x2048 and 4x2048
    python benchmarks/loss_step.py --model DIR --shapes 1x2048 8x2048 --steps 5 --json out.json

Each loss runs in a fresh Python process with benchmarks/train_memory.py's step (its
``setup``: fp32 weights, bf16 autocast on CUDA as the Trainer with ``--bf16`` and no
DeepSpeed, torch's AdamW, a warm-up step so the optimizer state exists; the same seeded
random tokens with its ``chat`` masking, 60% targets). Per shape: one untimed step, then
``--steps`` timed steps (``torch.cuda.synchronize`` around each; the median is reported).
Memory: ``torch.cuda.max_memory_allocated`` during the shape's first step minus the
memory allocated before it (model, gradients freed, optimizer state), i.e. activations,
logits (logits path), their gradients, parameter gradients and AdamW's temporaries.
From two shapes of the same length it derives bytes per sample (the slope) and the fixed
part (the intercept). On the CPU (``--device cpu``, to test the plumbing) only time is
measured; memory is ``null`` (benchmarks/train_memory.py measures the CPU's).
Prints a table, the fused/logits ratios measured in this run, and a summary line.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from train_memory import make_batch, setup, shape  # benchmarks/ is the script's folder, so on sys.path

MIB = 2**20


def worker(model: str, device: str, loss_name: str, shapes: list[tuple[int, int]], steps: int) -> dict:
    import torch

    cuda = device == "cuda"
    net, step = setup(model, device)
    vocab = net.config.vocab_size
    out = {}
    for batch, length in shapes:
        ids, labels = (t.to(device) for t in make_batch(torch, batch, length, vocab, "chat"))
        if cuda:
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        loss = step(loss_name, ids, labels)
        peak = torch.cuda.max_memory_allocated() - base if cuda else None
        times = []
        for _ in range(steps):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            step(loss_name, ids, labels)
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        out[f"{batch}x{length}"] = {"peak_bytes": peak, "step_s": statistics.median(times), "loss": loss}
        del ids, labels
        if cuda:
            torch.cuda.empty_cache()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model folder (e.g. scripts/random_model.py's output)")
    ap.add_argument("--shapes", nargs="+", type=shape, default=[(1, 2048), (4, 2048)], help="BATCHxLENGTH")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per shape (median reported)")
    ap.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"], help="auto: cuda when available")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.steps < 1:
        ap.error("--steps must be at least 1")

    if args.worker:
        device, loss_name = json.loads(args.worker)
        print(json.dumps(worker(args.model, device, loss_name, args.shapes, args.steps)))
        return 0

    import torch
    from tqdm import tqdm

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    shapes = [f"{b}x{n}" for b, n in args.shapes]
    results = {}
    for loss_name in tqdm(("logits", "fused"), desc="loss step benchmark", unit="proc"):
        cmd = [sys.executable, __file__, "--model", args.model, "--shapes", *shapes, "--steps", str(args.steps),
               "--worker", json.dumps([device, loss_name])]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"[loss_step] error: the {loss_name} worker failed:\n{r.stderr[-3000:]}")
        results[loss_name] = json.loads(r.stdout.strip().splitlines()[-1])

    name = torch.cuda.get_device_name(0) if device == "cuda" else "CPU"
    print(f"\n{Path(args.model).name} on {name}: one step (forward, backward, AdamW), chat masking; "
          f"memory = max_memory_allocated above model + optimizer state")
    print(f"{'shape':9} {'loss':7} {'peak MiB':>9} {'step ms':>9} {'loss value':>11}")
    for s in shapes:
        for loss_name in ("logits", "fused"):
            r = results[loss_name][s]
            mem = f"{r['peak_bytes'] / MIB:9.0f}" if r["peak_bytes"] is not None else f"{'-':>9}"
            print(f"{s:9} {loss_name:7} {mem} {r['step_s'] * 1e3:9.1f} {r['loss']:11.5f}")
    ratios = {}
    for s in shapes:
        lo, fu = results["logits"][s], results["fused"][s]
        ratios[s] = {"time": fu["step_s"] / lo["step_s"],
                     "memory": fu["peak_bytes"] / lo["peak_bytes"] if lo["peak_bytes"] else None}
    per_sample = {}
    (b1, n1), (b2, n2) = args.shapes[0], args.shapes[-1]
    if len(args.shapes) > 1 and n1 == n2 and b2 != b1 and device == "cuda":
        for loss_name in ("logits", "fused"):
            p1, p2 = (results[loss_name][f"{b}x{n1}"]["peak_bytes"] for b in (b1, b2))
            slope = (p2 - p1) / (b2 - b1)
            per_sample[loss_name] = {"bytes_per_sample": slope, "fixed_bytes": p1 - b1 * slope, "length": n1}
            print(f"{loss_name}: {slope / MIB:.0f} MiB per sample of {n1} tokens + {(p1 - b1 * slope) / MIB:.0f} MiB "
                  f"fixed (from {b1}x{n1} and {b2}x{n1})")
    for s, r in ratios.items():
        mem = f"memory {r['memory']:.2f}x, " if r["memory"] is not None else ""
        print(f"{s}: fused/logits {mem}time {r['time']:.2f}x")
    summary = {"device": name, "shapes": shapes, "results": results, "ratios": ratios, "per_sample": per_sample}
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    first = ratios[shapes[0]]
    print(f"summary: {device}, {shapes[0]} fused/logits " +
          (f"memory {first['memory']:.2f}x, " if first["memory"] is not None else "") + f"time {first['time']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
