"""Training loss without the logits tensor: the output layer and the cross-entropy fused.

    from smolsft.losses.fused import FusedLossTrainer
    trainer = FusedLossTrainer(model=model, args=training_args, ...)   # instead of Trainer
    loss = fused_linear_cross_entropy(hidden, weight, labels, num_items_in_batch=None)

Why
---
Part 5's chunked loss (``loss_functions``) keeps the loss's own memory small, but the model
has already built the logits ``[batch, seq, vocab]`` and autograd later builds their
gradient: at 2,048 tokens x 49,152 vocab that is 400 MB each in fp32 per sample. Here the
model stops at its last hidden states ``h`` ``[batch, seq, hidden]``; only positions whose
shifted label is a target are kept (chat data masks prompts, system turns and padding), and
``logsumexp(h W^T) - (h W^T)[target]`` is computed over those rows in chunks of
``chunk_size`` rows. While a chunk's logits ``h_c W^T`` exist, forward also turns their
gradient into the gradients of ``h_c`` and of ``W`` (the output weight), so backward only
rescales them (for fp16 weights backward recomputes the chunk logits instead:
:class:`FusedLinearCrossEntropy` says why). Extra memory: one ``[chunk_size, vocab]`` fp32
working buffer (96 MiB at 512 x 49,152), plus one ``[chunk_size, vocab]`` copy in the
weight's dtype for bf16/fp16 weights, plus ``W``'s gradient in fp32 (113 MB in SmolLM2),
held from forward to backward.

What is computed
----------------
Exactly what ``loss_functions.cross_entropy_loss`` computes on ``logits = h W^T`` with the
same labels (same causal shift, -100 ignored, sum over targets divided by
``num_items_in_batch``, or by the number of targets when None; a finite 0 with zero
gradients when there is no target), with the same target selection and normalisation
(``shifted_targets``, ``normalize``), the log-sum-exp of ``row_lse`` (``row_lse_and_exp``,
whose shifted exponentials forward turns into the softmax), and for fp16 weights
``grad_shift`` and ``row_grad`` in backward. The chunk logits ``h_c W^T`` are
computed in the weight's dtype, as the model's output layer computes them, then the
log-sum-exp and the logits' gradient in fp32 (fp64 for fp64); the gradient of ``h`` comes
back in ``h``'s dtype, the gradient of ``W`` is summed over chunks in fp32 and returned in
``W``'s dtype. In SmolLM2 ``W`` is the input embedding (tied weights): autograd adds this
gradient to the embedding's own once, because the model's output layer itself is given
no position (``logits_to_keep`` empty) and so adds nothing.

With the HF Trainer (transformers 5.19)
---------------------------------------
:class:`FusedLossTrainer` overrides ``compute_loss`` only to call the model (wrapped by
DeepSpeed or DDP as the Trainer prepared it) with ``logits_to_keep`` = no position and
``output_hidden_states=True``; ``hidden_states[-1]`` of a causal LM in transformers 5 is the
final, normalised hidden state (``last_hidden_state``), the input of the output layer. The
rest is ``Trainer.compute_loss`` with this loss as its ``compute_loss_func``, so labels,
``num_items_in_batch`` (all micro-batches of the accumulation window, all ranks), the
multiplication by the number of processes and the "already scaled for gradient
accumulation" rule are the ones ``loss_functions`` documents for the logits path. The
collator's ``position_ids`` (``--padding_free``) go to the model untouched; gradient
checkpointing is inside the decoder and unaffected. Evaluation through this trainer gets
empty logits (this project does not evaluate in the Trainer).

Models whose output layer is not a plain bias-free linear map (logit soft-capping or
scaling in the config) are refused with a ValueError: use ``--loss logits`` for them.
"""
from __future__ import annotations

from typing import Any, Optional, Union

import torch
from transformers import Trainer

from smolsft.losses.chunked import (DEFAULT_CHUNK_SIZE, check_labels, compute_dtype, grad_shift, normalize, num_items,
                                    row_grad, row_lse_and_exp, shifted_targets)


class FusedLinearCrossEntropy(torch.autograd.Function):
    """Sum over rows ``i`` of ``logsumexp(hidden[i] @ weight.T) - hidden[i] @ weight[targets[i]]``.

    ``hidden`` ``[n, d]`` are the hidden states of the target positions only, ``weight``
    ``[vocab, d]`` the output layer's weight (same dtype), ``targets`` ``[n]`` int64 ids.
    Returns a 0-d tensor in the compute dtype (fp32, fp64 for fp64).

    ``grad_scale`` (a 0-d tensor in the compute dtype, or None when no gradient is wanted):
    for fp32 and bf16 weights, forward also computes the gradients of ``grad_scale * sum``
    with respect to ``hidden`` (if ``want_h``) and ``weight`` (if ``want_w``) while each
    chunk's logits are at hand, so backward does not compute the logits again; backward
    multiplies them by ``grad_total / grad_scale`` unless that is exactly 1 (the caller
    passes the ``1 / num_items_in_batch`` it divides by, which is what reaches backward).
    Saved for backward: those gradients (the weight's in fp32: 113 MB in SmolLM2) and
    ``grad_scale``. fp16 weights: the logits' gradient is rounded to fp16 before the
    products, and without the loss scale (which only backward receives) its small entries
    would underflow, so forward saves ``hidden``, ``weight``, ``targets`` and one
    log-sum-exp per row and backward recomputes each chunk's logits with the incoming
    gradient folded in first.
    """

    @staticmethod
    def _logits(hidden, weight, i0, i1, buf):
        """``hidden[i0:i1] @ weight.T`` in the weight's dtype, then in ``buf``'s dtype."""
        x = buf[:i1 - i0]
        if weight.dtype == buf.dtype:
            return torch.mm(hidden[i0:i1], weight.t(), out=x)
        return x.copy_(hidden[i0:i1] @ weight.t())

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_size: int,
                grad_scale: Optional[torch.Tensor], want_h: bool, want_w: bool):
        n = hidden.shape[0]
        cdt = compute_dtype(weight.dtype)
        # fp16: a logits' gradient of p / num_items rounded to fp16 before the loss scale
        # is applied would underflow (that is what loss scaling is for): backward computes it.
        early = grad_scale is not None and weight.dtype != torch.float16
        want_h, want_w = early and want_h, early and want_w
        if not early:
            lse_all = torch.empty(n, dtype=cdt, device=hidden.device)
        total = torch.zeros((), dtype=cdt, device=hidden.device)
        grad_h = torch.empty_like(hidden) if want_h else None
        # The weight's gradient summed over chunks in the compute dtype; the first chunk
        # writes it (no zero-fill pass over vocab x hidden).
        grad_w = torch.empty(weight.shape, dtype=cdt, device=weight.device) if want_w else None
        if want_w and n == 0:
            grad_w.zero_()
        buf = torch.empty(min(chunk_size, max(n, 1)), weight.shape[0], dtype=cdt, device=hidden.device)
        # Under the Trainer's autocast (--bf16 without DeepSpeed) mm would recast to bf16 and
        # refuse the fp32 buffer; the dtypes here are chosen explicitly instead.
        with torch.autocast(hidden.device.type, enabled=False):
            for i0 in range(0, n, chunk_size):
                i1 = min(i0 + chunk_size, n)
                x = FusedLinearCrossEntropy._logits(hidden, weight, i0, i1, buf)
                local = torch.arange(i1 - i0, device=x.device)
                target_logit = x[local, targets[i0:i1]]  # a copy (advanced indexing)
                lse, e, sums = row_lse_and_exp(x, buf)  # e = exp(logit - row max), in place of x
                total += (lse - target_logit).sum()
                if not early:
                    lse_all[i0:i1] = lse
                    continue
                # d/dx (lse - x[y]) = softmax(x) - onehot(y), times grad_scale; the target entry
                # from the unrounded target logit (p - 1 loses everything if p ~ 1 is rounded first).
                g = e.mul_((grad_scale / sums).unsqueeze(1))
                g[local, targets[i0:i1]] = ((target_logit - lse).exp() - 1) * grad_scale
                if weight.dtype != cdt:
                    g = g.to(weight.dtype)  # the logits' gradient in the layer's dtype, as autograd would
                if want_h:
                    torch.mm(g, weight, out=grad_h[i0:i1])
                if want_w:
                    if g.dtype == cdt:  # beta=0: the first chunk overwrites the uninitialised memory
                        grad_w.addmm_(g.t(), hidden[i0:i1], beta=0 if i0 == 0 else 1)
                    elif i0 == 0:
                        grad_w.copy_(g.t() @ hidden[i0:i1])
                    else:
                        grad_w += g.t() @ hidden[i0:i1]
        ctx.early, ctx.chunk_size, ctx.weight_dtype = early, chunk_size, weight.dtype
        if early:
            ctx.save_for_backward(grad_h, grad_w, grad_scale)
        else:
            ctx.save_for_backward(hidden, weight, targets, lse_all)
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_total: torch.Tensor):
        if not ctx.early:
            return FusedLinearCrossEntropy._late_backward(ctx, grad_total)
        grad_h, grad_w, grad_scale = ctx.saved_tensors
        ratio = grad_total.detach().to(grad_scale.dtype) / grad_scale
        if not bool(ratio == 1):  # e.g. a loss multiplied by the number of processes
            # Out of place (the saved gradients serve a second backward) and in the compute
            # dtype (a ratio of 1/3 rounded to bf16 would bias the gradient by 0.2 %).
            grad_h = None if grad_h is None else (grad_h.to(ratio.dtype) * ratio).to(grad_h.dtype)
            grad_w = None if grad_w is None else grad_w * ratio
        grad_w = None if grad_w is None else grad_w.to(ctx.weight_dtype)
        return grad_h, grad_w, None, None, None, None, None

    @staticmethod
    def _late_backward(ctx, grad_total: torch.Tensor):
        """fp16 weights: recompute each chunk's logits and take their gradient with the
        incoming (loss-scaled) gradient folded in before any rounding to fp16."""
        hidden, weight, targets, lse = ctx.saved_tensors
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        n, chunk_size = hidden.shape[0], ctx.chunk_size
        grad_h = torch.empty_like(hidden) if want_h else None
        grad_w = torch.empty(weight.shape, dtype=lse.dtype, device=weight.device) if want_w else None
        if n == 0:  # no target: grad_h is [0, d], grad_w zeros (grad_shift needs a row)
            return grad_h, None if grad_w is None else grad_w.zero_().to(weight.dtype), None, None, None, None, None
        cdt = lse.dtype
        buf = torch.empty(min(chunk_size, n), weight.shape[0], dtype=cdt, device=hidden.device)
        coef, shift, fused = grad_shift(lse, grad_total)
        with torch.autocast(hidden.device.type, enabled=False):
            for i0 in range(0, n, chunk_size):
                i1 = min(i0 + chunk_size, n)
                x = FusedLinearCrossEntropy._logits(hidden, weight, i0, i1, buf)
                local = torch.arange(i1 - i0, device=x.device)
                g = row_grad(x, shift[i0:i1].unsqueeze(1), local, targets[i0:i1], coef, fused, buf)
                if weight.dtype != cdt:
                    g = g.to(weight.dtype)
                if want_h:
                    torch.mm(g, weight, out=grad_h[i0:i1])
                if want_w:
                    if i0 == 0:
                        grad_w.copy_(g.t() @ hidden[i0:i1])
                    else:
                        grad_w += g.t() @ hidden[i0:i1]
        return grad_h, None if grad_w is None else grad_w.to(weight.dtype), None, None, None, None, None


