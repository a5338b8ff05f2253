"""Benchmark: memory and time of one whole training step, ``--loss logits`` against ``--loss fused``.

    python benchmarks/train_memory.py                        # SmolLM2-135M, 1x2048 and 4x1024, both maskings
    python benchmarks/train_memory.py --shapes 1x2048 --masking chat
    python benchmarks/train_memory.py --model SmolLM2-135M --steps 2

Each variant (loss x shape x masking) runs in a fresh Python process on the same seeded
random token ids: the real model in fp32 (as ``train_hw_parallel.py`` trains on the CPU),
torch's AdamW, one warm-up step on a 1x16 batch so that the optimizer state exists, then
``--steps`` full steps (forward, backward, AdamW step, gradients set to None as the Trainer
does) at the variant's shape:
- ``logits``: ``model(input_ids).logits`` through ``loss_functions.compute_loss_from_logits``
  (Part 5's chunked loss on the model's logits);
- ``fused``: the decoder's last hidden states through ``fused_loss.fused_linear_cross_entropy``
  (no logits tensor).
Both divide by the number of targets (``num_items_in_batch`` None), so their losses must agree.

Measured per variant:
- memory: the process's peak resident memory during the first full step minus its resident
  memory just before it (model, optimizer state, batch loaded), so it counts the activations,
  logits (logits path), their gradients, the parameters' gradients and AdamW's temporaries.
  The peak comes from the kernel: writing 5 to ``/proc/self/clear_refs`` resets ``VmHWM`` in
  ``/proc/self/status`` (PyTorch's CPU allocator has no peak counter). Workers run with
  ``MALLOC_MMAP_THRESHOLD_=65536`` so every large tensor is its own mmap, returned on free.
- time: wall time of each full step (the smallest of ``--steps`` is reported). On a shared
  machine this is noisy: compare the two losses in the same run, through their ratio.
Masking: ``chat`` repeats a 102-position prompt (ignored) and a 154-position answer
(targets), 60% targets; ``all`` makes every position a target.

Where the memory goes (one more process, not timed): the bytes that autograd saves for
backward (``torch.autograd.graph.saved_tensors_hooks``, each storage counted once,
parameters excluded) in the decoder and in the output layer + loss of each path, the size
of the logits, and of the parameters' gradients; then the same with the weights in bf16,
the 2-byte sizes of fp16/bf16 training on a GPU (the numbers behind ``sft.sh``'s
``BSZPERDEV`` advice). From these and the measured peaks it
prints the lowest fused/logits ratio that any loss could reach: whatever the loss, all the
decoder's saved activations are alive at the end of forward and all the parameters'
gradients at the end of backward, so the step's peak is at least the larger of the two.

If a GPU is visible, each loss also runs on it (fp32 weights, bf16 autocast, as the Trainer
with ``--bf16`` and no DeepSpeed): ``torch.cuda.max_memory_allocated`` above the loaded model
and optimizer state for one step at each shape, and the largest batch at length 2048 whose
step fits when the process may use 11 GB (``torch.cuda.set_per_process_memory_fraction``).
Prints a table, the fused/logits ratios, and a summary line.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from peak_rss import reset_peak, status_bytes  # the script's own folder is on sys.path

REPO = Path(__file__).resolve().parent.parent
MB = 1024 * 1024
GB11 = 11 * 1000 ** 3


def make_batch(torch, batch: int, length: int, vocab: int, masking: str):
    """Seeded random ids; labels = ids with the ``masking`` pattern's prompts set to -100."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch, length), generator=gen)
    labels = ids.clone()
    if masking == "chat":
        labels[:, torch.arange(length) % 256 < 102] = -100
    return ids, labels


def setup(model_path: str, device: str, checkpointing: bool = False):
    """(model, AdamW optimizer, step function) with the optimizer state already allocated;
    ``checkpointing``: the decoder layers recompute their activations in backward
    (``--gradient_checkpointing True`` in training)."""
    import torch
    from transformers import AutoModelForCausalLM

    from smolsft.losses.fused import fused_linear_cross_entropy, output_weight
    from loss_functions import compute_loss_from_logits

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, attn_implementation="sdpa")
    model.to(device).train()
    if checkpointing:
        model.config.use_cache = False
        model.gradient_checkpointing_enable()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")

    def step(loss_name: str, ids, labels) -> float:
        with autocast:
            if loss_name == "logits":
                loss = compute_loss_from_logits(model(input_ids=ids), labels)
            else:
                hidden = model.model(input_ids=ids).last_hidden_state
                loss = fused_linear_cross_entropy(hidden, output_weight(model), labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    warm_ids, warm_labels = make_batch(torch, 1, 16, model.config.vocab_size, "all")
    step("logits", warm_ids.to(device), warm_labels.to(device))
    return model, step


def cpu_worker(args, loss_name: str, batch: int, length: int, masking: str) -> dict:
    import torch

    model, step = setup(args.model, "cpu", args.gradient_checkpointing)
    ids, labels = make_batch(torch, batch, length, model.config.vocab_size, masking)
    before = status_bytes("VmRSS")
    reset_peak()
    times, loss = [], None
    for i in range(args.steps):
        t0 = time.perf_counter()
        loss = step(loss_name, ids, labels)
        times.append(time.perf_counter() - t0)
        if i == 0:
            peak = status_bytes("VmHWM")
    return {"extra_bytes": peak - before, "time": min(times), "loss": loss,
            "targets": int((labels[:, 1:] != -100).sum())}


def saved_bytes(fn, params: set) -> tuple[object, int]:
    """(``fn()``, bytes of the tensors autograd saved for backward while it ran): each
    storage once, the storages whose data pointers are in ``params`` (the model's
    parameters) left out since they are loaded memory, not the step's."""
    seen = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    import torch
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


def breakdown_worker(args, batch: int, length: int, masking: str) -> dict:
    """Saved-for-backward bytes of one forward at the shape (see the module docstring)."""
    import torch

    from smolsft.losses.fused import fused_linear_cross_entropy, output_weight
    from loss_functions import compute_loss_from_logits

    model, _ = setup(args.model, "cpu", args.gradient_checkpointing)
    ids, labels = make_batch(torch, batch, length, model.config.vocab_size, masking)
    out = {"param_grads": sum(p.numel() * p.element_size() for p in model.parameters())}
    for tag in ("", "_half"):
        if tag:  # bf16 weights: the size of DeepSpeed's fp16/bf16 training on a GPU (2 bytes)
            model.to(torch.bfloat16)
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        hidden, decoder = saved_bytes(lambda: model.model(input_ids=ids).last_hidden_state, params)
        logits, head = saved_bytes(lambda: model.lm_head(hidden), params)
        _, loss = saved_bytes(lambda: compute_loss_from_logits(logits, labels), params)
        _, fused = saved_bytes(lambda: fused_linear_cross_entropy(hidden, output_weight(model), labels), params)
        out.update({"decoder" + tag: decoder, "logits_head" + tag: head + loss, "fused" + tag: fused,
                    "logits" + tag: logits.numel() * logits.element_size()})
        del hidden, logits
    return out


def gpu_worker(args, loss_name: str) -> dict:
    """Peak allocated above model + optimizer per shape (chat masking), and the largest
    batch at 2048 that fits in 11 GB."""
    import torch

    model, step = setup(args.model, "cuda", args.gradient_checkpointing)
    vocab = model.config.vocab_size
    base = torch.cuda.memory_allocated()
    peaks = {}
    for batch, length in args.shapes:
        ids, labels = (t.cuda() for t in make_batch(torch, batch, length, vocab, "chat"))
        torch.cuda.reset_peak_memory_stats()
        step(loss_name, ids, labels)
        peaks[f"{batch}x{length}"] = torch.cuda.max_memory_allocated() - base
        del ids, labels
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(min(1.0, GB11 / torch.cuda.get_device_properties(0).total_memory))

    def fits(batch: int) -> bool:
        ids, labels = (t.cuda() for t in make_batch(torch, batch, 2048, vocab, "chat"))
        try:
            step(loss_name, ids, labels)
            return True
        except torch.cuda.OutOfMemoryError:
            return False
        finally:
            del ids, labels
            model.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()

    lo, hi = 0, 1
    while fits(hi) and hi < 1024:  # doubling, then bisection between the last fit and the first miss
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return {"peaks": peaks, "max_batch_2048_in_11GB": lo}


def run_worker(args, *job) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    shapes = [f"{b}x{n}" for b, n in args.shapes]
    cmd = [sys.executable, __file__, "--model", args.model, "--steps", str(args.steps), "--shapes", *shapes,
           *(["--gradient_checkpointing"] if args.gradient_checkpointing else []), "--worker", json.dumps(job)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"worker {job} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def shape(text: str) -> tuple[int, int]:
    try:
        batch, length = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape {text!r} is not BATCHxLENGTH (e.g. 1x2048)") from None
    return batch, length


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(REPO / "SmolLM2-135M"), help="model folder (default SmolLM2-135M/)")
    ap.add_argument("--shapes", nargs="+", type=shape, default=[(1, 2048), (4, 1024)], help="BATCHxLENGTH")
    ap.add_argument("--masking", nargs="+", default=["chat", "all"], choices=["chat", "all"])
    ap.add_argument("--losses", nargs="+", default=["logits", "fused"], choices=["logits", "fused"])
    ap.add_argument("--steps", type=int, default=1, help="full steps per process (time: the fastest)")
    ap.add_argument("--gradient_checkpointing", action="store_true",
                    help="recompute the decoder layers' activations in backward (both losses)")
    ap.add_argument("--no_gpu", action="store_true", help="skip the GPU measurements even if a GPU is visible")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        job = json.loads(args.worker)
        kind = job[0]
        res = (gpu_worker(args, job[1]) if kind == "gpu" else
               breakdown_worker(args, *job[2:]) if kind == "breakdown" else cpu_worker(args, *job[1:]))
        print(json.dumps(res))
        return 0

    import torch
    from tqdm import tqdm

    jobs = [("cpu", loss, b, n, m) for (b, n) in args.shapes for m in args.masking for loss in args.losses]
    gpu = torch.cuda.is_available() and not args.no_gpu
    jobs += [("gpu", loss) for loss in args.losses] if gpu else []
    first = (*args.shapes[0], args.masking[0])
    jobs.append(("breakdown", "-", *first))
    results = {}
    for job in tqdm(jobs, desc="train-step benchmark", unit="proc"):
        results[job] = run_worker(args, *job)

    print(f"\n{Path(args.model).name}, fp32 on CPU ({torch.get_num_threads()} threads), "
          f"gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}, one step = forward + "
          f"backward + AdamW; memory = peak RSS above model + optimizer state; time of one step "
          f"(shared machine: noisy, compare ratios)")
    print(f"{'shape':8} {'masking':8} {'targets':>8} {'loss':7} {'value':>9} {'extra MB':>9} {'step s':>8}")
    lines, met = [], []
    for (b, n) in args.shapes:
        for m in args.masking:
            for loss in args.losses:
                r = results[("cpu", loss, b, n, m)]
                print(f"{b}x{n:<6} {m:8} {r['targets']:8d} {loss:7} {r['loss']:9.5f} "
                      f"{r['extra_bytes'] / MB:9.0f} {r['time']:8.1f}")
            if {"logits", "fused"} <= set(args.losses):
                lo, fu = results[("cpu", "logits", b, n, m)], results[("cpu", "fused", b, n, m)]
                mem, tim = fu["extra_bytes"] / lo["extra_bytes"], fu["time"] / lo["time"]
                line = (f"{b}x{n} {m}: fused/logits memory {mem:.3f}x, time {tim:.3f}x, "
                        f"|loss difference| {abs(fu['loss'] - lo['loss']):.1e}")
                if (b, n, m) == (1, 2048, "chat"):
                    ok = mem <= 0.5 and tim <= 1.05
                    met.append(ok)
                    line += f" (goals: memory <= 0.5x, time <= 1.05x -> {'MET' if ok else 'NOT MET'})"
                lines.append(line)
    print()
    for line in lines:
        print(line)
    bd = results[jobs[-1]]
    b, n, m = first
    print(f"\nwhere the memory goes at {b}x{n} {m} (MB saved for backward, parameters excluded): "
          f"decoder {bd['decoder'] / MB:.0f}; output layer + loss: logits path {bd['logits_head'] / MB:.0f}, "
          f"fused {bd['fused'] / MB:.1f}; logits tensor {bd['logits'] / MB:.0f} (its gradient as much); "
          f"parameters' gradients {bd['param_grads'] / MB:.0f}")
    print(f"the same with bf16 weights (2-byte training, as DeepSpeed's fp16/bf16 on a GPU): decoder "
          f"{bd['decoder_half'] / MB:.0f}; output layer + loss: logits path {bd['logits_head_half'] / MB:.0f}, "
          f"fused {bd['fused_half'] / MB:.1f}; logits tensor {bd['logits_half'] / MB:.0f}")
    if ("cpu", "logits", b, n, m) in results:
        peak = results[("cpu", "logits", b, n, m)]["extra_bytes"]
        floor = max(bd["decoder"], bd["param_grads"])
        print(f"lowest fused/logits memory ratio any loss could reach here: every saved decoder activation is "
              f"alive at the end of forward and every parameter gradient at the end of backward, whatever the "
              f"loss, so max({bd['decoder'] / MB:.0f}, {bd['param_grads'] / MB:.0f}) / logits-path peak "
              f"{peak / MB:.0f} = {floor / peak:.3f}x")
    if gpu:
        print(f"\nGPU {torch.cuda.get_device_name(0)}, fp32 weights + bf16 autocast, chat masking; "
              f"max_memory_allocated above model + optimizer state (MB); largest batch at 2048 in 11 GB")
        for loss in args.losses:
            r = results[("gpu", loss)]
            peaks = "  ".join(f"{k}: {v / MB:.0f}" for k, v in r["peaks"].items())
            print(f"{loss:7} {peaks}  max batch 2048: {r['max_batch_2048_in_11GB']}")
    print(f"\nsummary: {len(jobs)} processes; " + (f"1x2048 chat goals {'MET' if all(met) else 'NOT MET'}"
                                                   if met else "no 1x2048 chat comparison requested"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
