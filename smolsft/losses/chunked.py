"""The chunked causal-LM cross-entropy kernel shared by Part 5's reference solution
(``loss_functions.py``) and the fused loss (:mod:`smolsft.losses.fused`).

``logits`` rows are walked in chunks of ``chunk_size`` positions: forward keeps one number
per position (its log-sum-exp, fp32; fp64 for fp64 input); backward re-reads the chunk,
recomputes ``softmax = exp(x - lse)``, subtracts 1 at the target, scales and writes the chunk
into the gradient. Chunks are slices of consecutive positions that skip ignored spans longer
than ``MAX_GAP`` positions (slicing is much cheaper than gathering rows on a CPU). Extra
memory: one ``[chunk_size, vocab]`` fp32 buffer reused by every chunk. How the HF Trainer
calls a ``compute_loss_func`` and counts ``num_items_in_batch``: docs/design.md
(#gradient-accumulation-is-exact-parts-5-6).
"""
from __future__ import annotations

from typing import Any, Optional, Union

import torch

from smolsft.chat.format import IGNORE_TOKEN_ID

# Rows (positions) per chunk: a 96 MiB fp32 buffer at vocab 49,152; fewer, larger chunks
# keep the time steady on a loaded CPU (benchmarks/loss.py --chunk_sizes; docs/performance.md).
DEFAULT_CHUNK_SIZE = 512
# Gaps of up to this many ignored positions are computed inside a chunk rather than
# starting a new one (see chunk_plan).
MAX_GAP = 32
# Largest |lse - log g| for which backward folds the incoming gradient g into the exponent.
_FUSE_LIMIT = 64.0


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for half-precision (and fp32) logits; fp64 stays fp64 (gradcheck)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def chunk_plan(rows: torch.Tensor, chunk_size: int) -> list:
    """Cut the valid rows into chunks that are slices of consecutive positions.

    Returns ``(p0, p1, i0, i1, local, ignored)`` per chunk: positions ``[p0, p1)`` (at most
    ``chunk_size``) hold the valid rows ``rows[i0:i1]``, at offsets ``local`` from ``p0``;
    ``ignored`` are the offsets of the ignored positions inside the slice (or None). A
    chunk ends at ``chunk_size`` positions or at a gap of more than ``MAX_GAP`` ignored
    positions, so long ignored spans (prompts, padding) are skipped while short gaps are
    computed and then discarded: PyTorch's CPU row gathers (index_select) are far slower
    than slicing, and every extra chunk costs a dozen multi-threaded ops.
    """
    host = rows.tolist()  # one device sync per call; the plan is reused by backward
    device = rows.device
    plan = []
    i = 0
    while i < len(host):
        p0, j = host[i], i
        while j + 1 < len(host) and host[j + 1] - p0 < chunk_size and host[j + 1] - host[j] <= MAX_GAP + 1:
            j += 1
        p1 = host[j] + 1
        local = [r - p0 for r in host[i:j + 1]]
        ignored = sorted(set(range(p1 - p0)) - set(local)) if p1 - p0 > len(local) else None
        plan.append((p0, p1, i, j + 1, torch.tensor(local, device=device),
                     None if ignored is None else torch.tensor(ignored, device=device)))
        i = j + 1
    return plan


def _shift_into(src: torch.Tensor, shift: torch.Tensor, buf: torch.Tensor) -> torch.Tensor:
    """``src - shift`` in the compute dtype, written into the first ``len(src)`` rows of the
    working buffer ``buf`` (``src`` may be those rows themselves)."""
    x = buf[:src.shape[0]]
    if src.dtype == x.dtype:
        return torch.sub(src, shift, out=x)  # shift on the way in: one pass
    return x.copy_(src).sub_(shift)


