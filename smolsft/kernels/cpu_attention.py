"""Causal self-attention for training on the CPU, as batched matrix products one
(sample, key/value head) at a time.

    from smolsft.kernels import cpu_attention as cpu_attention
    cpu_attention.register()                       # once; then
    AutoModelForCausalLM.from_pretrained(path, attn_implementation=cpu_attention.NAME)

Why
---
PyTorch's CPU flash-attention kernel (what ``sdpa`` runs on the CPU) computes its small
blocks with its own loops, runs no faster in bf16 than in fp32, and at 512 tokens takes as
long with ``is_causal`` as with a full mask: it works on the whole ``L x L`` square, the
half above the diagonal and the padding included. Here each sample's real tokens (right padding, read off the mask) are split into
blocks of :data:`BLOCK_ROWS` query positions, and block ``[r0, r1)`` is multiplied with keys
``[0, r1)`` only, so the work is about half the square of the real length. The products
reach the CPU's matrix throughput (fp32 and bf16), and one (sample, key/value head, block)
at a time keeps each score block (``BLOCK_ROWS * G x r1`` fp32) in the core's cache for the
softmax around the products. Measurements: docs/performance.md#the-non-matmul-half-of-a-bf16-step-made-faster.

What is computed
----------------
For a query/key/value head group of sample ``b`` (``G`` query heads share one key/value
head: grouped-query attention without copying the keys and values), with
``S = scaling * Q K^T`` and the causal mask ``M`` (0 where ``j <= i``, -inf elsewhere):
``O = softmax(S + M) V`` over the sample's ``n_b`` real tokens. Forward keeps
``P = softmax(S + M)`` in the inputs' dtype for backward: ``dV = P^T dO``,
``dP = dO V^T``, ``dS = P * (dP - rowsum(dO * O))``, ``dQ = scaling dS K``,
``dK = scaling dS^T Q`` (the softmax gradient, e.g. Dao et al. 2022, FlashAttention,
appendix B). The products run in the inputs' dtype; in bf16 the scores come out of them in
bf16, as in transformers' ``eager`` attention, while the mask, softmax and ``dS`` are
computed in fp32 (fp64 for fp64 inputs).

Padding rows (query positions ``>= n_b``) get a zero output and pass no gradient. With
``sdpa`` they attend to the real keys instead; either way no real position attends to them
(causal) and training gives them no target (label -100), so the real positions' outputs,
the loss and every parameter's gradient are the same (tests/kernels/test_cpu_attention.py).

Memory: ``P`` is about ``heads x n_b^2 / 2`` per sample and layer (fp32: 19 MB at
4 x 9 x 512 x 512 / 2), where the flash kernel keeps one log-sum-exp per row; recomputing
``P`` in backward from it cost as much time as it saved, so ``P`` is kept. Where ``P`` of one
layer would exceed :data:`MAX_PROBS_BYTES`, and for any mask other than causal with right
or no padding (left padding, packed samples), the call goes to transformers' ``sdpa``.

Limits (``ValueError`` where met): CPU tensors, causal attention without dropout, sliding
window, logit soft-capping, attention sinks or position bias, query and key lengths equal
(training, no KV cache). The backward runs once per forward (no double backward).
"""
from __future__ import annotations

import weakref
from typing import Optional

import torch

from smolsft.hardware.cpu import CPU_ATTENTION as NAME
from smolsft.losses.chunked import compute_dtype  # fp32 for fp32/bf16/fp16, fp64 for fp64

PROFILE_RANGE = f"{NAME} attention"  # torch.profiler range around forward and backward
# Query rows per product, the fastest block size measured (benchmarks/attention.py; docs/performance.md).
BLOCK_ROWS = 128
# Beyond this much kept P per layer the call goes to sdpa, which keeps one number per row.
MAX_PROBS_BYTES = 64 << 20


