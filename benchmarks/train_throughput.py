"""Trained tokens per second: comparisons, each in one run on the same model and data, and a profile.

``--suite precision`` (default): fp32 against bf16 mixed precision on the CPU, on the demo's
data (data/demo_sft.json, length-grouped batches of 4 at 512 tokens, an optimizer step every
2 micro-batches: sft.sh's one-rank demo layout), the pretrained SmolLM2-135M, the project's
fused loss and AdamW. bf16 is what DeepSpeed's bf16 mode does: the module in bf16, fp32
master weights and Adam state, the bf16 gradients added into fp32 before the step. Each
precision runs twice: with PyTorch's ``sdpa`` attention and with the trainer's own on the
CPU (``cpu_bmm``, smolsft/kernels/cpu_attention.py). Printed per run: trained tokens/s, achieved GFLOP/s
(:func:`batch_flops`: model FLOPs, the padded square for attention whatever a kernel
skips), and the machine's own
matmul peak in that precision measured in the same run (best of a few 2048^3 products), so
each figure is also a fraction of the limit.

    python benchmarks/train_throughput.py                          # fp32 vs bf16, demo data
    python benchmarks/train_throughput.py --steps 2 --layers 8     # quicker, fewer layers

``--suite profile``: one optimizer step of the precision suite (after an untimed one) in each
of ``--precisions`` under ``torch.profiler``: seconds per phase, the ops' self time per
operator group (matmul, attention, casts and copies, elementwise, optimizer, ...) and the
top operators, so the time outside the matmuls is named.

    python benchmarks/train_throughput.py --suite profile          # bf16 and fp32, 2 x 4 x 512

``--suite batching``: the project's batching (unpadded samples, length-grouped, each batch
padded to its longest member rounded to 8) against the course's pad-every-sample-to-
model_max_length, fp32.

    python benchmarks/train_throughput.py --suite batching         # ../shared/ifeval/gpt4_responses.jsonl
    python benchmarks/train_throughput.py --suite batching --layers 2 --steps 2 --batch_size 4

``--suite trl``: this project's ``train_hw_parallel.py`` (one process, no DeepSpeed) against
TRL's ``SFTTrainer`` (``assistant_only_loss`` with the project's ChatML template carrying
``{% generation %}`` tags, sdpa) on the same work: the first ``--records`` demo records,
``--steps`` optimizer steps of ``--batch_size`` (no accumulation), ``--model_max_length``
tokens, cosine schedule, lr 5e-5, fp32, the Trainer's random sampler with the same seed
(the same batches). TRL's config defaults differ from ``TrainingArguments`` in two ways
that change the work: ``bf16`` (on unless fp16 is set, so a CPU run trains under bf16
autocast) and ``gradient_checkpointing`` (on: every layer's forward runs twice). Here
``bf16=False`` is set explicitly, and each ``--checkpointing`` setting (default ``off,on``)
runs both trainers with the same setting, so each pair does the same arithmetic. Each
trainer runs in its own process; printed side by side: the Trainer's ``train_runtime``, the
process's wall time, and its peak resident memory (the kernel's ``ru_maxrss`` of that
process alone). TRL is an optional install (``pip install --no-deps trl==1.16.0``, its other
dependencies are here); without it only this project's trainer runs, and the script says so.

    python benchmarks/train_throughput.py --suite trl                # 64 records, 16 steps of 4, 512 tokens

Batching suite. Data: IFEval prompts with GPT-4's answers as single-turn chats (realistic lengths). Model:
the SmolLM2-135M architecture (config.json of --model) with fewer layers, randomly
initialised, fp32 on CPU. One training step = forward, the Part 5 loss, backward, AdamW.
The first step of each variant is a warm-up and not timed. Trained tokens are the
labelled targets (after the causal shift) in the timed batches.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm

from smolsft.kernels import cpu_attention as cpu_attention
from smolsft.data import sft as sft_data
from smolsft.hardware.rules import training_attention
from smolsft.losses.fused import fused_linear_cross_entropy
from loss_functions import compute_loss_from_logits
from smolsft.kernels.rms_norm import fuse_rms_norms
from smolsft.files import REPO_ROOT, iter_jsonl, resolve_path
from smolsft.chat.tokenization import DEFAULT_MODEL, load_tokenizer


def chats_file(responses: Path, out: Path) -> Path:
    """gpt4_responses.jsonl ({prompt, response}) as {"messages": [user, assistant]} lines."""
    with open(out, "w") as g:
        for _, r in iter_jsonl(responses, "GPT-4 response"):
            g.write(json.dumps({"messages": [{"role": "user", "content": r["prompt"]},
                                             {"role": "assistant", "content": r["response"]}]}) + "\n")
    return out


def batches(dataset, batch_size: int, grouped: bool, n: int, seed: int):
    """Index lists of the first ``n`` batches: the Trainer's length-grouped sampler
    (what --group_by_length gives) or a plain random order."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    g = torch.Generator().manual_seed(seed)
    if grouped:
        order = list(LengthGroupedSampler(batch_size, lengths=dataset.lengths, generator=g))
    else:
        order = torch.randperm(len(dataset), generator=g).tolist()
    return [order[i * batch_size:(i + 1) * batch_size] for i in range(n)]


def run(model, dataset, collator, index_batches, desc: str) -> dict:
    """Train on the batches; returns timed seconds, trained tokens and padded positions."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    secs, trained, positions = 0.0, 0, 0
    for i, idx in enumerate(tqdm(index_batches, desc=desc, unit="step")):
        batch = collator([dataset[j] for j in idx])
        t0 = time.perf_counter()
        n_items = (batch["labels"][:, 1:] != -100).sum()
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        loss = compute_loss_from_logits(out, batch["labels"], num_items_in_batch=n_items)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i > 0:  # step 0 warms up allocators and kernels
            secs += time.perf_counter() - t0
            trained += int(n_items)
            positions += batch["input_ids"].numel()
    return {"seconds": secs, "trained_tokens": trained, "positions": positions,
            "tokens_per_s": trained / secs if secs else float("nan")}


# ------------------------------------------------------------------ precision suite
def matmul_peak_gflops(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    """The best of ``reps`` timed ``n x n @ n x n`` products in ``dtype``, in GFLOP/s
    (2 n^3 floating-point operations each), after one untimed product."""
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=g).to(dtype) for _ in range(2))
    c = torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b, out=c)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def batch_flops(cfg, n_params: int, rows: int, seq: int, targets: int) -> float:
    """Model FLOPs of one training micro-batch (forward + backward = 3 x forward), the
    usual count (Kaplan et al. 2020; PaLM, Chowdhery et al. 2022, appendix B):
    6 x (parameters outside the embedding) per computed position, 12 x layers x hidden x
    seq per position for attention (scores and weighted sum, the full square), and the
    output layer (``vocab x hidden``, tied to the embedding) only for the trained
    positions, which is all the fused loss computes it for. ``rows x seq`` is the padded
    batch. These are model FLOPs (as in model FLOPs utilisation): the attention term is
    counted whole although cpu_attention computes about half of it, so the fraction of the
    peak compares trainers, not kernels' arithmetic."""
    n_emb = cfg.vocab_size * cfg.hidden_size
    positions = rows * seq
    return (6 * (n_params - n_emb) * positions + 12 * cfg.num_hidden_layers * cfg.hidden_size * seq * positions
            + 6 * n_emb * targets)


def load_model(model_path: str, layers: Optional[int], attention: str = "sdpa"):
    """The pretrained model in fp32 for training, first ``layers`` decoder layers only if
    given, with ``attention`` (``sdpa`` or ``cpu_attention.NAME``)."""
    from transformers import AutoModelForCausalLM

    if attention == cpu_attention.NAME:
        cpu_attention.register()
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, attn_implementation=attention)
    if layers:  # the first N pretrained layers: a quicker run with the same layer shapes
        model.model.layers = model.model.layers[:layers]
        model.config.num_hidden_layers = layers
    model.config.use_cache = False
    fuse_rms_norms(model)  # as train_hw_parallel.py does on the CPU
    model.train()
    return model


def train_precision(model, dataset, collator, steps: list[list[list[int]]], precision: str, lr: float = 5e-5,
                    profile: bool = False) -> dict:
    """Train on ``steps`` (optimizer steps, each a list of micro-batches of dataset
    indices) in ``precision``; the first optimizer step is a warm-up and not timed.

    fp32: AdamW on the model's parameters. bf16: the model cast to bf16 for forward and
    backward; fp32 master copies of the parameters hold AdamW's state and step, the bf16
    gradients (summed over the micro-batches in bf16, as DeepSpeed ZeRO-2 does) are
    converted to fp32 before it, and the updated masters are copied back in bf16.
    ``phase_seconds`` splits the timed steps' seconds by phase (forward+loss, backward,
    grads to fp32, optimizer, masters to bf16); the rest (token counting) is the remainder.
    ``profile``: the last step also runs under ``torch.profiler`` (CPU), returned as
    ``"profile"`` (its events, parents linked), each phase a ``record_function`` range."""
    params = [p for p in model.parameters() if p.requires_grad]
    if precision == "bf16":
        masters = [p.detach().clone() for p in params]
        model.to(torch.bfloat16)
    else:
        masters = params
    # fused: the Trainer's default optimizer (adamw_torch_fused), which DeepSpeed's ZeRO-2 wraps.
    opt = torch.optim.AdamW(masters, lr=lr, fused=True)
    weight = model.get_output_embeddings().weight
    secs, trained, flops, phases = 0.0, 0, 0.0, collections.Counter()
    n_params = sum(p.numel() for p in params)
    prof = None
    for i, micro in enumerate(tqdm(steps, desc=precision, unit="step")):
        batches = [collator([dataset[j] for j in idx]) for idx in micro]
        if profile and i == len(steps) - 1:
            prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            prof.__enter__()
        t0 = time.perf_counter()
        n_items = sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches)
        marks = collections.Counter()

        @contextlib.contextmanager
        def phase(name):
            t = time.perf_counter()
            with torch.profiler.record_function(f"phase: {name}"):
                yield
            marks[name] += time.perf_counter() - t

        for b in batches:
            with phase("forward+loss"):
                hidden = model.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state
                loss = fused_linear_cross_entropy(hidden, weight, b["labels"], num_items_in_batch=n_items)
            with phase("backward"):
                loss.backward()
        with phase("grads to fp32"):
            if precision == "bf16":
                for m, p in zip(masters, params):
                    m.grad = p.grad.float()
                    p.grad = None
        with phase("optimizer"):
            opt.step()
            opt.zero_grad(set_to_none=True)
        with phase("masters to bf16"), torch.no_grad():
            if precision == "bf16":
                for m, p in zip(masters, params):
                    p.copy_(m)
        if prof is not None:
            prof.__exit__(None, None, None)
        if i > 0:  # step 0 warms up allocators and kernels
            secs += time.perf_counter() - t0
            phases.update(marks)
            trained += n_items
            flops += sum(batch_flops(model.config, n_params, *b["input_ids"].shape,
                                     int((b["labels"][:, 1:] != -100).sum())) for b in batches)
    return {"seconds": secs, "trained_tokens": trained, "tokens_per_s": trained / secs if secs else float("nan"),
            "gflops": flops / secs / 1e9 if secs else float("nan"), "phase_seconds": dict(phases),
            "profile": prof.events() if prof is not None else None}


def demo_steps(args, n_steps: int):
    """(model folder, data file, dataset, collator, masking stats, steps): the demo data
    masked as training masks it, and the first ``n_steps`` optimizer steps of the
    length-grouped order, each a list of ``--grad_accum`` micro-batches of dataset indices."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    model_path = resolve_path(args.model)
    data = resolve_path(args.data or "data/demo_sft.json")
    tok = load_tokenizer(model_path, args.model_max_length)
    arrays, stats = sft_data.build_features(data, tok, args.model_max_length, "right", 5, "assistant")
    dataset = sft_data.ConversationDataset(arrays)
    collator = sft_data.PadToLongestCollator.for_tokenizer(tok)
    per_step = args.batch_size * args.grad_accum
    order = list(LengthGroupedSampler(per_step, lengths=dataset.lengths, generator=torch.Generator().manual_seed(args.seed)))
    steps = [[order[s * per_step + m * args.batch_size:s * per_step + (m + 1) * args.batch_size]
              for m in range(args.grad_accum)] for s in range(n_steps)]
    return model_path, data, dataset, collator, stats, steps


def precision_suite(args) -> dict:
    model_path, data, dataset, collator, stats, steps = demo_steps(args, args.steps)
    print(f"data: {data} -> {sft_data.format_stats(stats)}; {args.steps} optimizer steps of {args.grad_accum} x "
          f"{args.batch_size} at most {args.model_max_length} tokens (the first untimed), "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}")
    from smolsft.hardware.cpu import describe

    print(f"CPU: {describe('auto')}")
    results = {}
    # fp32 and bf16 with the trainer's attention (training_attention: cpu_bmm on the CPU),
    # each after PyTorch's sdpa: the library kernel beside this project's.
    variants = (("fp32 sdpa", torch.float32, "sdpa"), ("fp32", torch.float32, cpu_attention.NAME),
                ("bf16 sdpa", torch.bfloat16, "sdpa"), ("bf16", torch.bfloat16, cpu_attention.NAME))
    peaks = {}
    for name, dtype, attention in variants:
        precision = name.split()[0]
        if precision not in peaks:
            peaks[precision] = matmul_peak_gflops(dtype)
        peak = peaks[precision]
        torch.manual_seed(args.seed)
        r = train_precision(load_model(model_path, args.layers, attention), dataset, collator, steps, precision)
        r.update(peak_gflops=peak, fraction_of_peak=r["gflops"] / peak, load_average=os.getloadavg()[0],
                 attention=attention)
        results[name] = r
        print(f"{name} ({attention}): {r['trained_tokens']} trained tokens in {r['seconds']:.1f}s = "
              f"{r['tokens_per_s']:.1f} tok/s, {r['gflops']:.1f} GFLOP/s = {r['fraction_of_peak']:.2f} of the "
              f"{precision} matmul peak {peak:.1f} GFLOP/s (2048^3, best of 5); load average {r['load_average']:.2f}",
              flush=True)
        print(f"{name} step phases (timed steps, s): " + ", ".join(f"{k} {v:.2f}" for k, v in r["phase_seconds"].items())
              + f"; other {r['seconds'] - sum(r['phase_seconds'].values()):.2f}", flush=True)
    f, b = results["fp32"], results["bf16"]
    for precision in ("fp32", "bf16"):
        ours, lib = results[precision], results[f"{precision} sdpa"]
        print(f"{precision} attention: {cpu_attention.NAME} {lib['seconds'] / ours['seconds']:.2f}x faster steps than "
              f"sdpa ({ours['seconds']:.1f}s vs {lib['seconds']:.1f}s)")
    print(f"bf16 vs fp32: {b['tokens_per_s'] / f['tokens_per_s']:.2f}x the trained tokens/s "
          f"(matmul peak {b['peak_gflops'] / f['peak_gflops']:.2f}x); bf16 at {b['fraction_of_peak']:.2f} of its peak, "
          f"fp32 at {f['fraction_of_peak']:.2f} [{args.layers or model_path} layers, {torch.get_num_threads()} threads]")
    return results


# ------------------------------------------------------------------- profile suite
# Operator groups of a training step, by the name of the op that spends the time (self time):
# first match wins; anything else is counted as "other" and still listed in the top ops.
# Ops inside the optimizer phases are one group whatever their names (AdamW on the CPU runs
# plain elementwise ops, one tensor at a time).
OPTIMIZER_GROUP = "optimizer step and master copies (its phases)"
OPTIMIZER_PHASES = ("grads to fp32", "optimizer", "masters to bf16")
ATTENTION_GROUP = "attention (sdpa kernels; cpu_bmm's ops)"
OP_GROUPS = (
    ("matmul (mm/addmm/bmm)", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")),
    (ATTENTION_GROUP, ("flash_attention", "scaled_dot_product", "_efficient_attention")),
    ("dtype casts and copies", ("aten::copy_", "aten::_to_copy", "aten::clone", "aten::contiguous")),
    ("elementwise (norm, activation, rotary, residual)",
     ("aten::mul", "aten::add", "aten::sub", "aten::div", "aten::pow", "aten::rsqrt", "aten::silu", "aten::neg",
      "aten::exp", "aten::log", "aten::where", "aten::fill_", "aten::zero_", "aten::cat", "aten::masked_fill",
      "silu_backward", "aten::mean", "aten::sum", "aten::amax", "aten::sqrt")),
    ("embedding and indexing", ("embedding", "index", "aten::gather", "aten::scatter")),
)


def op_group(name: str, phase: Optional[str] = None, in_attention: bool = False) -> str:
    """The group of an op named ``name`` that ran inside phase ``phase`` (None: outside all)
    and, ``in_attention``, inside cpu_attention's profiler range (its products and softmax)."""
    if phase in OPTIMIZER_PHASES:
        return OPTIMIZER_GROUP
    if in_attention:
        return ATTENTION_GROUP
    for group, keys in OP_GROUPS:
        if any(k in name for k in keys):
            return group
    return "other"


