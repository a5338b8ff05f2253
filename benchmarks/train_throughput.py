"""Trained tokens per second: the project's batching (unpadded samples, length-grouped,
each batch padded to its longest member rounded to 8) against the course's
pad-every-sample-to-model_max_length, in one run on the same model and data.

    python benchmarks/train_throughput.py                       # ../shared/ifeval/gpt4_responses.jsonl
    python benchmarks/train_throughput.py --layers 2 --steps 2 --batch_size 4

Data: IFEval prompts with GPT-4's answers as single-turn chats (realistic lengths). Model:
the SmolLM2-135M architecture (config.json of --model) with fewer layers, randomly
initialised, fp32 on CPU. One training step = forward, the Part 5 loss, backward, AdamW.
The first step of each variant is a warm-up and not timed. Trained tokens are the
labelled targets (after the causal shift) in the timed batches.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from tqdm import tqdm

import sft_data
from loss_functions import compute_loss_from_logits
from fileio import REPO_ROOT, iter_jsonl, resolve_path
from tokenization import DEFAULT_MODEL, load_tokenizer


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


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="gpt4_responses.jsonl (default: SHARED_DIR/ifeval/gpt4_responses.jsonl)")
    ap.add_argument("--model", default=DEFAULT_MODEL, help="folder with the tokenizer and config.json")
    ap.add_argument("--layers", type=int, default=4, help="decoder layers (the real model has 30)")
    ap.add_argument("--batch_size", type=int, default=4)
    ap.add_argument("--steps", type=int, default=4, help="steps per variant, the first one untimed")
    ap.add_argument("--model_max_length", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

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
    cfg.num_hidden_layers = args.layers
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
          f"[{args.layers} layers, batch {args.batch_size}, {args.steps - 1} timed steps each, "
          f"{torch.get_num_threads()} threads]")


if __name__ == "__main__":
    main()
