"""RMSNorm through PyTorch's fused kernel (``torch.nn.functional.rms_norm``) instead of
transformers' op-by-op Llama version.

    from smolsft.kernels.rms_norm import fuse_rms_norms
    fuse_rms_norms(model)          # number of norms switched; weights and outputs unchanged

Why: transformers' ``LlamaRMSNorm.forward`` (SmolLM2's, and every model that copies it)
runs six ops (cast, square, mean, rsqrt, two products), each a pass over the activations,
forward and backward; PyTorch's ``rms_norm`` does it in one kernel (timings:
docs/performance.md#the-non-matmul-half-of-a-bf16-step-made-faster).

What is computed: ``weight * x / sqrt(mean(x^2, last dim) + eps)``, the formula of
``LlamaRMSNorm`` (Zhang & Sennrich 2019), in fp32 inside the kernel for fp32 and bf16
inputs. In fp32 the outputs equal transformers' to rounding (tested); in bf16 transformers
rounds twice (the normalised value to bf16, then its product with the weight) and the
kernel once, so the two differ by at most one bf16 rounding step.

Which modules: those whose class's ``forward`` has the same bytecode, constants and names
as ``LlamaRMSNorm.forward`` (transformers copies it into Mistral, Qwen2 and others), so a
norm with another formula (Gemma's ``1 + weight``) is never switched. A module whose input
dtype differs from its weight's (bf16 weights given an fp32 input) runs its own forward.
The switched forward is a ``functools.partial`` (not a bound method), so the module still
pickles and deep-copies.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


def _fused_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    if hidden_states.dtype != self.weight.dtype:
        return type(self).forward(self, hidden_states)
    return F.rms_norm(hidden_states, self.weight.shape, self.weight, self.variance_epsilon)


def _same_code(a, b) -> bool:
    return (a.co_code, a.co_consts, a.co_names) == (b.co_code, b.co_consts, b.co_names)


def fuse_rms_norms(model: torch.nn.Module) -> int:
    """Switch every Llama-formula RMSNorm in ``model`` to :func:`torch.nn.functional.rms_norm`
    (an instance attribute: the class, the state dict and saving are untouched). Returns
    how many were switched (0 for a model without such norms)."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    reference = LlamaRMSNorm.forward.__code__
    switched = 0
    for module in model.modules():
        code = getattr(getattr(type(module), "forward", None), "__code__", None)
        if code is not None and _same_code(code, reference) and "forward" not in vars(module):
            module.forward = functools.partial(_fused_forward, module)
            switched += 1
    return switched
