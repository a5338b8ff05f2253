"""Benchmark: one layer's training attention on the CPU, this project's ``cpu_bmm``
(smolsft/kernels/cpu_attention.py) against PyTorch's ``scaled_dot_product_attention`` (on the CPU its flash
kernel), forward + backward, in fp32 and bf16.

    python benchmarks/attention.py                      # SmolLM2-135M's heads, the shapes below
    python benchmarks/attention.py --shapes 512:512,300,200,150 --reps 8

Shapes: ``L:n1,n2,...``, a batch right-padded to ``L`` with samples of ``n1, n2, ...`` real
tokens. The defaults: a random batch of the demo data (the TRL comparison's kind), a
length-grouped one (the demo's), no padding at 1,024 and at 2,048. Heads: 9 query heads over
3 key/value heads of 64 (SmolLM2-135M). PyTorch's kernel gets transformers' mask for the
shape (causal and padding; ``is_causal`` where nothing is padded) and grouped-query heads
(``enable_gqa``), as transformers' ``sdpa`` attention calls it. The incoming gradient is
zero on padding rows (no target there), so both compute the same gradients.

Per shape and dtype: the median of ``--reps`` forward + backward calls after one untimed
call, for each kernel, the ratio (``sdpa`` time / ``cpu_bmm`` time) measured in this run,
and the largest difference of output (real rows) and of the gradients of q, k and v between
the two. ``cpu_bmm`` hands a call to ``sdpa`` when the probabilities it keeps for backward
would pass ``cpu_attention.MAX_PROBS_BYTES``; the table says where. Ends with a summary line.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from smolsft.kernels import cpu_attention as cpu_attention
DEFAULT_SHAPES = ["512:512,300,200,150", "512:512,500,480,470", "1024:1024,1024,1024,1024", "2048:2048,2048"]


class _Module(torch.nn.Module):
    """What the attention interface reads off transformers' attention module."""


def parse_shape(text: str) -> tuple[int, list[int]]:
    """``"L:n1,n2"`` -> ``(L, [n1, n2])``; raises ValueError for a sample longer than ``L``."""
    try:
        width, lengths = text.split(":")
        L, ns = int(width), [int(n) for n in lengths.split(",")]
    except ValueError:
        raise ValueError(f"--shapes {text!r}: expected L:n1,n2,... (integers)") from None
    if not ns or any(n < 1 or n > L for n in ns):
        raise ValueError(f"--shapes {text!r}: every length must be in 1..{L}")
    return L, ns


def timed(fn, reps: int) -> tuple[float, tuple]:
    """Median seconds of ``reps`` calls after one untimed call, and the last call's result."""
    result = fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def compare(L: int, lengths: list[int], dtype: torch.dtype, reps: int, heads=(9, 3), dim=64) -> dict:
    B, (H, KV) = len(lengths), heads
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, H, L, dim, generator=g).to(dtype).requires_grad_()
    k = torch.randn(B, KV, L, dim, generator=g).to(dtype).requires_grad_()
    v = torch.randn(B, KV, L, dim, generator=g).to(dtype).requires_grad_()
    real = torch.arange(L)[None, :] < torch.tensor(lengths)[:, None]  # [B, L]
    dout = torch.randn(B, L, H, dim, generator=g).to(dtype) * real[:, :, None, None]
    padded = not bool(real.all())
    mask = (torch.ones(L, L, dtype=torch.bool).tril()[None] & real[:, None, :])[:, None] if padded else None
    module = _Module()
    module.num_key_value_groups = H // KV  # what transformers' sdpa reads when cpu_bmm hands a call over
    kept = cpu_attention.probs_elements([[(0, n)] for n in lengths], H) * q.element_size()

    def run(fn):
        def call():
            for t in (q, k, v):
                t.grad = None
            out = fn()
            out.backward(dout)
            return out.detach(), q.grad.clone(), k.grad.clone(), v.grad.clone()
        return call

    def torch_sdpa():  # [B, L, H, D], as the attention interface returns it
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=True)
        return o.transpose(1, 2)

    t_lib, ref = timed(run(torch_sdpa), reps)
    t_ours, got = timed(run(lambda: cpu_attention.attention_forward(module, q, k, v, mask)[0]), reps)
    rows = real[:, :, None, None]
    errors = [(got[0].float() - ref[0].float()).mul(rows).abs().max().item()]
    errors += [(a.float() - b.float()).abs().max().item() for a, b in zip(got[1:], ref[1:])]
    return {"sdpa_s": t_lib, "cpu_bmm_s": t_ours, "ratio": t_lib / t_ours, "errors": errors,
            "handed_over": kept > cpu_attention.MAX_PROBS_BYTES, "probs_mib": kept / 2**20}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=DEFAULT_SHAPES,
                    help="L:n1,n2,... batches right-padded to L (default: %(default)s)")
    ap.add_argument("--dtypes", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    ap.add_argument("--reps", type=int, default=5, help="timed calls per kernel and shape (default 5; median)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: every core this process may use)")
    args = ap.parse_args(argv)
    try:
        shapes = [parse_shape(s) for s in args.shapes]
    except ValueError as e:
        ap.error(str(e))
    torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    print(f"one layer's attention, forward + backward, 9 query heads over 3 key/value heads of 64; "
          f"{torch.get_num_threads()} threads, median of {args.reps}; load average {os.getloadavg()[0]:.2f}")
    print("| batch (L: real lengths) | dtype | kept P MiB | sdpa ms | cpu_bmm ms | cpu_bmm faster | "
          "max diff out / dq / dk / dv |")
    print("|---|---|---|---|---|---|---|")
    results = {}
    for (L, lengths), text in zip(shapes, args.shapes):
        for name in args.dtypes:
            r = compare(L, lengths, dtypes[name], args.reps)
            results[(text, name)] = r
            kept = f"{r['probs_mib']:.0f}" + (" (> limit: sdpa runs)" if r["handed_over"] else "")
            print(f"| {text} | {name} | {kept} | {r['sdpa_s'] * 1e3:.1f} | {r['cpu_bmm_s'] * 1e3:.1f} | {r['ratio']:.2f}x | "
                  + " / ".join(f"{e:.1e}" for e in r["errors"]) + " |", flush=True)
    ratios = [r["ratio"] for r in results.values()]
    print(f"cpu_bmm vs sdpa: {min(ratios):.2f}x to {max(ratios):.2f}x faster over {len(ratios)} runs; "
          f"load average {os.getloadavg()[0]:.2f}")
    return results


if __name__ == "__main__":
    main()
