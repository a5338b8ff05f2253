"""Part 5: token-level causal-LM cross-entropy from logits, exact and memory-lean.

    from loss_functions import compute_loss_from_logits
    Trainer(..., compute_loss_func=compute_loss_from_logits)

    loss = cross_entropy_loss(logits, labels, num_items_in_batch=None)

What is computed
----------------
``logits`` is ``[batch, seq, vocab]`` (fp32, bf16, fp16 or fp64) and ``labels`` is
``[batch, seq]`` with ``-100`` (``chat_format.IGNORE_TOKEN_ID``) where nothing is trained.
Position ``t`` predicts the label at ``t + 1`` (the causal shift), so the last position
of every row predicts nothing. With ``lse = log(sum_v exp(logits[b, t, v]))``::

    loss = sum over valid (b, t) of  (lse[b, t] - logits[b, t, labels[b, t + 1]])
           / num_items_in_batch

``-log softmax(x)[y] = logsumexp(x) - x[y]``, and the log-sum-exp is taken after
subtracting each row's maximum, so logits of any size (1e4 and beyond) do not overflow.
``num_items_in_batch=None`` divides by the number of valid shifted targets in this
batch (the plain token mean). When nothing is valid, or the count is 0, the result is
a finite 0 whose gradient is all zeros (never NaN). The arithmetic runs in fp32 for
fp32/bf16/fp16 logits (fp64 stays fp64, which ``gradcheck`` needs); the loss is fp32
and the gradient comes back in the logits' own dtype.

How the HF Trainer (transformers 5.19) uses it
----------------------------------------------
- ``Trainer.compute_loss`` pops ``labels`` from the batch when ``compute_loss_func`` is
  set, runs the model without them (so the model computes no loss of its own), then
  calls ``compute_loss_func(outputs, labels, num_items_in_batch=num_items_in_batch)``.
- ``num_items_in_batch`` is counted once per optimizer step (``get_batch_samples``):
  ``ne(-100).sum()`` over *all* micro-batches of the gradient-accumulation window, and,
  with ``average_tokens_across_devices`` (default True), summed over all ranks. It is a
  tensor. For causal-LM models 5.x counts ``labels[..., 1:]``, our shifted targets;
  transformers 4.x counted all labels, which equals the shifted count only when the
  first label of each row is -100. The training features keep that true as well, so
  the count is right under both: ``sft_data.unpadded_features`` sets position 0 of
  every sample to -100, and ``DataCollatorWithFlattening(separator_id=-100)`` puts -100
  at each packed sample's first label.
- Because ``compute_loss_func`` is set, ``training_step`` treats the loss as already
  scaled for gradient accumulation (its ``loss_is_scaled_for_ga`` rule) and does *not*
  divide it by the number of accumulation steps; under DeepSpeed it also passes
  ``scale_wrt_gas=False``. So each micro-batch contributes (its token-loss sum) /
  (token count of the whole accumulated batch) and the accumulated gradient is exactly
  the gradient of the mean token loss of the big batch, however tokens are spread.
- With ``average_tokens_across_devices`` the Trainer multiplies the returned loss by the
  number of processes, which cancels the averaging of gradients across ranks; the
  logged loss (sum over micro-batches, averaged over ranks) is then the mean token loss.
- ``model_accepts_loss_kwargs`` (True for Llama: its ``forward`` takes ``**kwargs``)
  only decides whether the count is also passed into ``model(...)``; with the labels
  popped the model ignores it.

Why a custom autograd function
------------------------------
The plain form ``log_softmax(logits.float())`` keeps a ``[tokens, vocab]`` fp32 tensor
for backward and builds another one, plus its gradient, in backward: at 2,048 tokens x
49,152 vocab each copy is 400 MB. :class:`ChunkedCrossEntropy` walks the valid
positions in chunks of ``chunk_size`` rows: forward keeps only one number per position
(its log-sum-exp); backward re-reads the chunk's logits, recomputes
``softmax = exp(x - lse)``, subtracts 1 at the target, scales, and writes the chunk into
the gradient. Chunks are slices of consecutive positions that skip ignored spans longer
than 32 positions (shorter gaps are computed and discarded: slicing is much cheaper
than gathering rows on CPU), and the gradient rows of ignored positions are set to zero
without a full-size zero fill. Extra memory is one
``[chunk_size, vocab]`` fp32 buffer reused by every chunk (96 MiB at the default 512
rows x 49,152). ``benchmarks/loss.py`` measures both forms; its figures are in
docs/performance.md.

The per-chunk math (:func:`row_lse`, :func:`grad_shift`, :func:`row_grad`) is shared with
``fused_loss.py``, which applies it to logits it computes chunk by chunk from the hidden
states (training without the full logits tensor, ``train_hw_parallel.py --loss fused``).
"""
from __future__ import annotations

from typing import Any, Optional, Union

import torch

from chat_format import IGNORE_TOKEN_ID

