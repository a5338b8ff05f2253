"""cpu_attention: the batched-product attention against PyTorch's own attention
(``scaled_dot_product_attention``, math kernel, in float64, keys and values repeated per
query head) as the reference: outputs and the gradients of query, key and value, with
grouped-query heads, right padding, no mask, autocast; its refusals; the automatic choice;
and a whole model's logits and gradients against the same model under ``sdpa``. (The
automatic choice of this attention: tests/test_cpu_precision.py.)"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import LlamaForCausalLM

import cpu_attention
from cpu_attention import NAME, attention_forward


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


def grads(fn, tensors, dout):
    for t in tensors:
        t.grad = None
    out = fn(*tensors)
    out.backward(dout.to(out.dtype))
    return out.detach(), [t.grad.detach().clone() for t in tensors]


@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize("heads", [(6, 2), (4, 4), (3, 1)])
def test_fp32_matches_float64_reference(masked, heads):
    H, KV = heads
    q, k, v = qkv(torch.float32, H=H, KV=KV)
    B, _, L, _ = q.shape
    mask = padded_mask(B, L, [L, 20, 5]) if masked else None
    dout = torch.randn(B, L, H, q.shape[-1], generator=torch.Generator().manual_seed(1))
    ref_out, ref_grads = grads(lambda a, b, c: reference(a, b, c, mask),
                               [t.detach().double().requires_grad_() for t in (q, k, v)], dout.double())
    out, got = grads(lambda a, b, c: attention_forward(MODULE, a, b, c, mask)[0], [q, k, v], dout)
    assert out.shape == (B, L, H, q.shape[-1]) and out.dtype == torch.float32
    keep = mask[:, 0].any(-1) if masked else torch.ones(B, L, dtype=torch.bool)  # every row attends somewhere
    assert keep.all()
    torch.testing.assert_close(out.double(), ref_out, rtol=1e-5, atol=1e-5)
    for name, g, r in zip("qkv", got, ref_grads):
        torch.testing.assert_close(g.double(), r, rtol=1e-5, atol=1e-5, msg=lambda m: f"d{name}: {m}")


def test_bf16_error_is_that_of_pytorchs_bf16_attention():
    """In bf16 the scores come out of a bf16 product (as transformers' eager attention
    computes them): the error against float64 stays within twice PyTorch's own bf16 sdpa
    error, for the output and each gradient."""
    q, k, v = qkv(torch.bfloat16, B=2, H=9, KV=3, L=96, D=64)
    B, H, L, D = q.shape
    mask = padded_mask(B, L, [L, 60])
    dout = torch.randn(B, L, H, D, generator=torch.Generator().manual_seed(2))
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
    assert err(out, ref_out) <= 2 * err(base_out, ref_out)
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


def test_float64_gradcheck_and_a_second_backward():
    """torch.autograd.gradcheck in float64 (finite differences, independent of the formulas
    above), and backward(retain_graph=True) twice gives the same gradients."""
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
    left = padded_mask(B, L, [L, L, L])
    left[1, 0, :3] = False  # left padding: the first query rows attend to no key
    with pytest.raises(ValueError, match="attends to no key"):
        attention_forward(MODULE, q, k, v, left)


def test_long_sequences_go_to_sdpa(monkeypatch):
    """Past the score-block or probability limits the call is transformers' sdpa attention
    (same result; the batched-product function is not entered)."""
    q, k, v = qkv(torch.float32)
    B, _, L, _ = q.shape
    mask = padded_mask(B, L, [L, 20, 5])
    module = _Module()
    module.num_key_value_groups = q.shape[1] // k.shape[1]  # what transformers' sdpa reads off Llama's attention
    want = attention_forward(module, q, k, v, mask)[0]

    def refuse(*args):
        raise AssertionError("GroupedAttention ran past the limit")

    monkeypatch.setattr(cpu_attention.GroupedAttention, "apply", refuse)
    for limit in ("MAX_SCORE_BLOCK_BYTES", "MAX_PROBS_BYTES"):
        with monkeypatch.context() as m:
            m.setattr(cpu_attention, limit, 0)
            got = attention_forward(module, q, k, v, mask)[0]
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(AssertionError, match="past the limit"):  # within the limits it does run
        attention_forward(module, q, k, v, mask)


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
