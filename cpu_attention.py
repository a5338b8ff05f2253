"""Causal self-attention for training on the CPU, as batched matrix products one
(sample, key/value head) at a time.

    import cpu_attention
    cpu_attention.register()                       # once; then
    AutoModelForCausalLM.from_pretrained(path, attn_implementation=cpu_attention.NAME)

Why
---
PyTorch's CPU flash-attention kernel (what ``sdpa`` runs on the CPU) computes its small
blocks with its own loops and runs no faster in bf16 than in fp32. The same attention
written as matrix products reaches the CPU's bf16 matrix throughput, and working on one
(sample, key/value head) at a time keeps each score matrix (``group x seq x seq`` fp32,
2 MB at 3 x 408 x 408) in the core's cache for the softmax around the products.
Measurements: docs/performance_cpu.md.

What is computed
----------------
For a query/key/value head group of sample ``b`` (``G`` query heads share one key/value
head: grouped-query attention without copying the keys and values), with
``S = scaling * Q K^T`` and the additive mask ``M`` (0 where attended, -inf elsewhere):
``O = softmax(S + M) V``. Forward keeps ``P = softmax(S + M)`` in the inputs' dtype for
backward: ``dV = P^T dO``, ``dP = dO V^T``, ``dS = P * (dP - rowsum(dO * O))``,
``dQ = scaling dS K``, ``dK = scaling dS^T Q`` (the softmax gradient, e.g. Dao et al. 2022,
FlashAttention, appendix B). The products run in the inputs' dtype; in bf16 the scores come
out of them in bf16, as in transformers' ``eager`` attention, while the mask, softmax and
``dS`` are computed in fp32 (fp64 for fp64 inputs).

Memory: ``P`` is ``B x heads x L x L`` per layer (bf16: 19 MB at 4 x 9 x 512 x 512), where
the flash kernel keeps one log-sum-exp per row; recomputing ``P`` in backward from it cost
as much time as it saved, so ``P`` is kept. In fp32 the flash kernel is the faster one,
hence ``cpu_precision.training_attention`` picks this only for bf16.

Where the score matrix of one (sample, key/value head) exceeds :data:`MAX_SCORE_BLOCK_BYTES`
in fp32 (longer sequences) or ``P`` of one layer :data:`MAX_PROBS_BYTES`, the call goes
to transformers' ``sdpa`` attention instead, which was faster there.

Limits (``ValueError`` where met): CPU tensors, causal attention without dropout, sliding
window, logit soft-capping, attention sinks or position bias, query and key lengths equal
(training, no KV cache), and every query row attends to at least one key (true for causal
masks with right or no padding). The backward runs once per forward (no double backward).
"""
from __future__ import annotations

from typing import Optional

import torch

from cpu_precision import CPU_ATTENTION as NAME
PROFILE_RANGE = f"{NAME} attention"  # torch.profiler range around forward and backward
# Beyond these, sdpa runs instead: scores that leave the core's cache made this code slower
# than the flash kernel (docs/performance_cpu.md), and P's memory grows with the batch.
MAX_SCORE_BLOCK_BYTES = 6 << 20
MAX_PROBS_BYTES = 64 << 20


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _causal_bias(n: int, dtype: torch.dtype) -> torch.Tensor:
    """``[n, n]`` additive causal mask: 0 on and below the diagonal, -inf above."""
    return torch.full((n, n), float("-inf"), dtype=dtype).triu_(1)


