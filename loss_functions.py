"""Part 5: token-level causal-LM cross-entropy from logits, exact and memory-lean.

    from loss_functions import compute_loss_from_logits
    Trainer(..., compute_loss_func=compute_loss_from_logits)

    loss = cross_entropy_loss(logits, labels, num_items_in_batch=None)

What is computed
----------------
``logits`` is ``[batch, seq, vocab]`` (fp32, bf16, fp16 or fp64) and ``labels`` is
``[batch, seq]`` with ``-100`` (``utils.IGNORE_TOKEN_ID``) where nothing is trained.
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

Memory
------
The plain form ``log_softmax(logits.float())`` keeps a ``[tokens, vocab]`` fp32 tensor for
backward (400 MB at 2,048 tokens x 49,152 vocab) and builds another in backward. This
solution uses the chunked kernel of :mod:`smolsft.losses.chunked` instead (one log-sum-exp
per position; one reused ``[chunk_size, vocab]`` buffer), the kernel the default fused
training loss shares. A plain solution (log-softmax, gather, mask, sum / count) passes the
same check and trains with every ``--loss``; how the Trainer calls this function:
docs/design.md#gradient-accumulation-is-exact-parts-5-6.
"""
from __future__ import annotations

from typing import Any, Union

import torch

from smolsft.losses.chunked import DEFAULT_CHUNK_SIZE, chunked_cross_entropy


def cross_entropy_loss(logits: torch.Tensor, labels: torch.Tensor,
                       num_items_in_batch: Union[int, torch.Tensor, None] = None,
                       chunk_size: int = DEFAULT_CHUNK_SIZE) -> torch.Tensor:
    """Causal-LM token cross-entropy: sum of ``-log softmax(logits[:, t])[labels[:, t+1]]``
    over non-ignored targets, divided by ``num_items_in_batch`` (``None``: by the number of
    those targets). ``logits`` ``[batch, seq, vocab]`` floating point, ``labels``
    ``[batch, seq]`` integer. Returns a 0-d fp32 tensor (fp64 for fp64 logits). Raises
    ValueError for mismatched shapes, a label outside the vocabulary or ``chunk_size < 1``,
    TypeError for integer logits."""
    return chunked_cross_entropy(logits, labels, num_items_in_batch, chunk_size)


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
