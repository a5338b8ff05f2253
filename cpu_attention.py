"""Causal self-attention for training on the CPU, as batched matrix products one
(sample, key/value head) at a time.

    import cpu_attention
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
softmax around the products. Measurements: docs/performance_cpu.md.

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
the loss and every parameter's gradient are the same (tests/test_cpu_attention.py).

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

from cpu_precision import CPU_ATTENTION as NAME
PROFILE_RANGE = f"{NAME} attention"  # torch.profiler range around forward and backward
# Query rows per product: 128 beat 64 everywhere and 256 in fp32 (docs/performance_cpu.md).
BLOCK_ROWS = 128
# Beyond this much kept P per layer the call goes to sdpa, which keeps one number per row.
MAX_PROBS_BYTES = 64 << 20


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def query_blocks(n: int) -> list[tuple[int, int]]:
    """The ``(r0, r1)`` ranges of :data:`BLOCK_ROWS` query rows of a sample of ``n`` real
    tokens; rows ``r0..r1-1`` attend to keys ``0..r1-1`` at most (causal)."""
    return [(r0, min(r0 + BLOCK_ROWS, n)) for r0 in range(0, n, BLOCK_ROWS)]


def probs_elements(lengths: list[int], heads: int) -> int:
    """Elements of the kept probabilities ``P`` for one layer: ``heads`` query heads over
    samples of ``lengths`` real tokens, one ``[rows, r1]`` block per query block."""
    return heads * sum((r1 - r0) * r1 for n in lengths for r0, r1 in query_blocks(n))


# The last mask read (a weak reference, its version, B, L) and its lengths: transformers
# passes one mask tensor to every layer, and checking it costs 1.4 ms at 4 x 512.
_last_mask: tuple = (None, None, None, None, None)


def right_padded_lengths(mask: Optional[torch.Tensor], B: int, L: int) -> Optional[list[int]]:
    """Each sample's number of real tokens when ``mask`` (transformers' boolean sdpa mask
    ``[B or 1, 1, L, L]``, True = attend, or None for no padding) is exactly causal with right
    padding: query ``i`` attends key ``j`` iff ``j <= i`` and ``j < n_b``. None for any other
    mask (left padding, packed samples, a float mask), which this kernel does not compute.
    The answer for the same, unmodified mask tensor is remembered (an in-place change bumps
    the tensor's version and is read again; one through ``.data`` would not be)."""
    global _last_mask
    if mask is None:
        return [L] * B
    if mask.is_inference():  # no version counter to tell a changed mask
        return _read_lengths(mask, B, L)
    ref, version, b, l, lengths = _last_mask
    if ref is not None and ref() is mask and version == mask._version and (b, l) == (B, L):
        return lengths
    lengths = _read_lengths(mask, B, L)
    _last_mask = (weakref.ref(mask), mask._version, B, L, lengths)
    return lengths


def _read_lengths(mask: torch.Tensor, B: int, L: int) -> Optional[list[int]]:
    if (mask.dtype != torch.bool or mask.dim() != 4 or mask.shape[0] not in (1, B) or mask.shape[1] != 1
            or mask.shape[2] != L or mask.shape[3] < L):
        return None
    m = mask[:, 0, :, :L]
    n = m[:, L - 1].sum(-1)  # the last row (the last token or padding) sees every real key
    j = torch.arange(L)
    want = (j[None, :] <= j[:, None])[None] & (j[None, None, :] < n[:, None, None])
    if not torch.equal(m, want):
        return None
    return n.expand(B).tolist()


class GroupedAttention(torch.autograd.Function):
    """Causal ``softmax(scaling * q k^T) v`` per (sample, key/value head), over each
    sample's real tokens only.

    ``q`` ``[B, KV, L, G, D]`` (the ``G`` query heads of key/value head ``kv`` next to each
    other, so rows ``r0*G .. r1*G`` of ``q[b, kv].view(L*G, D)`` are query positions
    ``r0..r1-1``), ``k``/``v`` ``[B, KV, L, D]``, one dtype; ``lengths`` the real tokens
    per sample (right padding). Returns ``[B, KV, L, G, D]`` in ``q``'s dtype, zero at rows
    ``>= lengths[b]``; gradients flow only through rows and keys ``< lengths[b]``.
    """

    @staticmethod
    def forward(ctx, q, k, v, lengths: list[int], scaling: float):
        out = torch.empty_like(q)
        probs = torch.empty(probs_elements(lengths, q.shape[1] * q.shape[3]), dtype=q.dtype)
        with torch.profiler.record_function(PROFILE_RANGE):
            GroupedAttention._forward(q, k, v, lengths, scaling, out, probs)
        ctx.save_for_backward(q, k, v, out, probs)
        ctx.lengths, ctx.scaling = lengths, scaling
        return out

    @staticmethod
    def _forward(q, k, v, lengths, scaling, out, probs):
        B, KV, L, G, D = q.shape
        cdt = _compute_dtype(q.dtype)
        # Scores above the diagonal, within a block on the diagonal: -inf (causal).
        tri = torch.full((BLOCK_ROWS, BLOCK_ROWS), float("-inf"), dtype=cdt).triu_(1)
        at = 0
        for b in range(B):
            out[b, :, lengths[b]:] = 0  # padding rows: no attention output
            for h in range(KV):
                qf, of = q[b, h].view(L * G, D), out[b, h].view(L * G, D)
                for r0, r1 in query_blocks(lengths[b]):
                    t = r1 - r0
                    s = torch.mm(qf[r0 * G:r1 * G], k[b, h, :r1].t()).to(cdt).mul_(scaling)
                    s.view(t, G, r1)[:, :, r0:].add_(tri[:t, None, :t])
                    p = probs[at:at + t * G * r1].view(t * G, r1)
                    at += p.numel()
                    if p.dtype == cdt:
                        torch.softmax(s, -1, out=p)
                    else:
                        p.copy_(torch.softmax(s, -1))
                    torch.mm(p, v[b, h, :r1], out=of[r0 * G:r1 * G])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout):
        q, k, v, out, probs = ctx.saved_tensors
        with torch.profiler.record_function(PROFILE_RANGE):
            return GroupedAttention._backward(q, k, v, out, probs, dout, ctx.lengths, ctx.scaling)

    @staticmethod
    def _backward(q, k, v, out, probs, dout, lengths, scaling):
        B, KV, L, G, D = q.shape
        cdt = _compute_dtype(q.dtype)
        dout = dout.contiguous()
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        delta = (dout.to(cdt) * out.to(cdt)).sum(-1).view(B, KV, L * G)  # rowsum(dO * O) = rowsum(P * dP)
        at = 0
        for b in range(B):
            n = lengths[b]
            dq[b, :, n:], dk[b, :, n:], dv[b, :, n:] = 0, 0, 0
            blocks = query_blocks(n)
            per_head = G * sum((r1 - r0) * r1 for r0, r1 in blocks)
            for h in range(KV):
                qf, dof, dqf = q[b, h].view(L * G, D), dout[b, h].view(L * G, D), dq[b, h].view(L * G, D)
                within = at + h * per_head
                offsets = []
                for r0, r1 in blocks:
                    offsets.append(within)
                    within += (r1 - r0) * G * r1
                # The last block reaches every real key: it writes dK, dV (beta=0), the others add.
                for (r0, r1), o in reversed(list(zip(blocks, offsets))):
                    t = r1 - r0
                    p = probs[o:o + t * G * r1].view(t * G, r1)
                    do = dof[r0 * G:r1 * G]
                    first = r1 == n
                    dv[b, h, :r1].addmm_(p.t(), do, beta=0 if first else 1)
                    dp = torch.mm(do, v[b, h, :r1].t()).to(cdt)
                    # dS into dP's fresh buffer: P is saved and must stay intact for another backward.
                    ds = dp.sub_(delta[b, h, r0 * G:r1 * G, None]).mul_(p.to(cdt)).mul_(scaling).to(q.dtype)
                    torch.mm(ds, k[b, h, :r1], out=dqf[r0 * G:r1 * G])
                    dk[b, h, :r1].addmm_(ds.t(), qf[r0 * G:r1 * G], beta=0 if first else 1)
            at += KV * per_head
        return dq, dk, dv, None, None


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
    lengths = right_padded_lengths(attention_mask, B, L)
    if lengths is None or probs_elements(lengths, H) * query.element_size() > MAX_PROBS_BYTES:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    G = H // KV
    # [B, H, L, D] -> [B, KV, L, G, D]: a block of query positions is a block of rows for all G heads.
    q = query.view(B, KV, G, L, D).transpose(2, 3).contiguous()
    with torch.autocast("cpu", enabled=False):
        out = GroupedAttention.apply(q, key.contiguous(), value.contiguous(), lengths, scaling)
    return out.permute(0, 2, 1, 3, 4).reshape(B, L, H, D), None


def register() -> str:
    """Registers :data:`NAME` with transformers' attention and mask interfaces (the mask is
    the ``sdpa`` one); returns :data:`NAME`. Safe to call more than once."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, attention_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME
