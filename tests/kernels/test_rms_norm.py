"""rms_norm: transformers' own LlamaRMSNorm is the reference; the switched module gives its
outputs and gradients (fp32 to rounding, bf16 within one bf16 step), only Llama-formula
norms are switched, and the model's weights and saved files do not change."""
from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from smolsft.kernels.rms_norm import fuse_rms_norms


def norm_and_input(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    norm = LlamaRMSNorm(48, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(48, generator=g) + 0.5)
    x = (3 * torch.randn(2, 11, 48, generator=g)).to(dtype)
    return norm.to(dtype), x


def run(norm, x, dout):
    x = x.detach().clone().requires_grad_()
    norm.zero_grad()
    y = norm(x)
    y.backward(dout)
    return y.detach(), x.grad, norm.weight.grad.clone()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_transformers(dtype):
    ref, x = norm_and_input(dtype)
    fused = copy.deepcopy(ref)
    assert fuse_rms_norms(fused) == 1 and "forward" in vars(fused)
    dout = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    want, got = run(ref, x, dout), run(fused, x, dout)
    assert got[0].dtype == dtype
    if dtype == torch.float32:
        for w, g in zip(want, got):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    else:
        # transformers rounds twice (the normalised value, then its product with the weight),
        # the kernel once: at most one bf16 step (2^-7 relative) apart in the output.
        step = want[0].float().abs() * 2 ** -7 + 1e-6
        assert ((got[0].float() - want[0].float()).abs() <= step * 1.01).all()
        for w, g in zip(want[1:], got[1:]):
            torch.testing.assert_close(g.float(), w.float(), rtol=2 ** -6, atol=0.05)


def test_mixed_dtypes_run_the_modules_own_forward():
    """An input in another dtype than the weight's: transformers' forward runs, so its
    result is unchanged."""
    ref, x = norm_and_input(torch.float32)
    fused = copy.deepcopy(ref)
    fuse_rms_norms(fused)
    xb = x.bfloat16()
    assert torch.equal(fused(xb), ref(xb))


def test_other_formulas_are_left_alone():
    class OnePlusWeightNorm(torch.nn.Module):  # Gemma's formula: (1 + weight) * x_normed
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(8))
            self.variance_epsilon = 1e-6

        def forward(self, x):
            x32 = x.float()
            return ((1 + self.weight) * x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-6)).to(x.dtype)

    model = torch.nn.Sequential(OnePlusWeightNorm(), torch.nn.Linear(8, 8))
    assert fuse_rms_norms(model) == 0 and all("forward" not in vars(m) for m in model.modules())


def test_model_count_and_saved_files(tiny_llama_dir, tmp_path):
    """Every norm of the tiny Llama (two per layer and the final one) is switched; logits
    equal the unswitched model's; the state dict and the saved config are the same."""
    model = LlamaForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    ref = copy.deepcopy(model)
    layers = model.config.num_hidden_layers
    assert fuse_rms_norms(model) == 2 * layers + 1
    assert fuse_rms_norms(model) == 0  # already switched
    ids = torch.randint(0, 49152, (2, 17), generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(model(input_ids=ids).logits, ref(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
    assert model.state_dict().keys() == ref.state_dict().keys()
    model.save_pretrained(tmp_path / "a")
    ref.save_pretrained(tmp_path / "b")
    assert (tmp_path / "a" / "config.json").read_text() == (tmp_path / "b" / "config.json").read_text()


def test_switched_module_pickles_and_copies():
    """torch.save of a whole model pickles its modules: the switched forward survives a
    round trip and a deep copy, bound to the new module, not the old one."""
    import io
    import pickle

    ref, x = norm_and_input(torch.float32)
    fuse_rms_norms(ref)
    for copied in (pickle.loads(pickle.dumps(ref)), copy.deepcopy(ref)):
        assert "forward" in vars(copied)
        with torch.no_grad():
            copied.weight.mul_(2)
        torch.testing.assert_close(copied(x), 2 * ref(x))
    buf = io.BytesIO()
    torch.save(ref, buf)
    buf.seek(0)
    torch.testing.assert_close(torch.load(buf, weights_only=False)(x), ref(x))
