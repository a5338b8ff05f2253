"""Benchmark: the chunked loss of ``loss_functions`` against the plain log-softmax form.

    python benchmarks/loss.py                                # batch 1, 2,048 tokens, vocab 49,152
    python benchmarks/loss.py --chunk_sizes 128 256 512 1024 --reps 9
    python benchmarks/loss.py --dtypes bf16 --variants plain chunked

Variants, each run in a fresh Python process (so one variant's freed memory or warm
caches cannot help or hurt the next), on the same seeded logits and labels:
- ``plain``: ``log_softmax(logits[:, :-1].float())``, gather the targets, mask, sum,
  divide: the straightforward autograd form, the baseline.
- ``chunked``: ``loss_functions.cross_entropy_loss`` at each ``--chunk_sizes`` value.
- ``hf`` (information only): transformers' ``ForCausalLMLoss`` (``F.cross_entropy``).

Measured per variant:
- time: forward + backward, median of ``--reps`` timed repetitions after one warm-up;
- memory: the peak resident memory of the process during one forward + backward, minus
  its resident memory just before (logits and labels allocated) and minus the size of the
  logits' gradient, i.e. what the loss needs beyond logits + gradient. The peak is read
  from the kernel: writing 5 to ``/proc/self/clear_refs`` resets ``VmHWM`` (peak RSS) in
  ``/proc/self/status``. PyTorch's CPU allocator keeps no cache and has no peak counter,
  so RSS is the honest measure; the workers run with ``MALLOC_MMAP_THRESHOLD_=65536`` so
  glibc serves every large tensor with its own mmap and gives it back on free (without
  it glibc's adaptive threshold may keep freed buffers resident and blur the peak).
  Resolution is a page; runtime noise is a few MB.

By default labels are all valid (every position but the last of a row has a target), the
most work for the chunked form; the plain form costs the same whatever the labels.
``--masked blocks`` ignores chat-like spans (each 96-position prompt is a gap longer than
``loss_functions._MAX_GAP``, 32, so chunks skip it) and ``--masked random`` half the
positions at random (the gaps are short, so chunks stay slices of consecutive positions
in which the ignored ones are computed and then zeroed: about twice the work per
target). The two forms run interleaved over ``--rounds`` rounds and the medians are
taken over all rounds, so a burst of load from other processes hits both. Prints one row
per variant, then the chunked/plain ratios and whether the goal (memory <= 1/4, time
<= 1.25x) is met.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from peak_rss import reset_peak, status_bytes  # the script's own folder is on sys.path

REPO = Path(__file__).resolve().parent.parent
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
MB = 1024 * 1024


def make_labels(torch, batch: int, tokens: int, vocab: int, masked: str, gen):
    """Random target ids with -100 where the ``--masked`` pattern says."""
    labels = torch.randint(0, vocab, (batch, tokens), generator=gen)
    if masked == "blocks":  # chat-like: 96 prompt tokens ignored, then 160 answer tokens
        pos = torch.arange(tokens) % 256
        labels[:, pos < 96] = -100
    elif masked == "random":  # every other position on average: short gaps inside every chunk
        labels[torch.rand(batch, tokens, generator=gen) < 0.5] = -100
    return labels


def worker(variant: str, dtype_name: str, chunk: int, batch: int, tokens: int, vocab: int, reps: int,
           masked: str = "none") -> dict:
    """One variant in this (fresh) process; returns times and memory as a dict."""
    import torch

    from loss_functions import cross_entropy_loss

    dtype = getattr(torch, DTYPES[dtype_name])
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(batch, tokens, vocab, generator=gen) * 2.0).to(dtype).requires_grad_()
    labels = make_labels(torch, batch, tokens, vocab, masked, gen)

    if variant == "plain":
        def loss_fn():
            logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            target = labels[:, 1:]
            valid = target != -100
            picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            return -(picked * valid).sum() / valid.sum()
    elif variant == "chunked":
        def loss_fn():
            return cross_entropy_loss(logits, labels, None, chunk_size=chunk)
    elif variant == "hf":
        from transformers.loss.loss_utils import ForCausalLMLoss

        def loss_fn():
            return ForCausalLMLoss(logits, labels, vocab)
    else:
        raise ValueError(variant)

    def step() -> float:
        logits.grad = None
        t0 = time.perf_counter()
        loss_fn().backward()
        return time.perf_counter() - t0

    step()  # warm-up: first-call allocations, thread pool start
    logits.grad = None
    before = status_bytes("VmRSS")
    reset_peak()
    loss = loss_fn()
    loss.backward()
    peak = status_bytes("VmHWM")
    grad_bytes = logits.grad.numel() * logits.grad.element_size()
    times = [step() for _ in range(reps)]
    return {"variant": variant, "dtype": dtype_name, "chunk": chunk if variant == "chunked" else None,
            "loss": float(loss.detach()), "extra_bytes": peak - before - grad_bytes,
            "logits_bytes": logits.numel() * logits.element_size(), "times": times}


def run_worker(args, variant: str, dtype_name: str, chunk: int) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    cmd = [sys.executable, __file__, "--worker", variant, dtype_name, str(chunk),
           "--batch", str(args.batch), "--tokens", str(args.tokens), "--vocab", str(args.vocab),
           "--reps", str(args.reps), "--masked", args.masked]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"worker {variant} {dtype_name} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=2048, help="sequence length")
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES))
    ap.add_argument("--chunk_sizes", nargs="+", type=int, default=None,
                    help="chunk sizes (rows) to try; default: loss_functions.DEFAULT_CHUNK_SIZE")
    ap.add_argument("--variants", nargs="+", default=["plain", "chunked", "hf"], choices=["plain", "chunked", "hf"])
    ap.add_argument("--reps", type=int, default=5, help="timed forward+backward repetitions per process")
    ap.add_argument("--masked", default="none", choices=["none", "blocks", "random"],
                    help="ignored labels: none (all valid, the default), blocks (96 of every 256 positions, "
                         "chat-like), random (half of them; the short gaps are computed inside each chunk "
                         "and their gradient zeroed)")
    ap.add_argument("--rounds", type=int, default=2, help="fresh processes per variant, interleaved")
    ap.add_argument("--worker", nargs=3, metavar=("VARIANT", "DTYPE", "CHUNK"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        variant, dtype_name, chunk = args.worker
        print(json.dumps(worker(variant, dtype_name, int(chunk), args.batch, args.tokens, args.vocab, args.reps,
                                args.masked)))
        return 0

    from tqdm import tqdm

    from smolsft.losses.chunked import DEFAULT_CHUNK_SIZE

    chunks = args.chunk_sizes or [DEFAULT_CHUNK_SIZE]
    jobs = []
    for dtype_name in args.dtypes:
        for v in args.variants:
            for c in (chunks if v == "chunked" else [0]):
                jobs.append((v, dtype_name, c))
    results: dict = {}
    with tqdm(total=len(jobs) * args.rounds, desc="loss benchmark", unit="proc") as bar:
        for r in range(args.rounds):
            # Alternate the order each round so drift in machine load does not favour one side.
            for job in (jobs if r % 2 == 0 else jobs[::-1]):
                res = run_worker(args, *job)
                entry = results.setdefault(job, {"times": [], "extra": [], "loss": res["loss"],
                                                 "logits_bytes": res["logits_bytes"]})
                entry["times"] += res["times"]
                entry["extra"].append(res["extra_bytes"])
                bar.update(1)

    print(f"\nbatch {args.batch} x {args.tokens} tokens x vocab {args.vocab}; {args.rounds} processes x "
          f"{args.reps} reps per variant; labels masked: {args.masked}; torch threads as default; "
          f"memory = peak RSS above logits + grad")
    print(f"{'dtype':5} {'variant':14} {'loss':>10} {'extra MB (max)':>15} {'fwd+bwd ms (median)':>20}")
    summary = []
    ok_all = True
    for dtype_name in args.dtypes:
        plain = results.get(("plain", dtype_name, 0))
        for (v, d, c), e in results.items():
            if d != dtype_name:
                continue
            name = v if v != "chunked" else f"chunked/{c}"
            print(f"{d:5} {name:14} {e['loss']:10.5f} {max(e['extra']) / MB:15.1f} "
                  f"{statistics.median(e['times']) * 1e3:20.1f}")
        if plain is None:
            continue
        p_mem, p_t = max(plain["extra"]), statistics.median(plain["times"])
        for c in chunks:
            e = results.get(("chunked", dtype_name, c))
            if e is None:
                continue
            time_ratio = statistics.median(e["times"]) / p_t
            if p_mem < MB:  # tiny shapes: both extras are within RSS noise, no ratio to speak of
                ok_all = False
                summary.append(f"{dtype_name} chunk {c}: plain form's extra memory below 1 MB, too small to "
                               f"compare; time {time_ratio:.3f}x plain")
                continue
            mem_ratio = max(e["extra"]) / p_mem
            ok = mem_ratio <= 0.25 and time_ratio <= 1.25
            ok_all &= ok
            summary.append(f"{dtype_name} chunk {c}: memory {mem_ratio:.3f}x plain (goal <= 0.25), "
                           f"time {time_ratio:.3f}x plain (goal <= 1.25) -> {'MET' if ok else 'NOT MET'}")
    print()
    for line in summary:
        print(line)
    met = sum(line.endswith("-> MET") for line in summary)
    print(f"\nsummary: goal met by {met} of {len(summary)} chunked configuration(s)"
          f"{'' if ok_all else ' (see above)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