def fused_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                               num_items_in_batch: Union[int, torch.Tensor, None] = None,
                               chunk_size: int = DEFAULT_CHUNK_SIZE) -> torch.Tensor:
    """Causal-LM token cross-entropy of the logits ``hidden @ weight.T`` without building them.

    ``hidden`` ``[batch, seq, d]`` (the last hidden states), ``weight`` ``[vocab, d]``,
    ``labels`` ``[batch, seq]`` with -100 where nothing is trained. Returns the same 0-d
    fp32 (fp64 for fp64) value as ``loss_functions.cross_entropy_loss(hidden @ weight.T,
    labels, num_items_in_batch)``. Raises ValueError for mismatched shapes or a label id
    outside ``[0, vocab)``.
    """
    if hidden.dim() != 3:
        raise ValueError(f"hidden states must be [batch, seq, hidden], got shape {tuple(hidden.shape)}")
    check_labels(labels, hidden.shape[:2], "hidden states", chunk_size)
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[2]:
        raise ValueError(f"output weight {tuple(weight.shape)} does not match hidden size {hidden.shape[2]}")
    rows, targets = shifted_targets(labels.to(hidden.device), weight.shape[0])
    # Only the target rows go through the output layer (a copy of n x d, small).
    picked = hidden.reshape(-1, hidden.shape[2]).index_select(0, rows).to(weight.dtype)
    want_h = picked.requires_grad and torch.is_grad_enabled()
    want_w = weight.requires_grad and torch.is_grad_enabled()
    grad_scale = None
    if want_h or want_w:
        # What backward will receive from the division below: 1 / num_items_in_batch.
        denom = num_items(num_items_in_batch, rows.numel(), hidden.device).to(compute_dtype(weight.dtype))
        one = torch.ones((), dtype=denom.dtype, device=denom.device)
        grad_scale = torch.where(denom > 0, one / torch.where(denom > 0, denom, one), one)
    total = FusedLinearCrossEntropy.apply(picked, weight, targets, chunk_size, grad_scale, want_h, want_w)
    return normalize(total, num_items_in_batch, rows.numel())