# Rows (positions) per chunk: a 96 MiB fp32 buffer at vocab 49,152; fewer, larger chunks
# keep the time steady on a loaded CPU (benchmarks/loss.py --chunk_sizes; docs/performance.md).
DEFAULT_CHUNK_SIZE = 512
# Gaps of up to this many ignored positions are computed inside a chunk rather than
# starting a new one (see _plan).
_MAX_GAP = 32
# Largest |lse - log g| for which backward folds the incoming gradient g into the exponent.
_FUSE_LIMIT = 64.0


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for half-precision (and fp32) logits; fp64 stays fp64 (gradcheck)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _plan(rows: torch.Tensor, chunk_size: int) -> list:
    """Cut the valid rows into chunks that are slices of consecutive positions.

    Returns ``(p0, p1, i0, i1, local, ignored)`` per chunk: positions ``[p0, p1)`` (at most
    ``chunk_size``) hold the valid rows ``rows[i0:i1]``, at offsets ``local`` from ``p0``;
    ``ignored`` are the offsets of the ignored positions inside the slice (or None). A
    chunk ends at ``chunk_size`` positions or at a gap of more than ``_MAX_GAP`` ignored
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
        while j + 1 < len(host) and host[j + 1] - p0 < chunk_size and host[j + 1] - host[j] <= _MAX_GAP + 1:
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

    Chunks are slices of consecutive positions (see :func:`_plan`). Both passes reuse one
    ``[chunk_size, vocab]`` working buffer in the compute dtype: a new allocation per
    chunk would page-fault on every 4 KiB page each time. Each chunk costs few full passes
    over its rows, because on a busy machine every multi-threaded op pays for thread
    synchronisation: forward is :func:`row_lse` (4 passes in fp32), backward
    :func:`row_grad` (``exp(x - (lse - log g))`` straight into the gradient for the usual
    incoming ``g > 0``: 2 passes). bf16/fp16 gradients are computed in fp32 and copied back.
    """

    @staticmethod
    def forward(ctx, flat: torch.Tensor, rows: torch.Tensor, targets: torch.Tensor, chunk_size: int):
        plan = _plan(rows, chunk_size)
        cdt = _compute_dtype(flat.dtype)
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


def _num_items(num_items_in_batch: Union[int, float, torch.Tensor, None], fallback: int,
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


def _shifted_targets(labels: torch.Tensor, vocab: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
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


def _check_labels(labels: Optional[torch.Tensor], shape: torch.Size, what: str, chunk_size: int) -> None:
    """The argument checks both losses share (this one and ``fused_loss``'s): ``labels``
    given and of ``shape`` ``[batch, seq]`` (that of ``what``), ``chunk_size >= 1``.
    Raises ValueError naming the mismatch."""
    if labels is None:
        raise ValueError("labels is None: the loss needs the batch's labels (did the collator drop them?)")
    if labels.shape != shape:
        raise ValueError(f"labels shape {tuple(labels.shape)} does not match {what} {tuple(shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")


def cross_entropy_loss(logits: torch.Tensor, labels: torch.Tensor,
                       num_items_in_batch: Union[int, torch.Tensor, None] = None,
                       chunk_size: int = DEFAULT_CHUNK_SIZE) -> torch.Tensor:
    """Causal-LM token cross-entropy: sum of ``-log softmax(logits[:, t])[labels[:, t+1]]``
    over non-ignored targets, divided by ``num_items_in_batch`` (``None``: by the number of
    those targets). Returns a 0-d fp32 tensor (fp64 for fp64 logits). See the module
    docstring for the exact semantics and the memory behaviour."""
    if logits.dim() != 3:
        raise ValueError(f"logits must be [batch, seq, vocab], got shape {tuple(logits.shape)}")
    _check_labels(labels, logits.shape[:2], "logits", chunk_size)
    if not logits.is_floating_point():
        raise TypeError(f"logits must be floating point, got {logits.dtype}")
    batch, seq, vocab = logits.shape
    labels = labels.to(logits.device)

    rows, targets = _shifted_targets(labels, vocab)
    # A view when the logits are contiguous (the usual model output): no copy.
    flat = logits.reshape(batch * seq, vocab)
    total = ChunkedCrossEntropy.apply(flat, rows, targets, chunk_size)
    return _normalize(total, num_items_in_batch, rows.numel())


def _normalize(total: torch.Tensor, num_items_in_batch: Union[int, torch.Tensor, None], count: int) -> torch.Tensor:
    """``total / num_items_in_batch`` (``None``: / ``count``) in ``total``'s dtype; a finite
    zero that still backpropagates (zeros) when the divisor is 0."""
    denom = _num_items(num_items_in_batch, count, total.device).to(total.dtype)
    safe = torch.where(denom > 0, denom, torch.ones_like(denom))
    return torch.where(denom > 0, total / safe, total * 0.0)


def _logits_of(outputs: Any) -> torch.Tensor:
    """The logits of a model output: ``.logits`` (ModelOutput, SimpleNamespace),
    ``["logits"]`` (dict), or the tensor itself."""
    if torch.is_tensor(outputs):
        return outputs
    logits = getattr(outputs, "logits", None)
    if logits is None and isinstance(outputs, dict):
        logits = outputs.get("logits")
    if logits is None:
        raise TypeError(f"model output {type(outputs).__name__} has no logits")
    return logits


def compute_loss_from_logits(outputs: Any, labels: torch.Tensor,
                             num_items_in_batch: Union[int, torch.Tensor, None] = None) -> torch.Tensor:
    """What ``Trainer(compute_loss_func=...)`` calls: ``cross_entropy_loss`` on
    ``outputs.logits`` with the batch's ``labels`` and the Trainer's token count."""
    return cross_entropy_loss(_logits_of(outputs), labels, num_items_in_batch)
