"""Benchmark: one-pass masking (``conversation_to_features``) vs the course's prefix method.

Data: GPT-4's IFEval answers (``../shared/ifeval/gpt4_responses.jsonl``, or ``--data``)
as single-turn chats, plus the same (prompt, response) pairs chained six at a time into
6-round chats. Both methods run in the same process on the same conversations,
interleaved conversation by conversation so that load from other processes hits both
alike; every output of the one-pass path is compared with the prefix method's.

    python benchmarks/preprocess.py [--data PATH] [--repeats 2] [--mode forward|reverse|both]

Prints the time per call of each method, the speedup, the batched API's time per
conversation (one tokenizer call per chunk, which the tokenizer may spread over cores), the time of a bare tokenization
of each rendering (the floor of any exact method) and whether all outputs are
identical; exits 1 if any output differs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from conversation_func import (
    ASSISTANT_ROLES,
    _labels_from_spans,
    _window,
    conversation_to_features,
    conversations_to_unpadded,
    pad_features,
    spans_by_prefix,
)
from reverse_conversation_func import (
    USER_ROLES,
    reverse_conversation_to_features,
    reverse_conversations_to_unpadded,
    reverse_messages,
)
from smolsft.chat.format import validate_messages
from smolsft.files import REPO_ROOT
from smolsft.chat.tokenization import DEFAULT_MODEL, load_tokenizer, pad_token_id


def prefix_features(messages, tokenizer, max_length: int, truncation: str, train_roles) -> dict:
    """The baseline: the masking core's own steps with every span found by the course's
    prefix method (``spans_by_prefix``) instead of one pass."""
    validate_messages(messages)
    ids, bounds = spans_by_prefix(list(messages), tokenizer)
    unpadded = _window(*_labels_from_spans(messages, ids, bounds, train_roles), max_length, truncation)
    return pad_features(unpadded, max_length, pad_token_id(tokenizer))


def forward_prefix(messages, tokenizer, max_length, truncation):
    return prefix_features(messages, tokenizer, max_length, truncation, ASSISTANT_ROLES)


def reverse_prefix(messages, tokenizer, max_length, truncation):
    return prefix_features(reverse_messages(messages), tokenizer, max_length, truncation, USER_ROLES)


def load_chats(path: Path, rounds: int = 6, limit: int = 0) -> tuple[list, list]:
    """(single-turn chats, chats of ``rounds`` consecutive pairs), from the first ``limit``
    pairs when ``limit`` > 0; a bad line is an error naming it."""
    pairs = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            rec = json.loads(line)
            if not isinstance(rec.get("prompt"), str) or not isinstance(rec.get("response"), str):
                raise SystemExit(f"{path}:{lineno}: expected string 'prompt' and 'response'")
            pairs.append([{"role": "user", "content": rec["prompt"]}, {"role": "assistant", "content": rec["response"]}])
    pairs = pairs[:limit] if limit > 0 else pairs
    chained = [sum(pairs[i:i + rounds], []) for i in range(0, len(pairs) - rounds + 1, rounds)]
    return pairs, chained


def same(a, b) -> bool:
    if a is None or b is None:
        return a is b
    return all(torch.equal(a[k], b[k]) for k in ("input_ids", "labels", "attention_mask"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Speed of one-pass masking vs the prefix method, with an identity check.")
    shared = Path(os.environ.get("SHARED_DIR") or REPO_ROOT.parent / "shared")
    default_data = shared / "ifeval" / "gpt4_responses.jsonl" if shared.is_dir() else None
    ap.add_argument("--data", default=str(default_data) if default_data else None,
                    help="JSONL with prompt/response (default: ../shared/ifeval/gpt4_responses.jsonl)")
    ap.add_argument("--model_name", default=DEFAULT_MODEL, help="tokenizer (default: %(default)s)")
    ap.add_argument("--max_length", type=int, default=2048, help="max_length (default: %(default)s)")
    ap.add_argument("--truncation", choices=("left", "right"), default="left")
    ap.add_argument("--mode", choices=("forward", "reverse", "both"), default="forward",
                    help="which masking to time (default: forward, i.e. conversation_to_features)")
    ap.add_argument("--repeats", type=int, default=2, help="passes over the data (default: %(default)s)")
    ap.add_argument("--batch", type=int, default=64, help="conversations per call of the batched API (default: %(default)s)")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N pairs (0: all)")
    args = ap.parse_args(argv)
    if not args.data or not Path(args.data).exists():
        raise SystemExit(f"data file not found: {args.data} (pass --data)")

    tokenizer = load_tokenizer(args.model_name, args.max_length)
    single, chained = load_chats(Path(args.data), limit=args.limit)
    chats = single + chained
    # (one-pass function, its prefix-method baseline)
    pairs = {"forward": [(conversation_to_features, forward_prefix)],
             "reverse": [(reverse_conversation_to_features, reverse_prefix)]}
    pairs["both"] = pairs["forward"] + pairs["reverse"]
    fns = pairs[args.mode]
    print(f"data: {args.data}: {len(single)} single-turn + {len(chained)} six-round chats; "
          f"mode={args.mode}, max_length={args.max_length}, truncation={args.truncation}, repeats={args.repeats}")

    t_fast = t_prefix = t_bare = 0.0
    calls = mismatches = 0
    for _ in range(args.repeats):
        for k, msgs in enumerate(tqdm(chats, desc="conversations", leave=False)):
            for fast_fn, prefix_fn in fns:
                # Alternate which method goes first: the first call on a new conversation
                # pays for cold caches, and neither method should always get the warm turn.
                order = ("fast", "prefix") if k % 2 == 0 else ("prefix", "fast")
                out = {}
                for which in order:
                    fn = fast_fn if which == "fast" else prefix_fn
                    t0 = time.perf_counter()
                    out[which] = fn(msgs, tokenizer, args.max_length, args.truncation)
                    dt = time.perf_counter() - t0
                    if which == "fast":
                        t_fast += dt
                    else:
                        t_prefix += dt
                calls += 1
                mismatches += not same(out["fast"], out["prefix"])
        # The floor for any exact method: one bare tokenization of each rendering.
        for msgs in chats:
            text = tokenizer.apply_chat_template(msgs, tokenize=False)
            t0 = time.perf_counter()
            tokenizer.backend_tokenizer.encode(text, add_special_tokens=False)
            t_bare += (time.perf_counter() - t0) * len(fns)
    # Bulk preprocessing: the batched API (one tokenizer call per chunk), same outputs.
    batch_fns = {conversation_to_features: conversations_to_unpadded,
                 reverse_conversation_to_features: reverse_conversations_to_unpadded}
    t_batch = 0.0
    for fn, _ in fns:
        for start in range(0, len(chats), args.batch):
            chunk = chats[start:start + args.batch]
            t0 = time.perf_counter()
            feats = [pad_features(u, args.max_length, pad_token_id(tokenizer))
                     for u in batch_fns[fn](chunk, tokenizer, args.max_length, args.truncation)]
            t_batch += time.perf_counter() - t0
            mismatches += sum(not same(f, fn(m, tokenizer, args.max_length, args.truncation)) for f, m in zip(feats, chunk))
    n_batch = len(chats) * len(fns)
    per = {name: t / calls * 1e3 for name, t in (("fast", t_fast), ("prefix", t_prefix), ("bare", t_bare))}
    print(f"prefix method: {per['prefix']:.3f} ms/call; one pass: {per['fast']:.3f} ms/call; "
          f"a bare tokenization alone: {per['bare']:.3f} ms ({t_prefix / t_bare:.2f}x)")
    print(f"batched ({args.batch} conversations per call, tokenizer threads allowed): "
          f"{t_batch / n_batch * 1e3:.3f} ms/conversation ({t_prefix / calls / (t_batch / n_batch):.2f}x the prefix method)")
    print(f"speedup {t_prefix / t_fast:.2f}x over {calls} calls ({len(chats)} conversations x {args.repeats} "
          f"repeats x {len(fns)} masking); outputs identical: {'yes' if mismatches == 0 else f'NO ({mismatches} differ)'}")
    return 0 if mismatches == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