def output_weight(model: torch.nn.Module) -> torch.nn.Parameter:
    """The output layer's weight ``[vocab, hidden]`` of a causal LM (the embedding itself
    when tied). Raises ValueError when the logits are more than ``h @ W.T`` (a bias,
    soft-capping or scaling), which this loss does not reproduce."""
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear) or head.bias is not None:
        raise ValueError(f"{type(model).__name__}: the output layer is not a bias-free Linear; use --loss logits")
    cfg = getattr(model, "config", None)
    for name, neutral in (("final_logit_softcapping", None), ("logit_scale", None), ("logits_scaling", 1.0)):
        value = getattr(cfg, name, neutral)
        if value is not None and value != neutral:
            raise ValueError(f"{type(model).__name__}: config.{name}={value} changes the logits; use --loss logits")
    return head.weight


def pack_right_padded(inputs: dict) -> Optional[dict]:
    """A right-padded batch (``input_ids``, ``labels``, ``attention_mask`` ``[B, L]``, each
    sample's first label -100) as one row of its ``N`` real tokens: ``input_ids`` and
    ``labels`` ``[1, N]``, ``position_ids`` ``[1, N]`` restarting at 0 for each sample, no
    attention mask, ``use_cache=False`` (transformers then builds a mask that keeps the samples
    apart from the restarting positions; with a cache it does not). The first-label rule
    keeps a sample's last token from being trained on the next sample's first. None when
    the batch is not of that form (position ids already given, left padding, a first label
    that is a target), which then runs as it is."""
    am, labels = inputs.get("attention_mask"), inputs.get("labels")
    if am is None or labels is None or "position_ids" in inputs or set(inputs) - {"input_ids", "labels",
                                                                                    "attention_mask"}:
        return None
    keep = am.bool()
    lengths = keep.sum(1)
    width = torch.arange(keep.shape[1], device=keep.device)
    if not torch.equal(keep, width[None, :] < lengths[:, None]) or bool((labels[:, 0] != -100).any()):
        return None
    return {"input_ids": inputs["input_ids"][keep][None], "labels": labels[keep][None],
            "position_ids": (width[None, :].expand_as(keep))[keep][None], "use_cache": False}


class FusedLossTrainer(Trainer):
    """``Trainer`` whose training loss is :func:`fused_linear_cross_entropy` on the model's
    last hidden states and output weight (see the module docstring). Takes the Trainer's
    arguments (not ``compute_loss_func``), ``chunk_size`` and ``pack_batches``: run each
    right-padded training batch as one row of its real tokens (:func:`pack_right_padded`),
    so no layer computes padding; only for an attention that keeps packed samples apart
    and gains from it (``cpu_attention``: the same loss and gradients, tests/losses/test_fused.py)."""

    def __init__(self, *args, chunk_size: int = DEFAULT_CHUNK_SIZE, pack_batches: bool = False, **kwargs):
        if "compute_loss_func" in kwargs:
            raise TypeError("FusedLossTrainer computes its own loss; do not pass compute_loss_func")
        super().__init__(*args, compute_loss_func=self._loss_from_hidden, **kwargs)
        self.chunk_size, self.pack_batches = chunk_size, pack_batches
        output_weight(self.model)  # refuse an unsupported output layer before training starts

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.pack_batches and model.training and not return_outputs:
            inputs = pack_right_padded(inputs) or inputs
        device = inputs["input_ids"].device if "input_ids" in inputs else None
        # No position through the output layer; the final hidden states come back instead.
        inputs = {**inputs, "logits_to_keep": torch.zeros(0, dtype=torch.long, device=device),
                  "output_hidden_states": True}
        return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                    num_items_in_batch=num_items_in_batch)

    def _loss_from_hidden(self, outputs: Any, labels: Optional[torch.Tensor],
                          num_items_in_batch: Union[int, torch.Tensor, None] = None) -> torch.Tensor:
        # self.model is the bare model under any wrapper; its weight is the one in use
        # (DeepSpeed casts the module's parameters in place for bf16/fp16). The layer itself
        # was checked once, in __init__.
        return fused_linear_cross_entropy(outputs.hidden_states[-1], self.model.get_output_embeddings().weight,
                                          labels, num_items_in_batch, self.chunk_size)