class GroupedAttention(torch.autograd.Function):
    """``softmax(scaling * q k^T + bias) v`` per (sample, key/value head).

    ``q`` ``[B, KV, G*L, D]`` (the ``G`` query heads of key/value head ``kv`` stacked along
    rows, head-major), ``k``/``v`` ``[B, KV, L, D]``, all one dtype; ``bias`` ``[B or 1, L, L]``
    fp32/fp64 additive mask. Returns ``[B, KV, G*L, D]`` in ``q``'s dtype.
    """

    @staticmethod
    def forward(ctx, q, k, v, bias, scaling: float):
        out = torch.empty_like(q)
        probs = torch.empty(*q.shape[:3], k.shape[2], dtype=q.dtype)
        with torch.profiler.record_function(PROFILE_RANGE):
            GroupedAttention._forward(q, k, v, bias, scaling, out, probs)
        ctx.save_for_backward(q, k, v, out, probs)
        ctx.scaling = scaling
        return out

    @staticmethod
    def _forward(q, k, v, bias, scaling, out, probs):
        B, KV, GL, D = q.shape
        L = k.shape[2]
        G = GL // L
        cdt = bias.dtype
        for b in range(B):
            m = bias[b if bias.shape[0] > 1 else 0]
            for h in range(KV):
                s = torch.mm(q[b, h], k[b, h].t()).to(cdt).mul_(scaling).view(G, L, L).add_(m).view(GL, L)
                p = torch.softmax(s, -1)
                probs[b, h] = p
                torch.mm(probs[b, h], v[b, h], out=out[b, h])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout):
        q, k, v, out, probs = ctx.saved_tensors
        with torch.profiler.record_function(PROFILE_RANGE):
            return GroupedAttention._backward(q, k, v, out, probs, dout, ctx.scaling)

    @staticmethod
    def _backward(q, k, v, out, probs, dout, scaling):
        B, KV, GL, D = q.shape
        L = k.shape[2]
        cdt = _compute_dtype(q.dtype)
        dout = dout.contiguous()
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        delta = (dout.to(cdt) * out.to(cdt)).sum(-1)  # rowsum(dO * O) = rowsum(P * dP)
        for b in range(B):
            for h in range(KV):
                pb = probs[b, h]
                torch.mm(pb.t(), dout[b, h], out=dv[b, h])
                dp = torch.mm(dout[b, h], v[b, h].t()).to(cdt)
                # dS into dP's fresh buffer: P is saved and must stay intact for another backward.
                ds = dp.sub_(delta[b, h, :, None]).mul_(pb.to(cdt)).mul_(scaling).to(q.dtype)
                torch.mm(ds, k[b, h], out=dq[b, h])
                torch.mm(ds.t(), q[b, h], out=dk[b, h])
        return dq, dk, dv, None, None


def attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: Optional[torch.Tensor], dropout: float = 0.0,
                      scaling: Optional[float] = None, sliding_window: Optional[int] = None,
                      softcap: Optional[float] = None, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention interface: ``query`` ``[B, H, L, D]``, ``key``/``value``
    ``[B, KV, L, D]`` (``H`` a multiple of ``KV``), ``attention_mask`` the boolean
    ``[B or 1, 1, L, L]`` mask of the ``sdpa`` interface (True = attend) or None (causal,
    no padding). Returns ``([B, L, H, D], None)``. Raises ValueError for what the module
    docstring lists as limits."""
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
    cdt = _compute_dtype(query.dtype)
    scaling = D ** -0.5 if scaling is None else scaling
    score_block = (H // KV) * L * L * torch.finfo(cdt).bits // 8
    if score_block > MAX_SCORE_BLOCK_BYTES or B * H * L * L * query.element_size() > MAX_PROBS_BYTES:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if attention_mask is None:
        bias = _causal_bias(L, cdt)[None]
    else:
        if attention_mask.dtype != torch.bool or attention_mask.shape[1] != 1:
            raise ValueError(f"{NAME} attention: expected a boolean [B, 1, L, L] mask, got "
                             f"{attention_mask.dtype} {tuple(attention_mask.shape)}")
        mask = attention_mask[:, 0, :, :L]
        if not mask.any(-1).all():  # softmax over no key is 0/0
            raise ValueError(f"{NAME} attention: a query row attends to no key (left padding or an empty mask "
                             "row); use attn_implementation='sdpa'")
        bias = torch.zeros(mask.shape[0], L, L, dtype=cdt).masked_fill_(~mask, float("-inf"))
    # [B, H, L, D] -> [B, KV, G*L, D]: the G query heads of one key/value head share its products.
    q = query.reshape(B, KV, (H // KV) * L, D)
    with torch.autocast("cpu", enabled=False):
        out = GroupedAttention.apply(q, key.contiguous(), value.contiguous(), bias, scaling)
    return out.view(B, H, L, D).transpose(1, 2), None


def register() -> str:
    """Registers :data:`NAME` with transformers' attention and mask interfaces (the mask is
    the ``sdpa`` one); returns :data:`NAME`. Safe to call more than once."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, attention_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME
