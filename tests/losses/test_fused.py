"""fused_loss: the loss and gradients of the fused output layer + cross-entropy equal the
logits path (the model's logits through loss_functions' Part 5 loss, itself checked
against float64 and transformers) on the tiny Llama with SmolLM2's vocabulary and tied
embeddings: random masked spans, fp32 and bf16 weights, chunk sizes that cut through
target spans, an all-ignored batch, padding-free batches with position ids, gradient
checkpointing, and through the Trainer's compute_loss."""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import LlamaForCausalLM, Trainer, TrainingArguments

from smolsft.losses.fused import FusedLossTrainer, fused_linear_cross_entropy, output_weight, pack_right_padded
from loss_functions import compute_loss_from_logits, cross_entropy_loss
from smolsft.chat.format import IGNORE_TOKEN_ID as IGNORE

VOCAB = 49152


@pytest.fixture(scope="module")
def tiny_dir(tiny_llama_dir):
    return tiny_llama_dir


def load(tiny_dir, dtype=torch.float32):
    model = LlamaForCausalLM.from_pretrained(tiny_dir, dtype=dtype)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied, as in SmolLM2
    return model


def batch(seed, bsz=3, seq=40, spans=True):
    """Random ids; labels = ids with chat-like ignored spans (a prompt, short gaps, padding)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (bsz, seq), generator=g)
    labels = ids.clone()
    if spans:
        for b in range(bsz):
            start = int(torch.randint(1, seq // 2, (1,), generator=g))
            labels[b, :start] = IGNORE
            labels[b, start + 5:start + 8] = IGNORE
        labels[-1, seq - 6:] = IGNORE  # padding at the end of the last row
    return ids, labels


def grads(model, ids, labels, fused, num_items=None, chunk_size=512, factor=None, **model_kwargs):
    """(loss, d loss / d last hidden states, {name: d loss / d parameter}); with ``factor``
    the backward starts from ``loss * factor`` (a loss scaled after the loss function)."""
    model.zero_grad(set_to_none=True)
    hidden = model.model(input_ids=ids, **model_kwargs).last_hidden_state
    hidden.retain_grad()
    if fused:
        loss = fused_linear_cross_entropy(hidden, model.lm_head.weight, labels, num_items, chunk_size=chunk_size)
    else:
        loss = cross_entropy_loss(model.lm_head(hidden), labels, num_items)
    (loss if factor is None else loss * factor).backward()
    return loss.detach(), hidden.grad, {n: p.grad.clone() for n, p in model.named_parameters()}


class CountProducts(TorchDispatchMode):
    """Counts the matrix products run inside the ``with`` block."""

    def __init__(self):
        super().__init__()
        self.products = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.products += func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.addmm_,
                                                 torch.ops.aten.matmul)
        return func(*args, **(kwargs or {}))


def assert_same(got, want, bf16=False):
    """Loss to fp32 tolerance; gradients to rtol 1e-4 plus an atol of 1e-5 (fp32) or one bf16
    rounding (2**-8, bf16) of the tensor's largest entry: sums over rows are taken in
    another order (per chunk) and, in bf16, rounded at other points."""
    (loss, gh, gp), (ref_loss, ref_gh, ref_gp) = got, want
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=1e-5)
    assert gp.keys() == ref_gp.keys() and "model.embed_tokens.weight" in gp
    for name, g, ref in [("hidden states", gh, ref_gh), *((n, gp[n], ref_gp[n]) for n in gp)]:
        scale = float(ref.float().abs().max())
        atol, rtol = (2.0 ** -8 * scale, 2.0 ** -7) if bf16 else (1e-5 * scale, 1e-4)
        torch.testing.assert_close(g.float(), ref.float(), atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("num_items", [None, 97])
def test_fp32_matches_logits_path(tiny_dir, seed, num_items):
    model = load(tiny_dir)
    ids, labels = batch(seed)
    assert_same(grads(model, ids, labels, True, num_items), grads(model, ids, labels, False, num_items))


def test_embedding_gradient_counts_the_tie_once(tiny_dir):
    """The shared weight's gradient is the output layer's plus the embedding lookup's, each
    once: compare with an untied copy where the two parts are separate parameters."""
    model = load(tiny_dir)
    ids, labels = batch(5)
    _, _, tied = grads(model, ids, labels, True)
    untied = load(tiny_dir)
    untied.lm_head.weight = torch.nn.Parameter(untied.model.embed_tokens.weight.detach().clone())
    hidden = untied.model(input_ids=ids).last_hidden_state
    cross_entropy_loss(untied.lm_head(hidden), labels).backward()
    both = untied.lm_head.weight.grad + untied.model.embed_tokens.weight.grad
    torch.testing.assert_close(tied["model.embed_tokens.weight"], both, atol=1e-7, rtol=1e-4)
    assert untied.lm_head.weight.grad.abs().sum() > 0 and untied.model.embed_tokens.weight.grad.abs().sum() > 0


def test_bf16_weights_match_logits_path(tiny_dir):
    """bf16 model: the chunk logits are the output layer's own bf16 products, so the fp32
    loss matches to fp32 tolerance; gradients are bf16 tensors (the logits' gradient is
    rounded to bf16 before the matmuls in both paths), compared at bf16 precision; chunks of
    16 rows round the output weight's gradient once per chunk before the fp32 sum."""
    model = load(tiny_dir, torch.bfloat16)
    ids, labels = batch(2)
    got, want = grads(model, ids, labels, True, chunk_size=16), grads(model, ids, labels, False)
    assert got[1].dtype == torch.bfloat16 and got[2]["model.embed_tokens.weight"].dtype == torch.bfloat16
    assert_same(got, want, bf16=True)


@pytest.mark.parametrize("factor", [3.0, 0.5, 0.0])
def test_scaled_loss_matches_logits_path(tiny_dir, factor):
    """Gradients are computed in forward for ``1 / num_items_in_batch``; a loss scaled
    afterwards (the Trainer's multiplication by the number of processes, fp16 loss scaling)
    still gets the logits path's gradients."""
    model = load(tiny_dir)
    ids, labels = batch(6)
    assert_same(grads(model, ids, labels, True, 50, factor=factor), grads(model, ids, labels, False, 50, factor=factor))


def test_backward_runs_no_product(tiny_dir):
    """The logits' gradients are turned into the hidden states' and the weight's in forward,
    while each chunk's logits exist: backward only rescales (no matrix product)."""
    model = load(tiny_dir)
    ids, labels = batch(7)
    hidden = model.model(input_ids=ids).last_hidden_state.detach().requires_grad_()
    weight = model.lm_head.weight.detach().clone().requires_grad_()
    forward, backward = CountProducts(), CountProducts()
    with forward:
        loss = fused_linear_cross_entropy(hidden, weight, labels, chunk_size=16)
    with backward:
        (loss * 2).backward()
    assert forward.products > 0 and backward.products == 0
    assert hidden.grad.abs().sum() > 0 and weight.grad.abs().sum() > 0


def test_fp16_recomputes_in_backward_with_the_loss_scale(tiny_dir):
    """fp16 weights: under a loss scale of 2**16 (DeepSpeed's initial one) the gradients
    match the logits path at fp16 precision, and backward computes them (products in
    backward), so no p / num_items underflows in fp16 before the scale is applied."""
    model = load(tiny_dir, torch.float16)
    ids, labels = batch(9)
    loss, gh, gp = grads(model, ids, labels, True, 2000, factor=2.0 ** 16)
    ref_loss, ref_gh, ref_gp = grads(model, ids, labels, False, 2000, factor=2.0 ** 16)
    torch.testing.assert_close(loss, ref_loss, atol=1e-3, rtol=1e-3)
    gw, ref_gw = gp["model.embed_tokens.weight"].float(), ref_gp["model.embed_tokens.weight"].float()
    for g, ref in ((gh.float(), ref_gh.float()), (gw, ref_gw)):
        assert ref.abs().max() > 0 and torch.isfinite(g).all()
        torch.testing.assert_close(g, ref, atol=2.0 ** -7 * float(ref.abs().max()), rtol=2.0 ** -6)
    assert (gw != 0).sum() >= 0.9 * (ref_gw != 0).sum()  # nothing flushed to zero
    hidden = model.model(input_ids=ids).last_hidden_state.detach().requires_grad_()
    loss = fused_linear_cross_entropy(hidden, model.lm_head.weight.detach().clone().requires_grad_(), labels, 2000)
    backward = CountProducts()
    with backward:
        (loss * 2.0 ** 16).backward()
    assert backward.products > 0  # the fp16 path computes the gradients in backward


@pytest.mark.parametrize("factor", [1.0, 3.0])
def test_a_second_backward_gives_the_same_gradients(tiny_dir, factor):
    """backward(retain_graph=True) twice: the saved gradients are not rescaled in place."""
    model = load(tiny_dir)
    ids, labels = batch(10)
    hidden = model.model(input_ids=ids).last_hidden_state.detach().requires_grad_()
    weight = model.lm_head.weight.detach().clone().requires_grad_()
    loss = fused_linear_cross_entropy(hidden, weight, labels, 40) * factor
    firsts = torch.autograd.grad(loss, (hidden, weight), retain_graph=True)
    seconds = torch.autograd.grad(loss, (hidden, weight))
    for a, b in zip(firsts, seconds):
        assert torch.equal(a, b)


def test_only_what_needs_a_gradient(tiny_dir):
    """No gradient under no_grad (same loss); a frozen weight or detached hidden states get
    none, and the other side still matches the logits path."""
    model = load(tiny_dir)
    ids, labels = batch(8)
    hidden = model.model(input_ids=ids).last_hidden_state.detach()
    weight = model.lm_head.weight.detach()
    want_loss = cross_entropy_loss(hidden @ weight.t(), labels)
    with torch.no_grad():
        loss = fused_linear_cross_entropy(hidden, weight, labels)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, want_loss, atol=1e-6, rtol=1e-5)
    for frozen in ("weight", "hidden"):
        h = hidden.clone().requires_grad_(frozen != "hidden")
        w = weight.clone().requires_grad_(frozen != "weight")
        h_ref, w_ref = h.detach().clone().requires_grad_(h.requires_grad), w.detach().clone().requires_grad_(w.requires_grad)
        fused_linear_cross_entropy(h, w, labels).backward()
        cross_entropy_loss(h_ref @ w_ref.t(), labels).backward()
        live, ref = (h, h_ref) if frozen == "weight" else (w, w_ref)
        dead = w if frozen == "weight" else h
        assert dead.grad is None
        torch.testing.assert_close(live.grad, ref.grad, atol=1e-5 * float(ref.grad.abs().max()), rtol=1e-4)


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 64, 10_000])
def test_chunk_boundaries_not_aligned_with_targets(tiny_dir, chunk_size):
    """Chunk sizes that do not divide the number of targets (nor the spans) give the
    logits path's loss and gradients."""
    model = load(tiny_dir)
    ids, labels = batch(3, bsz=2, seq=23)
    n = int((labels[:, 1:] != IGNORE).sum())
    assert n % 7 and n % 3 and n % 64  # not aligned
    assert_same(grads(model, ids, labels, True, chunk_size=chunk_size), grads(model, ids, labels, False))


@pytest.mark.parametrize("num_items", [None, 0, 12])
def test_all_ignored_batch_is_a_finite_zero(tiny_dir, num_items):
    model = load(tiny_dir)
    ids, _ = batch(4)
    labels = torch.full_like(ids, IGNORE)
    loss, gh, gp = grads(model, ids, labels, True, num_items)
    assert loss.item() == 0.0 and torch.isfinite(loss)
    assert not gh.any() and all(not g.any() for g in gp.values())


def test_padding_free_and_gradient_checkpointing(tiny_dir):
    """Packed rows with position ids restarting per sample and -100 at each sample's first
    label (DataCollatorWithFlattening), with gradient checkpointing on."""
    model = load(tiny_dir)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    lengths = [9, 14, 6]
    g = torch.Generator().manual_seed(6)
    ids = torch.randint(0, VOCAB, (1, sum(lengths)), generator=g)
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None]
    labels = ids.clone()
    starts = torch.tensor([0, *lengths[:-1]]).cumsum(0)
    labels[0, starts] = IGNORE
    labels[0, 10:13] = IGNORE  # a masked prompt inside the second sample
    got = grads(model, ids, labels, True, chunk_size=5, position_ids=position_ids)
    want = grads(model, ids, labels, False, position_ids=position_ids)
    assert_same(got, want)


def test_trainer_compute_loss_matches_logits_trainer(tiny_dir, tmp_path):
    """FusedLossTrainer.compute_loss on a batch with the Trainer's num_items_in_batch equals
    Trainer(compute_loss_func=compute_loss_from_logits), in loss and parameter gradients."""
    ids, labels = batch(7)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    num_items = torch.tensor(int((labels != IGNORE).sum()) + 11)  # part of a larger accumulated batch
    results = []
    for cls, kwargs in [(FusedLossTrainer, {"chunk_size": 13}), (Trainer, {"compute_loss_func": compute_loss_from_logits})]:
        model = load(tiny_dir)
        args = TrainingArguments(output_dir=str(tmp_path / cls.__name__), report_to="none", use_cpu=True)
        trainer = cls(model=model, args=args, **kwargs)
        loss = trainer.compute_loss(model, dict(inputs), num_items_in_batch=num_items)
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (loss, gp), (ref_loss, ref_gp) = results
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=1e-5)
    for name in ref_gp:
        torch.testing.assert_close(gp[name], ref_gp[name], atol=1e-7, rtol=1e-4, msg=lambda m: f"{name}: {m}")


def right_padded(lengths, width, seed=8):
    """A batch as the collator gives it: right padding, labels -100 on padding, on each
    sample's first token and on a short prompt."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (len(lengths), width), generator=g)
    am = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
    labels = ids.masked_fill(am == 0, IGNORE)
    labels[:, :3] = IGNORE
    return {"input_ids": ids.masked_fill(am == 0, 2), "attention_mask": am, "labels": labels}


def test_pack_right_padded():
    """The real tokens of each row, in order, in one row; positions restart per sample;
    batches of another form are left alone."""
    inputs = right_padded([5, 2, 4], 6)
    packed = pack_right_padded(inputs)
    keep = inputs["attention_mask"].bool()
    assert torch.equal(packed["input_ids"][0], torch.cat([inputs["input_ids"][i, :n] for i, n in enumerate([5, 2, 4])]))
    assert torch.equal(packed["labels"][0], inputs["labels"][keep])
    assert packed["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 0, 1, 0, 1, 2, 3]
    assert packed["use_cache"] is False and "attention_mask" not in packed
    left = dict(inputs, attention_mask=inputs["attention_mask"].flip(1))
    target_first = dict(inputs, labels=inputs["labels"].clone())
    target_first["labels"][1, 0] = 5  # the next sample's first token would be a target of the previous one
    for other in (left, target_first, dict(inputs, position_ids=torch.zeros_like(inputs["input_ids"]))):
        assert pack_right_padded(other) is None


@pytest.mark.parametrize("checkpointing", [False, True])
def test_packed_batches_train_as_padded_ones(tiny_dir, tmp_path, checkpointing):
    """FusedLossTrainer with pack_batches (cpu_bmm, one row of real tokens) gives the loss and
    every parameter gradient of the same padded batch under sdpa, with gradient
    checkpointing off and on."""
    from smolsft.kernels import cpu_attention as cpu_attention
    cpu_attention.register()
    inputs = right_padded([40, 25, 9, 1], 40)
    num_items = torch.tensor(int((inputs["labels"] != IGNORE).sum()))
    results = []
    for attn, pack in (("sdpa", False), (cpu_attention.NAME, True)):
        model = LlamaForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32, attn_implementation=attn)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        args = TrainingArguments(output_dir=str(tmp_path / attn), report_to="none", use_cpu=True)
        trainer = FusedLossTrainer(model=model, args=args, pack_batches=pack)
        loss = trainer.compute_loss(model, dict(inputs), num_items_in_batch=num_items)
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (loss, gp), (ref_loss, ref_gp) = results[1], results[0]
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=1e-5)
    for name in ref_gp:
        scale = float(ref_gp[name].abs().max())
        torch.testing.assert_close(gp[name], ref_gp[name], atol=1e-5 * scale, rtol=1e-4, msg=lambda m: f"{name}: {m}")


def test_unsupported_output_layer_is_refused(tiny_dir):
    model = load(tiny_dir)
    model.config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match="final_logit_softcapping.*--loss logits"):
        output_weight(model)
    with pytest.raises(ValueError, match="does not match"):
        fused_linear_cross_entropy(torch.zeros(1, 4, 64), torch.zeros(10, 64), torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        fused_linear_cross_entropy(torch.zeros(1, 3, 64), torch.zeros(10, 64), torch.tensor([[0, 10, 1]]))
