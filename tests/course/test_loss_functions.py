"""Part 5 loss: values and gradients against a float64 reference written here and against
transformers' own causal-LM loss, gradcheck of the chunked function, chunk boundaries
that cut through sequences, ignored/all-ignored labels, huge logits, dtypes, errors,
what the autograd function keeps for backward, and that no library cross-entropy is
used. Random cases are small so the whole file runs in seconds."""
from __future__ import annotations

import io
import math
import subprocess
import sys
import tokenize
from types import SimpleNamespace

import pytest
import torch
from transformers.loss.loss_utils import ForCausalLMLoss
from transformers.modeling_outputs import CausalLMOutputWithPast

from conftest import REPO
from loss_functions import compute_loss_from_logits, cross_entropy_loss
from smolsft.losses.chunked import ChunkedCrossEntropy
from smolsft.chat.format import IGNORE_TOKEN_ID as IGNORE


def reference(logits: torch.Tensor, labels: torch.Tensor, num_items=None):
    """(loss, d loss / d logits) in float64 by the direct formula: per shifted valid
    target, logsumexp(row) - row[target]; summed; divided by num_items (or the count)."""
    x = logits.detach().double().requires_grad_()
    total = x.new_zeros(())
    count = 0
    for b in range(x.shape[0]):
        for t in range(x.shape[1] - 1):
            y = int(labels[b, t + 1])
            if y != IGNORE:
                total = total + torch.logsumexp(x[b, t], 0) - x[b, t, y]
                count += 1
    divisor = count if num_items is None else int(num_items)
    loss = total / divisor if divisor > 0 else total * 0.0
    loss.backward()
    return loss.detach(), x.grad


def random_case(seed: int, batch=3, seq=9, vocab=23, scale=3.0, ignore_frac=0.35, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(batch, seq, vocab, generator=g) * scale).to(dtype)
    labels = torch.randint(0, vocab, (batch, seq), generator=g)
    labels[torch.rand(batch, seq, generator=g) < ignore_frac] = IGNORE
    return logits, labels


def loss_and_grad(fn, logits, *args, **kwargs):
    x = logits.clone().requires_grad_()
    loss = fn(x, *args, **kwargs)
    loss.backward()
    return loss.detach(), x.grad


def test_worked_example_by_hand():
    """The issue's example: 4 valid shifted targets, each -log softmax computed with math."""
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5)
    labels = torch.tensor([[0, 2, 4], [1, 3, 0]])
    rows = logits.tolist()
    terms = []
    for b, t, y in [(0, 0, 2), (0, 1, 4), (1, 0, 3), (1, 1, 0)]:  # logits[b, t] predicts labels[b, t+1]
        row = rows[b][t]
        terms.append(math.log(sum(math.exp(v) for v in row)) - row[y])
    by_hand = sum(terms) / 4
    loss = cross_entropy_loss(logits, labels, num_items_in_batch=4)
    assert loss.dtype == torch.float32
    assert float(loss) == pytest.approx(by_hand, rel=1e-6, abs=1e-7)
    # num_items None divides by the same 4 valid targets here.
    assert float(cross_entropy_loss(logits, labels)) == pytest.approx(by_hand, rel=1e-6)
    # Ignoring labels[0, 2] and labels[1, 1] leaves the targets of (0, 0) and (1, 1): terms 0
    # and 3; a global count of 8 (a gradient-accumulation share) divides their sum by 8.
    masked = torch.tensor([[0, 2, IGNORE], [1, IGNORE, 0]])
    assert float(cross_entropy_loss(logits, masked, 8)) == pytest.approx((terms[0] + terms[3]) / 8, rel=1e-6)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("num_items", [None, 40, "tensor"])
@pytest.mark.parametrize("chunk_size", [1, 4, 512])
def test_fp32_matches_float64_reference_and_transformers(seed, num_items, chunk_size):
    logits, labels = random_case(seed)
    n = torch.tensor(40) if num_items == "tensor" else num_items
    loss, grad = loss_and_grad(cross_entropy_loss, logits, labels, n, chunk_size=chunk_size)
    ref_loss, ref_grad = reference(logits, labels, n)
    assert loss.dtype == torch.float32 and grad.dtype == torch.float32
    torch.testing.assert_close(loss.double(), ref_loss, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(grad.double(), ref_grad, atol=1e-7, rtol=1e-4)
    hf_loss, hf_grad = loss_and_grad(ForCausalLMLoss, logits, labels, logits.shape[-1], num_items_in_batch=n)
    torch.testing.assert_close(loss, hf_loss, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(grad, hf_grad, atol=1e-7, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("num_items", [None, 31])
@pytest.mark.parametrize("chunk_size", [2, 7, 512])
def test_half_precision_matches_reference_and_transformers(dtype, num_items, chunk_size):
    """Loss in fp32 from the exact half-precision inputs; gradient in the logits' dtype,
    equal to the reference rounded to that dtype (transformers rounds it the same way)."""
    logits, labels = random_case(11, batch=4, seq=12, vocab=37, dtype=dtype)
    loss, grad = loss_and_grad(cross_entropy_loss, logits, labels, num_items, chunk_size=chunk_size)
    ref_loss, ref_grad = reference(logits, labels, num_items)
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    torch.testing.assert_close(loss.double(), ref_loss, atol=1e-6, rtol=1e-5)
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(grad.double(), ref_grad, atol=1e-6, rtol=eps)
    hf_loss, hf_grad = loss_and_grad(ForCausalLMLoss, logits, labels, logits.shape[-1], num_items_in_batch=num_items)
    torch.testing.assert_close(loss, hf_loss, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(grad.double(), hf_grad.double(), atol=1e-6, rtol=eps)


def test_gradcheck_chunked_function_float64():
    """Numerical vs analytic gradient of the autograd function itself, with chunks of 3
    rows over 5 non-contiguous valid rows (both load paths), and of the full loss."""
    g = torch.Generator().manual_seed(3)
    flat = torch.randn(8, 6, dtype=torch.float64, generator=g, requires_grad=True)
    rows = torch.tensor([0, 1, 2, 4, 7])
    targets = torch.tensor([5, 0, 3, 3, 1])
    assert torch.autograd.gradcheck(lambda f: ChunkedCrossEntropy.apply(f, rows, targets, 3), (flat,))
    logits = torch.randn(2, 5, 7, dtype=torch.float64, generator=g, requires_grad=True)
    labels = torch.tensor([[1, IGNORE, 3, 6, 0], [IGNORE, 2, IGNORE, 4, 5]])
    for n in (None, 9):
        assert torch.autograd.gradcheck(lambda x: cross_entropy_loss(x, labels, n, chunk_size=2), (logits,))


@pytest.mark.parametrize("pattern", ["all_valid", "scattered", "row_starts_and_ends"])
def test_chunk_boundaries_cut_through_sequences(pattern):
    """Chunk sizes that do not divide the sequence length give the same loss and gradient
    as one chunk and as the reference (chunks straddle two sequences)."""
    logits, labels = random_case(21, batch=3, seq=7, vocab=11, ignore_frac=0.0)
    if pattern == "scattered":
        labels[0, 2] = labels[1, 1] = labels[1, 5] = labels[2, 3] = IGNORE
    elif pattern == "row_starts_and_ends":
        labels[:, :2] = IGNORE
        labels[1, -2:] = IGNORE
    ref_loss, ref_grad = reference(logits, labels)
    for chunk in (1, 2, 4, 5, 6, 13, 17, 1000):
        loss, grad = loss_and_grad(cross_entropy_loss, logits, labels, chunk_size=chunk)
        torch.testing.assert_close(loss.double(), ref_loss, atol=1e-6, rtol=1e-5, msg=f"chunk {chunk}")
        torch.testing.assert_close(grad.double(), ref_grad, atol=1e-7, rtol=1e-4, msg=f"chunk {chunk}")


@pytest.mark.parametrize("num_items", [None, 0, 5, torch.tensor(0), torch.tensor(7)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_all_ignored_is_finite_zero_with_zero_grad(num_items, dtype):
    logits, _ = random_case(5, dtype=dtype)
    labels = torch.full(logits.shape[:2], IGNORE)
    labels[:, 0] = 3  # a first label is never a target after the shift
    loss, grad = loss_and_grad(cross_entropy_loss, logits, labels, num_items)
    assert float(loss) == 0.0 and torch.isfinite(loss)
    assert grad is not None and grad.dtype == dtype and torch.count_nonzero(grad) == 0


def test_zero_count_with_valid_labels_is_finite_zero():
    logits, labels = random_case(6)
    for n in (0, torch.tensor(0)):
        loss, grad = loss_and_grad(cross_entropy_loss, logits, labels, n)
        assert float(loss) == 0.0 and torch.count_nonzero(grad) == 0


@pytest.mark.parametrize("scale", [1e4, 1e30])
def test_huge_logits_do_not_overflow(scale):
    """exp(1e4) overflows any float; the max-shifted log-sum-exp does not."""
    logits, labels = random_case(8, batch=2, seq=6, vocab=9)
    logits = logits / 3.0 * scale
    loss, grad = loss_and_grad(cross_entropy_loss, logits, labels)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    ref_loss, ref_grad = reference(logits, labels)
    torch.testing.assert_close(loss.double(), ref_loss, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(grad.double(), ref_grad, atol=1e-7, rtol=1e-4)
    bf_loss, bf_grad = loss_and_grad(cross_entropy_loss, logits.bfloat16(), labels)
    assert torch.isfinite(bf_loss) and torch.isfinite(bf_grad).all()


def test_long_vocabulary_matches_transformers():
    logits, labels = random_case(9, batch=2, seq=5, vocab=49152, scale=4.0, ignore_frac=0.2)
    loss, grad = loss_and_grad(cross_entropy_loss, logits, labels, chunk_size=3)
    hf_loss, hf_grad = loss_and_grad(ForCausalLMLoss, logits, labels, logits.shape[-1])
    torch.testing.assert_close(loss, hf_loss, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(grad, hf_grad, atol=1e-8, rtol=1e-4)


def test_num_items_int_and_tensor_agree_and_scale_linearly():
    logits, labels = random_case(12)
    a = cross_entropy_loss(logits, labels, 50)
    b = cross_entropy_loss(logits, labels, torch.tensor(50))
    c = cross_entropy_loss(logits, labels, torch.tensor([100.0]))
    assert float(a) == float(b)
    assert float(c) == pytest.approx(float(a) / 2, rel=1e-6)


def test_gradient_accumulation_split_equals_whole_batch():
    """Summing per-micro-batch losses divided by the global count (what the Trainer does
    with compute_loss_func) gives the loss and gradient of the whole batch's token mean,
    although the micro-batches hold different numbers of targets."""
    logits, labels = random_case(13, batch=4, seq=10, ignore_frac=0.5)
    labels[0, 3:] = IGNORE  # make the micro-batches uneven
    whole, whole_grad = loss_and_grad(cross_entropy_loss, logits, labels)
    x = logits.clone().requires_grad_()
    n_global = (labels[:, 1:] != IGNORE).sum()
    total = sum(cross_entropy_loss(x[i:i + 2], labels[i:i + 2], n_global) for i in (0, 2))
    total.backward()
    torch.testing.assert_close(total.detach(), whole, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(x.grad, whole_grad, atol=1e-8, rtol=1e-5)


def test_compute_loss_from_logits_accepts_model_outputs():
    logits, labels = random_case(14)
    want = cross_entropy_loss(logits, labels, 17)
    for out in (SimpleNamespace(logits=logits), CausalLMOutputWithPast(logits=logits), {"logits": logits}, logits):
        assert float(compute_loss_from_logits(out, labels, num_items_in_batch=17)) == float(want)
    with pytest.raises(TypeError, match="no logits"):
        compute_loss_from_logits(SimpleNamespace(loss=1.0), labels)


def test_non_contiguous_logits():
    logits, labels = random_case(15)
    strided = logits.transpose(0, 1).contiguous().transpose(0, 1)
    assert not strided.is_contiguous()
    loss, grad = loss_and_grad(cross_entropy_loss, strided, labels, chunk_size=5)
    ref_loss, ref_grad = reference(logits, labels)
    torch.testing.assert_close(loss.double(), ref_loss, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(grad.double(), ref_grad, atol=1e-7, rtol=1e-4)


def test_bad_inputs_raise_clear_errors():
    logits, labels = random_case(16, vocab=10)
    bad = labels.clone()
    bad[0, 4] = 10
    with pytest.raises(ValueError, match="label id 10 is outside the vocabulary"):
        cross_entropy_loss(logits, bad)
    bad[0, 4] = -5
    with pytest.raises(ValueError, match="label id -5"):
        cross_entropy_loss(logits, bad)
    with pytest.raises(ValueError, match="does not match"):
        cross_entropy_loss(logits, labels[:, :-1])
    with pytest.raises(ValueError, match="labels is None"):
        compute_loss_from_logits(SimpleNamespace(logits=logits), None)
    with pytest.raises(ValueError, match=">= 0"):
        cross_entropy_loss(logits, labels, -1)
    with pytest.raises(ValueError, match="batch, seq, vocab"):
        cross_entropy_loss(logits[0], labels[0])
    with pytest.raises(ValueError, match="chunk_size"):
        cross_entropy_loss(logits, labels, chunk_size=0)


def test_backward_keeps_only_one_number_per_position():
    """What autograd holds between forward and backward: the logits themselves (same
    storage, no copy) and vectors of at most one number per position, nothing of size
    [positions, vocab]."""
    logits, labels = random_case(17, batch=2, seq=50, vocab=1000, ignore_frac=0.0)
    x = logits.clone().requires_grad_()
    loss = cross_entropy_loss(x, labels, chunk_size=8)
    node = loss.grad_fn
    while node is not None and type(node).__name__ != "ChunkedCrossEntropyBackward":
        node = next((f for f, _ in node.next_functions if f is not None), None)
    assert node is not None, "chunked function not found in the graph"
    saved = node.saved_tensors
    big = [t for t in saved if t.numel() > labels.numel()]
    assert len(big) == 1 and big[0].data_ptr() == x.data_ptr(), [tuple(t.shape) for t in saved]


def test_no_library_cross_entropy_in_source():
    """The loss is written from log-sum-exp math: no name of torch's cross-entropy or
    NLL helpers appears as code (docstrings and comments aside)."""
    forbidden = {"cross_entropy", "CrossEntropyLoss", "nll_loss", "NLLLoss", "log_softmax", "logsumexp"}
    src = (REPO / "loss_functions.py").read_text()
    names = {tok.string for tok in tokenize.generate_tokens(io.StringIO(src).readline) if tok.type == tokenize.NAME}
    assert not names & forbidden, names & forbidden
    assert "cross_entropy_loss" in names  # the tokenizer did see the code


@pytest.mark.slow
def test_benchmark_runs_small():
    """Smoke run of benchmarks/loss.py on a tiny shape (no timing asserted)."""
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "loss.py"), "--tokens", "64", "--vocab", "256",
                          "--dtypes", "fp32", "--variants", "plain", "chunked", "--reps", "1", "--rounds", "1"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "fp32 chunk" in out.stdout and "summary:" in out.stdout


@pytest.mark.parametrize("factor", [-2.0, 0.5, 1e-3])
def test_backward_with_other_incoming_gradients(factor):
    """The incoming gradient is folded into the exponent only when it is positive and the
    shift stays small; negative, small and large factors all give factor * reference."""
    logits, labels = random_case(18, ignore_frac=0.2)
    x = logits.clone().requires_grad_()
    (cross_entropy_loss(x, labels, chunk_size=5) * factor).backward()
    _, ref_grad = reference(logits, labels)
    torch.testing.assert_close(x.grad.double(), ref_grad * factor, atol=1e-7 * abs(factor), rtol=1e-4)


def test_long_ignored_spans_are_skipped_and_short_gaps_computed():
    """Chat-like labels: a long ignored prompt (skipped, a new chunk starts after it) and
    short ignored gaps inside answers (computed within a chunk, then zeroed)."""
    from smolsft.losses.chunked import MAX_GAP as _MAX_GAP, chunk_plan as _plan, shifted_targets as _shifted_targets

    logits, labels = random_case(19, batch=2, seq=120, vocab=11, ignore_frac=0.0)
    labels[:, :40] = IGNORE          # prompt: longer than _MAX_GAP
    labels[0, 60:63] = IGNORE        # short gap inside an answer
    labels[1, 70:70 + _MAX_GAP + 5] = IGNORE  # a second long span in row 1
    ref_loss, ref_grad = reference(logits, labels)
    for chunk in (7, 50, 512):
        loss, grad = loss_and_grad(cross_entropy_loss, logits, labels, chunk_size=chunk)
        torch.testing.assert_close(loss.double(), ref_loss, atol=1e-6, rtol=1e-5, msg=f"chunk {chunk}")
        torch.testing.assert_close(grad.double(), ref_grad, atol=1e-7, rtol=1e-4, msg=f"chunk {chunk}")
    rows, _ = _shifted_targets(labels)
    plan = _plan(rows, 512)
    covered = set()
    for p0, p1, i0, i1, local, ignored in plan:
        covered.update(range(p0, p1))
        assert (local + p0).tolist() == rows[i0:i1].tolist()
    assert covered >= set(rows.tolist())
    # Prompts (shifted positions 0-38 of each row) are never read; row 0's short gap
    # (shifted positions 59-61) is inside a chunk; row 1's long gap (69-105) is skipped.
    assert not covered & (set(range(0, 39)) | set(range(120, 120 + 39)))
    assert {59, 60, 61} <= covered
    assert not covered & set(range(120 + 69, 120 + 106))
    assert all(p1 - p0 <= 7 for p0, p1, *_ in _plan(rows, 7))