def ranges_of(event) -> tuple[Optional[str], bool]:
    """(the name of the ``phase: ...`` range a profiler event ran in or None, whether it
    ran inside cpu_attention's range)."""
    phase, in_attention = None, False
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("phase: ") and phase is None:
            phase = parent.name[len("phase: "):]
        in_attention = in_attention or parent.name == cpu_attention.PROFILE_RANGE
        parent = parent.cpu_parent
    return phase, in_attention


def profile_suite(args) -> dict:
    """One optimizer step per precision under ``torch.profiler`` after a warm-up step, on
    the precision suite's data and model: seconds per phase, per operator group (self CPU
    time of the ops, so nothing is counted twice) and the top operators."""
    model_path, _, dataset, collator, _, steps = demo_steps(args, 2)
    shapes = [tuple(collator([dataset[j] for j in idx])["input_ids"].shape) for idx in steps[1]]
    print(f"profiled step: micro-batches {shapes}, {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.2f}")
    results = {}
    for precision in args.precisions:
        torch.manual_seed(args.seed)
        attention = training_attention("auto", "cpu", precision)[0]  # the trainer's own, on the CPU
        r = train_precision(load_model(model_path, args.layers, attention), dataset, collator, steps, precision,
                            profile=True)
        events = [e for e in r.pop("profile")
                  if not e.name.startswith("ProfilerStep") and e.name != cpu_attention.PROFILE_RANGE]
        phases = collections.Counter()
        for e in events:
            if e.name.startswith("phase: "):
                phases[e.name[len("phase: "):]] += e.cpu_time_total / 1e6
        ops = [e for e in events if not e.name.startswith("phase: ")]
        groups, by_op, calls = collections.Counter(), collections.Counter(), collections.Counter()
        inside = 0.0  # self time of the ops that ran inside a phase: cannot exceed the phases' time
        for e in ops:
            (phase, in_attention), t = ranges_of(e), e.self_cpu_time_total / 1e6
            groups[op_group(e.name, phase, in_attention)] += t
            by_op[e.name] += t
            calls[e.name] += 1
            inside += t if phase is not None else 0.0
        total = sum(groups.values())
        print(f"\n{precision} ({attention}): profiled step {total:.2f} s of op self time; phases (s): "
              + ", ".join(f"{k} {v:.2f}" for k, v in phases.items()))
        print("| operator group | s | share |\n|---|---|---|")
        for g, v in groups.most_common():
            print(f"| {g} | {v:.2f} | {v / total:.1%} |")
        print("| top operators (self time) | calls | s | share |\n|---|---|---|---|")
        for name, t in by_op.most_common(args.top):
            print(f"| {name} | {calls[name]} | {t:.2f} | {t / total:.1%} |")
        results[precision] = {"phases": dict(phases), "groups": dict(groups), "total_s": total, "inside_s": inside}
    return results


# ------------------------------------------------------------------- batching suite
def batching_suite(args) -> dict:
    data = Path(args.data) if args.data else Path(os.environ.get("SHARED_DIR") or REPO_ROOT.parent / "shared") / "ifeval" / "gpt4_responses.jsonl"
    if not data.is_file():
        sys.exit(f"{data}: not found (pass --data or set SHARED_DIR)")
    model_path = resolve_path(args.model)
    tok = load_tokenizer(model_path, args.model_max_length)
    with tempfile.TemporaryDirectory() as tmp:
        arrays, stats = sft_data.build_features(str(chats_file(data, Path(tmp) / "chats.jsonl")), tok,
                                                args.model_max_length, "right", 0, "assistant")
    dataset = sft_data.ConversationDataset(arrays)
    print(f"data: {data} -> {sft_data.format_stats(stats)}; mean length {sum(dataset.lengths) / len(dataset):.0f}")

    from transformers import AutoConfig, LlamaForCausalLM

    cfg = AutoConfig.from_pretrained(model_path)
    cfg.num_hidden_layers = args.layers or 4
    torch.manual_seed(args.seed)
    init = LlamaForCausalLM(cfg).state_dict()
    results = {}
    variants = [
        # Samples are truncated to model_max_length, so rounding up to a multiple of it pads
        # every batch to exactly model_max_length: the course's pad-everything baseline.
        ("pad_to_max_length", sft_data.PadToLongestCollator.for_tokenizer(tok, multiple=args.model_max_length),
         False),
        ("default_batching", sft_data.PadToLongestCollator.for_tokenizer(tok), True),
    ]
    for name, collator, grouped in variants:
        model = LlamaForCausalLM(cfg)
        model.load_state_dict(init)
        model.train()
        results[name] = run(model, dataset, collator, batches(dataset, args.batch_size, grouped, args.steps, args.seed),
                            name)
        r = results[name]
        print(f"{name:>18}: {r['trained_tokens']} trained tokens in {r['seconds']:.1f}s = {r['tokens_per_s']:.1f} tok/s "
              f"({r['trained_tokens'] / max(r['positions'], 1):.1%} of computed positions trained)")
    ratio = results["default_batching"]["tokens_per_s"] / results["pad_to_max_length"]["tokens_per_s"]
    print(f"speedup (trained tokens/s, default batching vs pad to {args.model_max_length}): {ratio:.2f}x "
          f"[{args.layers or 4} layers, batch {args.batch_size}, {args.steps - 1} timed steps each, "
          f"{torch.get_num_threads()} threads]")
    return results


# ------------------------------------------------------------------------ trl suite
# The project's ChatML (chat_format.CHATML_TEMPLATE) with TRL's generation tags around what
# the assistant-only loss trains: each assistant message's content and its <|im_end|>.
TRL_TEMPLATE = (
    "{{ '\\n' }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Runs argv[1:] and prints the peak resident memory of that child alone (KiB, ru_maxrss).
_PEAK_WRAPPER = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
                 "print('PEAK_KIB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
                 "sys.exit(r.returncode)")


def _measured(cmd: list, log: Path, env: dict) -> dict:
    """Run ``cmd`` under the peak wrapper, output into ``log``; ``{wall_s, peak_gib}``.
    Raises ``RuntimeError`` naming the log when the command fails."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        r = subprocess.run([sys.executable, "-c", _PEAK_WRAPPER, *cmd], stdout=f, stderr=subprocess.STDOUT, env=env)
    wall = time.perf_counter() - t0
    text = log.read_text()
    if r.returncode != 0:
        raise RuntimeError(f"{cmd[1]} failed (exit {r.returncode}): see {log}")
    kib = int(text.rsplit("PEAK_KIB", 1)[1].split()[0])
    return {"wall_s": wall, "peak_gib": kib / 2 ** 20}


def trl_child(args) -> None:
    """One TRL SFTTrainer run (the ``--suite trl`` child); writes its metrics as JSON."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    messages = json.loads(Path(args.data).read_text())
    tok = load_tokenizer(args.model, args.model_max_length)
    tok.chat_template = TRL_TEMPLATE
    cfg = SFTConfig(output_dir=args.trl_child, per_device_train_batch_size=args.batch_size,
                    gradient_accumulation_steps=1, max_steps=args.steps, learning_rate=5e-5,
                    lr_scheduler_type="cosine", max_length=args.model_max_length, assistant_only_loss=True,
                    logging_steps=1, save_strategy="no", report_to="none", use_cpu=True,
                    dataloader_pin_memory=False, seed=args.seed,
                    # TRL's own defaults are bf16 autocast and gradient checkpointing; both set here.
                    bf16=False, fp16=False, gradient_checkpointing=args.trl_checkpointing == "on",
                    model_init_kwargs={"dtype": torch.float32, "attn_implementation": "sdpa"})
    trainer = SFTTrainer(model=str(args.model), args=cfg, train_dataset=Dataset.from_list(messages),
                         processing_class=tok)
    # A failed check ends the child, and the parent's _measured names its log.
    assert not (trainer.args.bf16 or trainer.args.fp16), "the TRL run must train in fp32"
    assert trainer.model.dtype == torch.float32, trainer.model.dtype
    assert trainer.args.gradient_checkpointing == (args.trl_checkpointing == "on"), trainer.args.gradient_checkpointing
    metrics = trainer.train().metrics
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    Path(args.trl_child, "metrics.json").write_text(json.dumps({**metrics, "losses": losses}))


def trl_suite(args) -> dict:
    import importlib.util

    from smolsft.chat.format import normalize_conversation

    model = resolve_path(args.model)
    records = json.loads(Path(resolve_path(args.data or "data/demo_sft.json")).read_text())[:args.records]
    work = Path(tempfile.mkdtemp(prefix="trl_suite_"))
    data = work / "records.json"
    data.write_text(json.dumps([{"messages": normalize_conversation(r.get("conversations") or r.get("messages"))}
                                for r in records]))
    threads = str(args.threads or len(os.sched_getaffinity(0)))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false"}
    print(f"work: {len(records)} records, {args.steps} steps of {args.batch_size}, {args.model_max_length} tokens, "
          f"cosine, lr 5e-5, fp32, {threads} threads, random sampler seed {args.seed}; load {os.getloadavg()[0]:.2f}")
    have_trl = importlib.util.find_spec("trl") is not None
    if not have_trl:
        print("TRL is not installed (pip install --no-deps trl==1.16.0): only this project's trainer is measured")
    results = {}
    for ckpt in args.checkpointing:
        tag = f"checkpointing {ckpt}"
        ours = [sys.executable, str(REPO_ROOT / "train_hw_parallel.py"), "--model_name_or_path", str(model),
                "--data_path", str(data), "--output_dir", str(work / f"ours_{ckpt}"),
                "--data_cache_dir", str(work / "cache"),
                "--model_max_length", str(args.model_max_length), "--per_device_train_batch_size", str(args.batch_size),
                "--gradient_accumulation_steps", "1", "--max_steps", str(args.steps), "--learning_rate", "5e-5",
                "--lr_scheduler_type", "cosine", "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none",
                "--dataloader_pin_memory", "False", "--precision", "fp32", "--seed", str(args.seed),
                "--train_sampling_strategy", "random", "--gradient_checkpointing", str(ckpt == "on")]
        r = _measured(ours, work / f"ours_{ckpt}.log", env)
        state = json.loads((work / f"ours_{ckpt}" / "trainer_state.json").read_text())
        r["train_runtime"] = next(h["train_runtime"] for h in state["log_history"] if "train_runtime" in h)
        r["losses"] = [h["loss"] for h in state["log_history"] if "loss" in h]
        r["label"] = f"this project (train_hw_parallel.py), {tag}"
        results[f"ours_{ckpt}"] = r
        if have_trl:
            from importlib.metadata import version

            cmd = [sys.executable, str(Path(__file__).resolve()), "--suite", "trl",
                   "--trl_child", str(work / f"trl_{ckpt}"), "--trl_checkpointing", ckpt,
                   "--model", str(model), "--data", str(data), "--steps", str(args.steps),
                   "--batch_size", str(args.batch_size), "--model_max_length", str(args.model_max_length),
                   "--seed", str(args.seed)]
            r = _measured(cmd, work / f"trl_{ckpt}.log", env)
            m = json.loads((work / f"trl_{ckpt}" / "metrics.json").read_text())
            r.update(train_runtime=m["train_runtime"], losses=m["losses"],
                     label=f"TRL {version('trl')} SFTTrainer, {tag}" + (" (TRL's default)" if ckpt == "on" else ""))
            results[f"trl_{ckpt}"] = r
        print(f"[{tag}] done; load {os.getloadavg()[0]:.2f}", flush=True)
    print("| trainer | train_runtime s | process wall s | peak resident GiB | first / last loss |")
    print("|---|---|---|---|---|")
    for r in results.values():
        print(f"| {r['label']} | {r['train_runtime']:.1f} | {r['wall_s']:.1f} | {r['peak_gib']:.2f} | "
              f"{r['losses'][0]:.4f} / {r['losses'][-1]:.4f} |")
    for ckpt in args.checkpointing:
        if f"trl_{ckpt}" in results:
            o, t = results[f"ours_{ckpt}"], results[f"trl_{ckpt}"]
            print(f"checkpointing {ckpt}, fp32: this project vs TRL {t['train_runtime'] / o['train_runtime']:.2f}x "
                  f"faster (train_runtime), {t['wall_s'] / o['wall_s']:.2f}x (process), peak memory "
                  f"{o['peak_gib']:.2f} vs {t['peak_gib']:.2f} GiB ({o['peak_gib'] / t['peak_gib']:.2f}x)")
    print(f"load {os.getloadavg()[0]:.2f}")
    print(f"logs: {work}")
    return results


def _choices(*allowed: str):
    """An argparse type: a comma-separated list of ``allowed`` values (else a usage error)."""
    def parse(value: str) -> list:
        items = value.split(",")
        bad = [v for v in items if v not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(f"{','.join(bad)} not in {', '.join(allowed)}")
        return items
    return parse


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", choices=["precision", "batching", "trl", "profile"], default="precision",
                    help="precision (default): fp32 vs bf16 on the demo data; batching: length-grouped vs padded; "
                         "trl: this project's trainer vs TRL's SFTTrainer, time and peak memory; profile: one "
                         "step of the precision suite under torch.profiler, by phase and operator")
    ap.add_argument("--precisions", type=_choices("bf16", "fp32"), default=["bf16", "fp32"],
                    help="profile: the precisions to profile (default bf16,fp32)")
    ap.add_argument("--top", type=int, default=15, help="profile: how many operators to list")
    ap.add_argument("--data", help="precision: chat data (default data/demo_sft.json); batching: gpt4_responses.jsonl "
                                   "(default SHARED_DIR/ifeval/gpt4_responses.jsonl)")
    ap.add_argument("--model", default=DEFAULT_MODEL, help="folder with the tokenizer and config.json (and, for the "
                                                           "precision suite, the pretrained weights)")
    ap.add_argument("--layers", type=int, default=None,
                    help="decoder layers (precision: the first N pretrained ones, default all 30; batching: a "
                         "randomly initialised model of N layers, default 4)")
    ap.add_argument("--batch_size", type=int, default=4)
    ap.add_argument("--grad_accum", type=int, default=2, help="precision: micro-batches per optimizer step")
    ap.add_argument("--steps", type=int, default=None,
                    help="steps per variant, the first one untimed (precision: optimizer steps, default 3; "
                         "batching: default 4)")
    ap.add_argument("--model_max_length", type=int, default=None, help="default 512 (precision), 2048 (batching)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--records", type=int, default=64, help="trl: the first N records of the data (default 64)")
    ap.add_argument("--checkpointing", type=_choices("off", "on"), default=["off", "on"],
                    help="trl: gradient checkpointing settings to run, each for both trainers (default off,on)")
    ap.add_argument("--trl_child", help=argparse.SUPPRESS)  # the trl suite's TRL process: its output folder
    ap.add_argument("--trl_checkpointing", default="off", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.suite == "trl":
        args.steps = args.steps or 16
        args.model_max_length = args.model_max_length or 512
        if args.trl_child:
            return trl_child(args)
        return trl_suite(args)
    if args.suite == "profile":
        args.model_max_length = args.model_max_length or 512
        return profile_suite(args)
    if args.suite == "precision":
        args.steps = args.steps or 3
        args.model_max_length = args.model_max_length or 512
        return precision_suite(args)
    args.steps = args.steps or 4
    args.model_max_length = args.model_max_length or 2048
    return batching_suite(args)


if __name__ == "__main__":
    main()