def row_lse(src: torch.Tensor, buf: torch.Tensor) -> torch.Tensor:
    """Log-sum-exp of each row of ``src`` ``[rows, vocab]`` (any float dtype), computed in
    ``buf``'s dtype after subtracting each row's maximum, with ``buf`` as the workspace
    (its first ``rows`` rows are overwritten; ``src`` may be those rows). Returns ``[rows]``.

    fp32 costs 4 passes over the rows (max, shift into the buffer, exp, sum); bf16/fp16
    rows are converted by a plain copy first, because CPU kernels that mix dtypes in one
    op run an unvectorised casting loop, several times slower than copy + op.
    """
    return row_lse_and_exp(src, buf)[0]


def row_lse_and_exp(src: torch.Tensor, buf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`row_lse` and what it leaves behind: ``(lse [rows], e [rows, vocab], sums [rows])``
    with ``e = exp(src - row max)`` (the first ``rows`` rows of ``buf``) and ``sums`` its row
    sums, so ``softmax = e / sums`` costs one more pass (the fused loss's gradient)."""
    m = src.amax(dim=1, keepdim=True).to(buf.dtype)  # exact in any dtype
    # A row of all -inf would give (-inf) - (-inf) = NaN; keep the shift finite.
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = _shift_into(src, m, buf).exp_()
    sums = e.sum(dim=1)
    return sums.log().add_(m.squeeze(1)), e, sums


def grad_shift(lse: torch.Tensor, grad_total: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """``(coef, shift, fused)`` for :func:`row_grad`: the incoming gradient ``g`` of the
    summed loss in ``lse``'s dtype, and the per-row exponent shift.

    d/dx g * (lse - x[y]) = g * softmax(x) - g * onehot(y). For g > 0 (always, from a loss
    that is minimised) g is folded into the exponent, saving a pass:
    g * exp(x - lse) = exp(x - (lse - log g)). Only while |lse - log g| stays small: its
    rounding error (half an ulp, 2**-19 relative below 64) becomes the relative error of
    the gradient, and at lse ~ 1e4 log g would be rounded away entirely.
    """
    coef = grad_total.detach().to(lse.dtype)
    fused = bool(coef > 0) and bool(torch.isfinite(coef))
    if fused:
        shift = lse - coef.log()
        if bool(shift.abs().max() <= _FUSE_LIMIT):
            return coef, shift, True
    return coef, lse, False


def row_grad(src: torch.Tensor, shift: torch.Tensor, local: torch.Tensor, targets: torch.Tensor,
             coef: torch.Tensor, fused: bool, buf: torch.Tensor, out: torch.Tensor = None) -> torch.Tensor:
    """Gradient of ``coef * sum_i (lse[i] - src[local[i], targets[i]])`` with respect to the
    rows ``src`` ``[rows, vocab]``: ``coef * softmax(row) - coef * onehot(target)`` at the
    rows ``local``, ``coef * softmax(row)`` at the others (the caller zeroes those if they
    are ignored). ``shift`` ``[rows, 1]`` and ``fused`` come from :func:`grad_shift`.

    Computed in ``buf``'s dtype (its first ``rows`` rows are overwritten; ``src`` may be
    those rows). Returns ``out`` when given, fused and of the compute dtype (the exp is
    written straight into it: 2 passes), otherwise the rows of ``buf``, which the caller
    copies or multiplies onwards.
    """
    x = _shift_into(src, shift, buf)
    # The target entries, in the compute dtype before any rounding to the logits' dtype
    # (g * p - g loses everything if p ~ 1 is rounded first).
    at_target = x[local, targets].exp()
    at_target = (at_target if fused else at_target * coef) - coef
    if fused and out is not None and out.dtype == x.dtype:
        torch.exp(x, out=out)  # straight into the gradient
        out[local, targets] = at_target
        return out
    x.exp_()
    if not fused:
        x.mul_(coef)
    x[local, targets] = at_target
    return x


class ChunkedCrossEntropy(torch.autograd.Function):
    """Sum over ``rows`` of ``logsumexp(flat[r]) - flat[r, targets[r]]``, chunk by chunk.

    ``flat`` is the logits viewed as ``[positions, vocab]``; ``rows`` (int64, increasing)
    are the positions that have a target and ``targets`` their label ids. Returns a 0-d
    tensor in the compute dtype. Saved for backward: the logits themselves (no copy),
    ``rows``, ``targets`` and one log-sum-exp per position.

    Chunks are slices of consecutive positions (see :func:`chunk_plan`). Both passes reuse one
    ``[chunk_size, vocab]`` working buffer in the compute dtype: a new allocation per
    chunk would page-fault on every 4 KiB page each time. Each chunk costs few full passes
    over its rows, because on a busy machine every multi-threaded op pays for thread
    synchronisation: forward is :func:`row_lse` (4 passes in fp32), backward
    :func:`row_grad` (``exp(x - (lse - log g))`` straight into the gradient for the usual
    incoming ``g > 0``: 2 passes). bf16/fp16 gradients are computed in fp32 and copied back.
    """

    @staticmethod
    def forward(ctx, flat: torch.Tensor, rows: torch.Tensor, targets: torch.Tensor, chunk_size: int):
        plan = chunk_plan(rows, chunk_size)
        cdt = compute_dtype(flat.dtype)
        width = max((p1 - p0 for p0, p1, *_ in plan), default=1)
        buf = torch.empty(width, flat.shape[1], dtype=cdt, device=flat.device)
        lse = torch.zeros(flat.shape[0], dtype=cdt, device=flat.device)
        total = torch.zeros((), dtype=cdt, device=flat.device)
        for p0, p1, i0, i1, local, _ in plan:
            src = flat[p0:p1]
            target_logit = src[local, targets[i0:i1]].to(cdt)
            chunk_lse = row_lse(src, buf)
            lse[p0:p1] = chunk_lse
            total += (chunk_lse[local] - target_logit).sum()
        ctx.save_for_backward(flat, rows, targets, lse)
        ctx.plan = plan
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_total: torch.Tensor):
        flat, rows, targets, lse = ctx.saved_tensors
        plan = ctx.plan
        # Positions outside every chunk are zeroed here, ignored ones inside a chunk below:
        # no full-size zero fill.
        grad = torch.empty_like(flat)
        outside = torch.ones(flat.shape[0], dtype=torch.bool, device=flat.device)
        for p0, p1, *_ in plan:
            outside[p0:p1] = False
        grad.index_fill_(0, outside.nonzero().squeeze(1), 0)
        if not plan:
            return grad, None, None, None
        width = max(p1 - p0 for p0, p1, *_ in plan)
        buf = torch.empty(width, flat.shape[1], dtype=lse.dtype, device=flat.device)
        coef, shift, fused = grad_shift(lse, grad_total)
        for p0, p1, i0, i1, local, ignored in plan:
            dst = grad[p0:p1]
            x = row_grad(flat[p0:p1], shift[p0:p1].unsqueeze(1), local, targets[i0:i1], coef, fused, buf, out=dst)
            if x is not dst:
                dst.copy_(x)  # casts to bf16/fp16 where needed
            if ignored is not None:
                dst.index_fill_(0, ignored, 0)
        return grad, None, None, None


def num_items(num_items_in_batch: Union[int, float, torch.Tensor, None], fallback: int,
               device: torch.device) -> torch.Tensor:
    """The divisor as a 0-d fp64 tensor (exact for any count); the caller casts it."""
    if num_items_in_batch is None:
        num_items_in_batch = fallback
    if torch.is_tensor(num_items_in_batch):
        if num_items_in_batch.numel() != 1:
            raise ValueError(f"num_items_in_batch must hold one number, got shape {tuple(num_items_in_batch.shape)}")
        return num_items_in_batch.detach().reshape(()).to(device=device, dtype=torch.float64)
    if isinstance(num_items_in_batch, bool) or not isinstance(num_items_in_batch, (int, float)):
        raise TypeError(f"num_items_in_batch must be an int, a tensor or None, got {type(num_items_in_batch).__name__}")
    if num_items_in_batch < 0:
        raise ValueError(f"num_items_in_batch must be >= 0, got {num_items_in_batch}")
    return torch.tensor(float(num_items_in_batch), dtype=torch.float64, device=device)


def shifted_targets(labels: torch.Tensor, vocab: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, targets)`` of the causal shift: the flat positions ``b * seq + t`` (int64,
    increasing) whose next label ``labels[b, t + 1]`` is not ignored, and those labels.
    The last position of each row predicts nothing. With ``vocab``, a target outside
    ``[0, vocab)`` raises ValueError naming it."""
    # Shifted targets laid out like the logits: position t of a row holds label t+1,
    # the last position of each row holds "ignored".
    shifted = torch.full_like(labels, IGNORE_TOKEN_ID)
    shifted[:, :-1] = labels[:, 1:]
    shifted = shifted.reshape(-1)
    rows = (shifted != IGNORE_TOKEN_ID).nonzero().squeeze(1)
    targets = shifted.index_select(0, rows)
    if vocab is not None and targets.numel() and (targets.min() < 0 or targets.max() >= vocab):
        bad = targets[(targets < 0) | (targets >= vocab)][0].item()
        raise ValueError(f"label id {bad} is outside the vocabulary [0, {vocab}) and is not {IGNORE_TOKEN_ID}")
    return rows, targets


def check_labels(labels: Optional[torch.Tensor], shape: torch.Size, what: str, chunk_size: int) -> None:
    """The argument checks both losses share (this one and ``fused_loss``'s): ``labels``
    given and of ``shape`` ``[batch, seq]`` (that of ``what``), ``chunk_size >= 1``.
    Raises ValueError naming the mismatch."""
    if labels is None:
        raise ValueError("labels is None: the loss needs the batch's labels (did the collator drop them?)")
    if labels.shape != shape:
        raise ValueError(f"labels shape {tuple(labels.shape)} does not match {what} {tuple(shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")


def chunked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                       num_items_in_batch: Union[int, torch.Tensor, None] = None,
                       chunk_size: int = DEFAULT_CHUNK_SIZE) -> torch.Tensor:
    """Causal-LM token cross-entropy: sum of ``-log softmax(logits[:, t])[labels[:, t+1]]``
    over non-ignored targets, divided by ``num_items_in_batch`` (``None``: by the number of
    those targets). Returns a 0-d fp32 tensor (fp64 for fp64 logits). See the module
    docstring for the exact semantics and the memory behaviour."""
    if logits.dim() != 3:
        raise ValueError(f"logits must be [batch, seq, vocab], got shape {tuple(logits.shape)}")
    check_labels(labels, logits.shape[:2], "logits", chunk_size)
    if not logits.is_floating_point():
        raise TypeError(f"logits must be floating point, got {logits.dtype}")
    batch, seq, vocab = logits.shape
    labels = labels.to(logits.device)

    rows, targets = shifted_targets(labels, vocab)
    # A view when the logits are contiguous (the usual model output): no copy.
    flat = logits.reshape(batch * seq, vocab)
    total = ChunkedCrossEntropy.apply(flat, rows, targets, chunk_size)
    return normalize(total, num_items_in_batch, rows.numel())


def normalize(total: torch.Tensor, num_items_in_batch: Union[int, torch.Tensor, None], count: int) -> torch.Tensor:
    """``total / num_items_in_batch`` (``None``: / ``count``) in ``total``'s dtype; a finite
    zero that still backpropagates (zeros) when the divisor is 0."""
    denom = num_items(num_items_in_batch, count, total.device).to(total.dtype)
    safe = torch.where(denom > 0, denom, torch.ones_like(denom))
    return torch.where(denom > 0, total / safe, total * 0.0)