def query_blocks(n: int) -> list[tuple[int, int]]:
    """The ``(r0, r1)`` ranges of :data:`BLOCK_ROWS` query rows of a sample of ``n`` real
    tokens; rows ``r0..r1-1`` attend to keys ``0..r1-1`` at most (causal)."""
    return [(r0, min(r0 + BLOCK_ROWS, n)) for r0 in range(0, n, BLOCK_ROWS)]


def probs_elements(segments: list[list[tuple[int, int]]], heads: int) -> int:
    """Elements of the kept probabilities ``P`` for one layer: ``heads`` query heads over
    the ``(start, end)`` segments of each batch row (one causal sequence each), one
    ``[rows, r1]`` block per query block."""
    return heads * sum((r1 - r0) * r1 for row in segments for s, e in row for r0, r1 in query_blocks(e - s))


# The last mask read (a weak reference, its version, B, L) and its segments: transformers
# passes one mask tensor to every layer, and checking it costs 1.4 ms at 4 x 512.
_last_mask: tuple = (None, None, None, None, None)


def causal_segments(mask: Optional[torch.Tensor], B: int, L: int) -> Optional[list[list[tuple[int, int]]]]:
    """The causal sequences of each batch row as ``(start, end)`` position ranges, when
    ``mask`` (transformers' boolean sdpa mask ``[B or 1, 1, L, L]``, True = attend, or None
    for no padding) is exactly block-causal over a prefix of real tokens: each real query
    ``i`` (one that attends to itself) attends to keys ``start(i) .. i`` of its own sequence,
    and the real tokens come first (right padding). That covers right-padded batches (one
    sequence per row) and samples packed into one row (transformers builds that mask from
    restarting position ids). What padding rows attend to is not read: this kernel gives
    them no output. None for any other mask (left padding, a float mask), which this
    kernel does not compute. The answer for the same, unmodified mask tensor is remembered
    (an in-place change bumps the tensor's version and is read again; one through
    ``.data`` would not be)."""
    global _last_mask
    if mask is None:
        return [[(0, L)] for _ in range(B)]
    if mask.is_inference():  # no version counter to tell a changed mask
        return _read_segments(mask, B, L)
    ref, version, b, l, segments = _last_mask
    if ref is not None and ref() is mask and version == mask._version and (b, l) == (B, L):
        return segments
    segments = _read_segments(mask, B, L)
    _last_mask = (weakref.ref(mask), mask._version, B, L, segments)
    return segments


def _read_segments(mask: torch.Tensor, B: int, L: int) -> Optional[list[list[tuple[int, int]]]]:
    if (mask.dtype != torch.bool or mask.dim() != 4 or mask.shape[0] not in (1, B) or mask.shape[1] != 1
            or mask.shape[2] != L or mask.shape[3] < L):
        return None
    m = mask[:, 0, :, :L]
    j = torch.arange(L)
    real = m.diagonal(dim1=-2, dim2=-1)  # [b, L]: a real query attends to itself
    n = real.sum(-1)
    if not torch.equal(real, j[None, :] < n[:, None]):  # real tokens first
        return None
    first = m.to(torch.uint8).argmax(-1)  # each row's first attended key
    is_start = (first == j) & real
    start = torch.where(is_start, j, 0).cummax(-1).values  # the start of each query's sequence
    want = (j[None, None, :] <= j[None, :, None]) & (j[None, None, :] >= start[:, :, None])
    rows = real[:, :, None]
    if not torch.equal(m & rows, want & rows):
        return None
    segments = []
    for starts, count in zip(is_start.tolist(), n.tolist()):
        begins = [i for i in range(count) if starts[i]]
        segments.append(list(zip(begins, begins[1:] + [count])))
    return segments * B if len(segments) == 1 and B > 1 else segments


class GroupedAttention(torch.autograd.Function):
    """Causal ``softmax(scaling * q k^T) v`` per (causal sequence, key/value head), over
    real tokens only.

    ``q`` ``[B, KV, L, G, D]`` (the ``G`` query heads of key/value head ``kv`` next to each
    other, so rows ``r0*G .. r1*G`` of ``q[b, kv].view(L*G, D)`` are query positions
    ``r0..r1-1``), ``k``/``v`` ``[B, KV, L, D]``, one dtype; ``segments`` the ``(start,
    end)`` sequences of each batch row (:func:`causal_segments`). Returns ``[B, KV, L, G, D]``
    in ``q``'s dtype, zero at rows in no sequence (padding); gradients flow only within
    each sequence.
    """

    @staticmethod
    def forward(ctx, q, k, v, segments: list[list[tuple[int, int]]], scaling: float):
        out = torch.zeros_like(q)  # padding rows: no attention output
        probs = torch.empty(probs_elements(segments, q.shape[1] * q.shape[3]), dtype=q.dtype)
        with torch.profiler.record_function(PROFILE_RANGE):
            GroupedAttention._forward(q, k, v, segments, scaling, out, probs)
        ctx.save_for_backward(q, k, v, out, probs)
        ctx.segments, ctx.scaling = segments, scaling
        return out

    @staticmethod
    def _blocks(segments, KV):
        """(b, h, s, r0, r1) in the order P is laid out: query rows ``s+r0 .. s+r1-1`` of
        key/value head ``h`` of row ``b`` attend to keys ``s .. s+r1-1``."""
        for b, row in enumerate(segments):
            for h in range(KV):
                for s, e in row:
                    for r0, r1 in query_blocks(e - s):
                        yield b, h, s, r0, r1

    @staticmethod
    def _forward(q, k, v, segments, scaling, out, probs):
        B, KV, L, G, D = q.shape
        cdt = compute_dtype(q.dtype)
        # Scores above the diagonal, within a block on the diagonal: -inf (causal).
        tri = torch.full((BLOCK_ROWS, BLOCK_ROWS), float("-inf"), dtype=cdt).triu_(1)
        at = 0
        for b, h, s, r0, r1 in GroupedAttention._blocks(segments, KV):
            t = r1 - r0
            rows = slice((s + r0) * G, (s + r1) * G)
            scores = torch.mm(q[b, h].view(L * G, D)[rows], k[b, h, s:s + r1].t()).to(cdt).mul_(scaling)
            scores.view(t, G, r1)[:, :, r0:].add_(tri[:t, None, :t])
            p = probs[at:at + t * G * r1].view(t * G, r1)
            at += p.numel()
            if p.dtype == cdt:
                torch.softmax(scores, -1, out=p)
            else:
                p.copy_(torch.softmax(scores, -1))
            torch.mm(p, v[b, h, s:s + r1], out=out[b, h].view(L * G, D)[rows])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout):
        q, k, v, out, probs = ctx.saved_tensors
        with torch.profiler.record_function(PROFILE_RANGE):
            return GroupedAttention._backward(q, k, v, out, probs, dout, ctx.segments, ctx.scaling)

    @staticmethod
    def _backward(q, k, v, out, probs, dout, segments, scaling):
        B, KV, L, G, D = q.shape
        cdt = compute_dtype(q.dtype)
        dout = dout.contiguous()
        dq = torch.zeros_like(q)
        # dK and dV sum one product per query block: summed in fp32 (bf16 sums would round each time).
        dk, dv = torch.zeros(k.shape, dtype=cdt), torch.zeros(v.shape, dtype=cdt)
        same = q.dtype == cdt
        delta = (dout.to(cdt) * out.to(cdt)).sum(-1).view(B, KV, L * G)  # rowsum(dO * O) = rowsum(P * dP)
        at = 0
        for b, h, s, r0, r1 in GroupedAttention._blocks(segments, KV):
            t = r1 - r0
            rows = slice((s + r0) * G, (s + r1) * G)
            p = probs[at:at + t * G * r1].view(t * G, r1)
            at += p.numel()
            do, qb = dout[b, h].view(L * G, D)[rows], q[b, h].view(L * G, D)[rows]
            if same:
                dv[b, h, s:s + r1].addmm_(p.t(), do)
            else:
                dv[b, h, s:s + r1] += p.t() @ do
            dp = torch.mm(do, v[b, h, s:s + r1].t()).to(cdt)
            # dS into dP's fresh buffer: P is saved and must stay intact for another backward.
            ds = dp.sub_(delta[b, h, rows, None]).mul_(p.to(cdt)).mul_(scaling).to(q.dtype)
            torch.mm(ds, k[b, h, s:s + r1], out=dq[b, h].view(L * G, D)[rows])
            if same:
                dk[b, h, s:s + r1].addmm_(ds.t(), qb)
            else:
                dk[b, h, s:s + r1] += ds.t() @ qb
        return dq, dk.to(k.dtype), dv.to(v.dtype), None, None


def attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: Optional[torch.Tensor], dropout: float = 0.0,
                      scaling: Optional[float] = None, sliding_window: Optional[int] = None,
                      softcap: Optional[float] = None, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention interface: ``query`` ``[B, H, L, D]``, ``key``/``value``
    ``[B, KV, L, D]`` (``H`` a multiple of ``KV``), ``attention_mask`` the boolean
    ``[B or 1, 1, L, L]`` mask of the ``sdpa`` interface (True = attend) or None (causal,
    no padding). Returns ``([B, L, H, D], None)``, zero at padding rows. Raises ValueError
    for what the module docstring lists as limits; other masks and a large ``P`` go to
    transformers' ``sdpa`` attention."""
    if dropout and module.training:
        raise ValueError(f"{NAME} attention has no dropout (got {dropout}); use attn_implementation='sdpa'")
    if sliding_window is not None or softcap is not None:
        raise ValueError(f"{NAME} attention: no sliding window or soft-capping; use attn_implementation='sdpa'")
    if kwargs.get("is_causal") is False or getattr(module, "is_causal", True) is False:
        raise ValueError(f"{NAME} attention is causal only; use attn_implementation='sdpa'")
    if kwargs.get("s_aux") is not None or kwargs.get("position_bias") is not None:
        raise ValueError(f"{NAME} attention: no attention sinks or position bias; use attn_implementation='sdpa'")
    if query.device.type != "cpu":
        raise ValueError(f"{NAME} attention runs on the CPU; the inputs are on {query.device}")
    B, H, L, D = query.shape
    KV = key.shape[1]
    if key.shape[2] != L or H % KV:
        raise ValueError(f"{NAME} attention: query {tuple(query.shape)} and key {tuple(key.shape)} are not "
                         "self-attention over one sequence (training only)")
    if torch.is_autocast_enabled("cpu"):
        # Under autocast the rotary embedding leaves q, k in fp32 and v in bf16: one dtype for the products.
        dt = torch.get_autocast_dtype("cpu")
        query, key, value = query.to(dt), key.to(dt), value.to(dt)
    elif not query.dtype == key.dtype == value.dtype:
        raise ValueError(f"{NAME} attention: query, key and value dtypes differ ({query.dtype}, {key.dtype}, "
                         f"{value.dtype})")
    scaling = D ** -0.5 if scaling is None else scaling
    segments = causal_segments(attention_mask, B, L)
    if segments is None or probs_elements(segments, H) * query.element_size() > MAX_PROBS_BYTES:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    G = H // KV
    # [B, H, L, D] -> [B, KV, L, G, D]: a block of query positions is a block of rows for all G heads.
    q = query.view(B, KV, G, L, D).transpose(2, 3).contiguous()
    with torch.autocast("cpu", enabled=False):
        out = GroupedAttention.apply(q, key.contiguous(), value.contiguous(), segments, scaling)
    return out.permute(0, 2, 1, 3, 4).reshape(B, L, H, D), None


def register() -> str:
    """Registers :data:`NAME` with transformers' attention and mask interfaces (the mask is
    the ``sdpa`` one); returns :data:`NAME`. Safe to call more than once."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, attention_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME
