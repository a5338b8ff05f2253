"""The training memory model: how many samples of one length fit on a GPU, in MiB
(docs/performance.md "Training memory"). Standard library only."""
from __future__ import annotations

import math

MIB = 2 ** 20
N_PARAMS = 134_515_008  # SmolLM2-135M (tied embeddings)
# Bytes autograd saves per 2,048-token sample, measured by benchmarks/train_memory.py on the CPU:
# the decoder's activations (by bytes per weight), and with --loss logits the logits plus their gradient.
ACT_MIB_PER_2048 = {2: 1450.0, 4: 2623.0}
LOGITS_MIB_PER_2048 = {2: 384.0, 4: 768.0}
DS_BUCKET_ELEMENTS = 2 * 2e8  # allgather + reduce buckets of ds_configs/zero2_*.json
CUDA_CONTEXT_MIB = 500.0      # CUDA context, cuBLAS/cuDNN workspaces (docs/performance.md estimate)
# Share of nvidia-smi's memory.total the estimate plans to fill: the rest absorbs allocator
# fragmentation and what the estimate leaves out (docs/performance.md).
MEMORY_HEADROOM = 0.9


def training_fixed_mib(precision: str, world: int, deepspeed: bool, offload: bool = False) -> dict:
    """The per-GPU memory that does not grow with the batch, in MiB, by item.

    DeepSpeed ZeRO-2 with 2-byte training: 2-byte weights and gradients, the fp32 master
    weights and AdamW's two moments (12 bytes per parameter) split over the ``world`` ranks
    (on the CPU with offload), two 2e8-element communication buckets. fp32 training: 4-byte
    weights, gradients and buckets. DDP (autocast): fp32 weights, gradients, AdamW moments,
    DDP's gradient buckets (a copy of the gradients) and autocast's 2-byte weight copies.
    Plus :data:`CUDA_CONTEXT_MIB`. Formula: docs/performance.md "Training memory"."""
    n = N_PARAMS / MIB
    b = 4 if precision == "fp32" else 2
    if deepspeed:
        items = {"weights": b * n, "gradients": b * n,
                 "master weights + AdamW": 0.0 if offload else 12 * n / world,
                 "buckets": DS_BUCKET_ELEMENTS * b / MIB}
    else:
        items = {"weights": 4 * n, "gradients": 4 * n, "AdamW": 8 * n, "DDP buckets": 4 * n,
                 "autocast copies": 0.0 if precision == "fp32" else 2 * n}
    items["CUDA context"] = CUDA_CONTEXT_MIB
    return items


def per_sample_mib(precision: str, maxlen: int, loss: str, deepspeed: bool) -> float:
    """Activation memory of one sample padded to ``maxlen`` tokens, MiB: the measured
    2,048-token figures scaled linearly with length. 2-byte figures where DeepSpeed runs the
    model in bf16/fp16; fp32 ones for fp32 training and under DDP's autocast (which keeps the
    residual stream and norms in fp32: an upper bound)."""
    b = 2 if (precision in ("bf16", "fp16") and deepspeed) else 4
    per = ACT_MIB_PER_2048[b] + (LOGITS_MIB_PER_2048[b] if loss == "logits" else 0.0)
    return per * maxlen / 2048


def samples_that_fit(memory_mib: int, maxlen: int, precision: str, loss: str, world: int,
                     deepspeed: bool = True, offload: bool = False) -> tuple:
    """(samples per device that fit, estimate) on a GPU of ``memory_mib`` MiB: fixed part +
    samples x per-sample part within :data:`MEMORY_HEADROOM` x memory. ``estimate`` holds the
    MiB figures for the message (``fixed_mib``, ``per_sample_mib``, ``usable_mib``,
    ``memory_mib``, ``fits``). The count may be 0 or negative: nothing fits."""
    fixed = sum(training_fixed_mib(precision, world, deepspeed, offload).values())
    per = per_sample_mib(precision, maxlen, loss, deepspeed)
    usable = MEMORY_HEADROOM * memory_mib
    fit = math.floor((usable - fixed) / per)
    return fit, {"fixed_mib": round(fixed), "per_sample_mib": round(per), "usable_mib": round(usable),
                 "memory_mib": memory_mib, "fits": fit}


def estimate_mib(bsz: int, est: dict) -> float:
    """The estimate for ``bsz`` samples per device, MiB."""
    return est["fixed_mib"] + bsz * est["per_sample_mib"]


def estimate_note(bsz: int, est: dict, maxlen: int, loss: str) -> str:
    """One line: the estimate for ``bsz`` samples against the usable memory."""
    return (f"est. {estimate_mib(bsz, est) / 1024:.1f} of {est['usable_mib'] / 1024:.1f} GiB usable "
            f"({MEMORY_HEADROOM:.0%} of {est['memory_mib']} MiB on the smallest GPU: {est['fixed_mib']} MiB fixed + "
            f"{bsz} x {est['per_sample_mib']} MiB per sample at MAXLEN {maxlen}, --loss {loss})")
