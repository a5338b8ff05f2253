"""cpu_attention: the blocked causal attention against PyTorch's own attention
(``scaled_dot_product_attention``, math kernel, in float64, keys and values repeated per
query head) as the reference: outputs and the gradients of query, key and value on the real
tokens, with grouped-query heads, right padding, no mask, one and several query blocks,
autocast; which masks it computes and which go to ``sdpa``; its refusals; and a whole
model's logits and gradients against the same model under ``sdpa``. (The automatic choice
of this attention: tests/hardware/test_cpu.py.)"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import LlamaForCausalLM

from smolsft.kernels import cpu_attention as cpu_attention
from smolsft.kernels.cpu_attention import NAME, attention_forward


class _Module(torch.nn.Module):
    """What the interface reads off the attention module: ``training``."""


MODULE = _Module()


def qkv(dtype, B=3, H=6, KV=2, L=37, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    make = lambda *s: torch.randn(*s, generator=g).to(dtype).requires_grad_()  # noqa: E731
    return make(B, H, L, D), make(B, KV, L, D), make(B, KV, L, D)


def padded_mask(B, L, lengths):
    """transformers' sdpa mask for right padding: causal, and no query attends to a padded key."""
    keep = torch.arange(L)[None, :] < torch.tensor(lengths)[:, None]  # [B, L] real tokens
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    return (causal[None] & keep[:, None, :])[:, None]  # [B, 1, L, L]


def reference(q, k, v, mask):
    """float64 attention by PyTorch's math kernel; ``[B, L, H, D]`` as the interface returns."""
    G = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(G, 1), v.repeat_interleave(G, 1)
    with sdpa_kernel(SDPBackend.MATH):
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2)


@pytest.fixture(params=[128, 8], ids=["one_block", "blocks_of_8"])
def block_rows(request, monkeypatch):
    """The kernel's query block: the default (one block at these lengths) and 8 rows (several
    blocks, the last one partial)."""
    monkeypatch.setattr(cpu_attention, "BLOCK_ROWS", request.param)
    return request.param


def real_rows(B, L, lengths):
    """``[B, L]`` True on real tokens (right padding)."""
    return torch.arange(L)[None, :] < torch.tensor(lengths)[:, None]


def grads(fn, tensors, dout):
    for t in tensors:
        t.grad = None
    out = fn(*tensors)
    out.backward(dout.to(out.dtype))
    return out.detach(), [t.grad.detach().clone() for t in tensors]


@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize("heads", [(6, 2), (4, 4), (3, 1)])
def test_fp32_matches_float64_reference(masked, heads, block_rows):
    """fp32 against the float64 reference: outputs on real rows, zero on padding rows; the
    gradients with the incoming gradient zero on padding rows (no target there), as in training."""
    H, KV = heads
    q, k, v = qkv(torch.float32, H=H, KV=KV)
    B, _, L, _ = q.shape
    lengths = [L, 20, 5] if masked else [L] * B
    mask = padded_mask(B, L, lengths) if masked else None
    real = real_rows(B, L, lengths)[:, :, None, None]
    dout = torch.randn(B, L, H, q.shape[-1], generator=torch.Generator().manual_seed(1)) * real
    ref_out, ref_grads = grads(lambda a, b, c: reference(a, b, c, mask),
                               [t.detach().double().requires_grad_() for t in (q, k, v)], dout.double())
    out, got = grads(lambda a, b, c: attention_forward(MODULE, a, b, c, mask)[0], [q, k, v], dout)
    assert out.shape == (B, L, H, q.shape[-1]) and out.dtype == torch.float32
    torch.testing.assert_close(out.double() * real, ref_out * real, rtol=1e-5, atol=1e-5)
    assert not out[~real.expand_as(out)].any()  # padding rows: zero
    for name, g, r in zip("qkv", got, ref_grads):
        torch.testing.assert_close(g.double(), r, rtol=1e-5, atol=1e-5, msg=lambda m: f"d{name}: {m}")


def test_bf16_error_is_that_of_pytorchs_bf16_attention(block_rows):
    """In bf16 the scores come out of a bf16 product (as transformers' eager attention
    computes them): the error against float64 on the real rows stays within twice PyTorch's
    own bf16 sdpa error, for the output and each gradient."""
    q, k, v = qkv(torch.bfloat16, B=2, H=9, KV=3, L=96, D=64)
    B, H, L, D = q.shape
    lengths = [L, 60]
    mask = padded_mask(B, L, lengths)
    real = real_rows(B, L, lengths)[:, :, None, None]
    dout = torch.randn(B, L, H, D, generator=torch.Generator().manual_seed(2)) * real
    ref_out, ref_grads = grads(lambda a, b, c: reference(a, b, c, mask),
                               [t.detach().double().requires_grad_() for t in (q, k, v)], dout.double())

    def torch_bf16(a, b, c):
        G = H // b.shape[1]
        o = F.scaled_dot_product_attention(a, b.repeat_interleave(G, 1), c.repeat_interleave(G, 1), attn_mask=mask)
        return o.transpose(1, 2)

    base_out, base_grads = grads(torch_bf16, [q, k, v], dout)
    out, got = grads(lambda a, b, c: attention_forward(MODULE, a, b, c, mask)[0], [q, k, v], dout)
    assert out.dtype == torch.bfloat16 and all(g.dtype == torch.bfloat16 for g in got)
    err = lambda x, r: (x.double() - r).abs().max().item()  # noqa: E731
    assert err(out * real, ref_out * real) <= 2 * err(base_out * real, ref_out * real)
    for name, g, b, r in zip("qkv", got, base_grads, ref_grads):
        assert err(g, r) <= 2 * err(b, r), f"d{name}: {err(g, r):.3g} vs PyTorch bf16 {err(b, r):.3g}"


def test_autocast_inputs_of_mixed_dtypes():
    """Under CPU autocast the rotary embedding leaves q, k in fp32 and v in bf16: the
    products run in the autocast dtype and the output is bf16."""
    q, k, v = qkv(torch.float32)
    vb = v.detach().bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attention_forward(MODULE, q, k, vb, None)[0]
    assert out.dtype == torch.bfloat16
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(5))
    ref_out, ref_grads = grads(lambda a, b, c: reference(a, b, c, None),
                               [t.detach().double().requires_grad_() for t in (q, k, v)], dout.double())
    assert (out.double() - ref_out).abs().max().item() < 0.05
    out.backward(dout.bfloat16())
    for name, g, r in zip("qkv", (q.grad, k.grad, vb.grad), ref_grads):
        scale = r.abs().max().item()
        assert (g.double() - r).abs().max().item() < 0.05 * scale, f"d{name}"


def test_float64_gradcheck_and_a_second_backward(monkeypatch):
    """torch.autograd.gradcheck in float64 (finite differences, independent of the formulas
    above; blocks of 2 query rows, so several blocks), and backward(retain_graph=True) twice
    gives the same gradients."""
    monkeypatch.setattr(cpu_attention, "BLOCK_ROWS", 2)
    for heads, L in (((2, 1), 5), ((4, 2), 6), ((3, 3), 1)):
        q, k, v = qkv(torch.float64, B=2, H=heads[0], KV=heads[1], L=L, D=3, seed=L)
        mask = padded_mask(2, L, [L, max(1, L - 2)])
        assert torch.autograd.gradcheck(lambda a, b, c: attention_forward(MODULE, a, b, c, mask)[0], (q, k, v))
    q, k, v = qkv(torch.float32)
    out = attention_forward(MODULE, q, k, v, None)[0].square().sum()
    firsts = torch.autograd.grad(out, (q, k, v), retain_graph=True)
    for a, b in zip(firsts, torch.autograd.grad(out, (q, k, v))):
        assert torch.equal(a, b)


def test_nan_inputs_pass_through():
    """A NaN in the inputs (a diverging run) comes out as NaN, as from sdpa, not as an error
    about the mask."""
    q, k, v = qkv(torch.float32)
    with torch.no_grad():
        q[0, 0, 3, 0] = float("nan")
    out = attention_forward(MODULE, q, k, v, None)[0]
    assert torch.isnan(out[0, 3, 0]).any() and torch.isfinite(out[1]).all()


def test_refusals():
    q, k, v = qkv(torch.float32)
    B, _, L, _ = q.shape
    training = _Module().train()
    with pytest.raises(ValueError, match="dropout"):
        attention_forward(training, q, k, v, None, dropout=0.1)
    attention_forward(_Module().eval(), q, k, v, None, dropout=0.1)  # evaluation: dropout is off anyway
    with pytest.raises(ValueError, match="sliding window"):
        attention_forward(MODULE, q, k, v, None, sliding_window=8)
    with pytest.raises(ValueError, match="causal only"):
        attention_forward(MODULE, q, k, v, None, is_causal=False)
    with pytest.raises(ValueError, match="attention sinks"):
        attention_forward(MODULE, q, k, v, None, s_aux=torch.zeros(q.shape[1]))
    with pytest.raises(ValueError, match="not self-attention"):
        attention_forward(MODULE, q, k[:, :, :-1], v[:, :, :-1], None)
    with pytest.raises(ValueError, match="dtypes differ"):
        attention_forward(MODULE, q, k, v.detach().bfloat16(), None)


def packed_mask(L, lengths):
    """transformers' sdpa mask for samples of ``lengths`` packed into one row of ``L``
    (restarting position ids): causal within each sample, padding after them."""
    seq = torch.full((L,), -1)
    at = 0
    for i, n in enumerate(lengths):
        seq[at:at + n] = i
        at += n
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    return (causal & (seq[:, None] == seq[None, :]) & (seq[None, :] >= 0))[None, None]


def test_causal_segments():
    """The sequences are read only off a mask that is exactly block-causal over a prefix of
    real tokens (right padding, or samples packed in a row); left padding, a float mask, a
    query seeing a later key, another sample's key or missing one of its own give None."""
    B, L = 3, 12
    lengths = [12, 7, 1]
    assert cpu_attention.causal_segments(None, B, L) == [[(0, L)]] * B
    assert cpu_attention.causal_segments(padded_mask(B, L, lengths), B, L) == [[(0, 12)], [(0, 7)], [(0, 1)]]
    assert cpu_attention.causal_segments(padded_mask(1, L, [L]), B, L) == [[(0, L)]] * B  # broadcast over the batch
    assert cpu_attention.causal_segments(packed_mask(L, [5, 1, 4]), 1, L) == [[(0, 5), (5, 6), (6, 10)]]
    left = torch.ones(L, L, dtype=torch.bool).tril()[None, None].repeat(B, 1, 1, 1)
    left[1, 0, :, :3] = False  # sample 1 left-padded by 3
    leaky = padded_mask(B, L, lengths)
    leaky[0, 0, 2, 5] = True  # a query sees a later key
    across = packed_mask(L, [5, 7])
    across[0, 0, 7, 3] = True  # a query of the second sample sees one of the first
    holed = packed_mask(L, [5, 7])
    holed[0, 0, 9, 6] = False  # a query misses an earlier key of its own sample
    for mask, b in ((left, B), (padded_mask(B, L, lengths).float(), B), (leaky, B), (padded_mask(2, L, [L, 3]), B),
                    (across, 1), (holed, 1)):
        assert cpu_attention.causal_segments(mask, b, L) is None
    # One mask serves every layer: read once, read again once changed in place.
    mask = padded_mask(B, L, lengths)
    assert cpu_attention.causal_segments(mask, B, L) == [[(0, 12)], [(0, 7)], [(0, 1)]]
    mask[0, 0, 2, 5] = True
    assert cpu_attention.causal_segments(mask, B, L) is None
    with torch.inference_mode():  # inference tensors have no version counter
        assert cpu_attention.causal_segments(padded_mask(B, L, lengths), B, L) == [[(0, 12)], [(0, 7)], [(0, 1)]]


def test_packed_samples_match_the_reference(block_rows):
    """Samples packed in one row (with padding after them): outputs and gradients equal the
    float64 reference under the same block-causal mask, and each sample alone."""
    L, lengths = 40, [17, 1, 9, 8]
    q, k, v = qkv(torch.float32, B=1, H=6, KV=2, L=L)
    mask = packed_mask(L, lengths)
    real = (torch.arange(L) < sum(lengths))[None, :, None, None]
    dout = torch.randn(1, L, 6, q.shape[-1], generator=torch.Generator().manual_seed(4)) * real
    ref_out, ref_grads = grads(lambda a, b, c: reference(a, b, c, mask),
                               [t.detach().double().requires_grad_() for t in (q, k, v)], dout.double())
    out, got = grads(lambda a, b, c: attention_forward(MODULE, a, b, c, mask)[0], [q, k, v], dout)
    torch.testing.assert_close(out.double() * real, ref_out * real, rtol=1e-5, atol=1e-5)
    assert not out[~real.expand_as(out)].any()
    for name, g, r in zip("qkv", got, ref_grads):
        torch.testing.assert_close(g.double(), r, rtol=1e-5, atol=1e-5, msg=lambda m: f"d{name}: {m}")
    alone = reference(q[:, :, :17].double(), k[:, :, :17].double(), v[:, :, :17].double(), None)
    torch.testing.assert_close(out[:, :17].double(), alone, rtol=1e-5, atol=1e-5)


def test_other_masks_and_large_probabilities_go_to_sdpa(monkeypatch):
    """Left padding, or kept probabilities past MAX_PROBS_BYTES: the call is transformers'
    sdpa attention (its result; the blocked function is not entered)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    q, k, v = qkv(torch.float32)
    B, _, L, _ = q.shape
    module = _Module()
    module.num_key_value_groups = q.shape[1] // k.shape[1]  # what transformers' sdpa reads off Llama's attention
    right = padded_mask(B, L, [L, 20, 5])
    left = torch.ones(L, L, dtype=torch.bool).tril()[None, None].repeat(B, 1, 1, 1)
    left[1, 0, :, :3] = False  # sample 1 left-padded by 3
    left[1, 0, :3, 3] = True  # its padding rows attend to the first real key (a later one)

    def refuse(*args):
        raise AssertionError("GroupedAttention ran")

    monkeypatch.setattr(cpu_attention.GroupedAttention, "apply", refuse)
    got = attention_forward(module, q, k, v, left)[0]
    torch.testing.assert_close(got, sdpa_attention_forward(module, q, k, v, left)[0])
    with monkeypatch.context() as m:
        m.setattr(cpu_attention, "MAX_PROBS_BYTES", 0)
        got = attention_forward(module, q, k, v, right)[0]
    torch.testing.assert_close(got, sdpa_attention_forward(module, q, k, v, right)[0])
    with pytest.raises(AssertionError, match="GroupedAttention ran"):  # within the limit it does run
        attention_forward(module, q, k, v, right)


def test_probs_elements_counts_the_causal_blocks(monkeypatch):
    """The kept P of one layer: for each sequence, each block of query rows times the keys up
    to the block's end, per query head (counted by hand for blocks of 4)."""
    monkeypatch.setattr(cpu_attention, "BLOCK_ROWS", 4)
    assert cpu_attention.query_blocks(10) == [(0, 4), (4, 8), (8, 10)]
    assert cpu_attention.probs_elements([[(0, 10)], [(0, 3)], []], heads=2) == 2 * ((4 * 4 + 4 * 8 + 2 * 10) + 3 * 3)
    assert cpu_attention.probs_elements([[(0, 3), (3, 13)]], heads=1) == 3 * 3 + (4 * 4 + 4 * 8 + 2 * 10)


def test_model_matches_sdpa(tiny_llama_dir, tmp_path):
    """The tiny Llama (4 query heads over 2 key/value heads) with right padding: logits on
    the real tokens and every parameter's gradient equal the same model under ``sdpa``
    (fp32); the saved config does not name the attention, so the checkpoint loads anywhere."""
    cpu_attention.register()
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 49152, (3, 29), generator=g)
    am = torch.ones_like(ids)
    am[1, 17:] = 0
    am[2, 4:] = 0
    results = {}
    for attn in ("sdpa", NAME):
        model = LlamaForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32, attn_implementation=attn)
        model.train()
        logits = model(input_ids=ids, attention_mask=am).logits
        (logits.float()[am.bool()].square().mean()).backward()
        results[attn] = (logits.detach()[am.bool()], {n: p.grad for n, p in model.named_parameters()})
    model.save_pretrained(tmp_path / "saved")
    assert NAME not in (tmp_path / "saved" / "config.json").read_text()
    torch.testing.assert_close(results[NAME][0], results["sdpa"][0], rtol=1e-5, atol=1e-5)
    for n, grad in results["sdpa"][1].items():
        torch.testing.assert_close(results[NAME][1][n], grad, rtol=1e-4, atol=1e-6, msg=lambda m: f"{n}: {m}")


def test_the_benchmark_compares_the_same_results(capsys):
    """benchmarks/attention.py on small shapes: both kernels' outputs on real rows and all
    gradients agree to fp32 rounding (what its table's last column reports); a bad shape is
    a usage error naming it."""
    from conftest import load_script

    bench = load_script("benchmarks/attention.py")
    results = bench.main(["--shapes", "40:40,17,3", "24:24", "--dtypes", "fp32", "--reps", "1"])
    assert set(results) == {("40:40,17,3", "fp32"), ("24:24", "fp32")}
    for r in results.values():
        assert max(r["errors"]) < 1e-5 and r["ratio"] > 0
    assert "cpu_bmm vs sdpa:" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        bench.main(["--shapes", "8:9"])
    assert "--shapes '8:9'" in capsys.readouterr().err
