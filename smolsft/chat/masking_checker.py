"""The golden-file checker of Parts 1-4: compute the masking of every sample and compare
it token by token with a golden file (the course's layout: ``{"meta", "single_turn":
[{"id", "features": {"input_ids", "labels", "attention_mask"}}], "multi_turn": [...]}``).

It is the ``__main__`` of ``conversation_func.py`` (Parts 1-2, ``exercise_solutions.json``)
and ``reverse_conversation_func.py`` (Parts 3-4, ``reverse_exercise_solutions.json``)::

    python conversation_func.py [--multi_turn] [--samples P] [--golden P] [--show N]
    python reverse_conversation_func.py [--multi_turn] ...

Exit code 0 only when every sample matches, 1 on any mismatch, 2 when a file cannot be
read. A mismatch prints the first differing position of each field with the tokens
around it; ``--show N`` prints N samples with the trained tokens marked.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Optional

from smolsft.chat.format import IGNORE_TOKEN_ID, TRUNCATION_SIDES, ConversationFormatError
from smolsft.files import REPO_ROOT
from smolsft.chat.tokenization import DEFAULT_MODEL, load_tokenizer


def _tokens_around(tokenizer, ids: list, pos: int, width: int = 4) -> str:
    lo, hi = max(0, pos - width), min(len(ids), pos + width + 1)
    shown = []
    for j in range(lo, hi):
        t = ids[j]
        txt = repr(tokenizer.decode([t])) if isinstance(t, int) and t >= 0 else str(t)
        shown.append(("->" if j == pos else "") + f"{t}:{txt}")
    return " ".join(shown)


def first_mismatch(got: list, want: list) -> Optional[int]:
    """First index where two lists differ (a length difference counts), else None."""
    for j, (a, b) in enumerate(zip(got, want)):
        if a != b:
            return j
    return None if len(got) == len(want) else min(len(got), len(want))


def marked_text(tokenizer, features: dict, start: str = "[[", end: str = "]]") -> str:
    """The real tokens of a sample decoded, with every trained run wrapped in markers."""
    ids = [int(x) for x in features["input_ids"]]
    labels = [int(x) for x in features["labels"]]
    n = int(sum(int(x) for x in features["attention_mask"]))
    out, j = [], 0
    while j < n:
        trained = labels[j] != IGNORE_TOKEN_ID
        k = j
        while k < n and (labels[k] != IGNORE_TOKEN_ID) == trained:
            k += 1
        text = tokenizer.decode(ids[j:k])
        out.append(start + text + end if trained else text)
        j = k
    return "".join(out)


def build_parser(description: str, default_golden: str) -> argparse.ArgumentParser:
    """The checker's flags; ``default_golden`` is the golden file's name in the repository."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--multi_turn", action="store_true", help="check the multi_turn list (default: single_turn)")
    ap.add_argument("--samples", default=str(REPO_ROOT / "exercise_samples.json"), help="samples JSON (default: the repo's)")
    ap.add_argument("--golden", default=str(REPO_ROOT / default_golden), help=f"golden JSON (default: the repo's {default_golden})")
    ap.add_argument("--model_name", default=DEFAULT_MODEL, help="tokenizer folder or hub id (default: %(default)s)")
    ap.add_argument("--model_max_length", type=int, default=None,
                    help="max_length (default: the golden file's meta.model_max_length, else 2048)")
    ap.add_argument("--truncation", choices=TRUNCATION_SIDES, default=None,
                    help="truncation side (default: the golden file's meta.truncation, else left)")
    ap.add_argument("--show", type=int, default=0, metavar="N", help="print N samples with trained tokens marked")
    return ap


class _Unreadable(Exception):
    """A samples or golden file that cannot be used (exit code 2); the message says why."""


def load_files(samples_path: str, golden_path: str, split: str) -> tuple[dict, dict]:
    """``(samples, golden)`` documents, each holding ``split``; raises :class:`_Unreadable`."""
    try:
        samples = json.loads(Path(samples_path).read_text(encoding="utf-8"))
        golden = json.loads(Path(golden_path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise _Unreadable(f"error: cannot read {samples_path} / {golden_path}: {e}") from None
    for name, doc in ((samples_path, samples), (golden_path, golden)):
        if split not in doc:
            raise _Unreadable(f"error: {name} has no '{split}' list (keys: {sorted(doc)})")
    return samples, golden


def feature_problems(tokenizer, got: Optional[dict], exp: Optional[dict]) -> list[str]:
    """How computed features ``got`` differ from the golden ``exp`` (lists per field;
    ``None`` for no sample): per field, the first differing position with the tokens
    around it. ``[]`` when they match."""
    if got is None or exp is None:
        if got == exp:
            return []
        return [f"features: got {'None' if got is None else 'a sample'}, golden {'None' if exp is None else 'a sample'}"]
    problems = []
    for field in ("input_ids", "labels", "attention_mask"):
        pos = first_mismatch(got[field], exp.get(field, []))
        if pos is not None:
            problems.append(
                f"field {field} differs first at position {pos} "
                f"(len got {len(got[field])}, golden {len(exp.get(field, []))})\n"
                f"      got:    {_tokens_around(tokenizer, got[field], pos)}\n"
                f"      golden: {_tokens_around(tokenizer, exp.get(field, []), pos)}\n"
                f"      text:   {_tokens_around(tokenizer, got['input_ids'], pos)}"
            )
    return problems


def check_sample(k: int, sample: dict, want: dict, feature_fn: Callable, tokenizer, max_length: int,
                 truncation: str, samples_path: str, show: bool) -> bool:
    """Compute sample ``k``'s features, compare them with its golden entry ``want`` and
    print one verdict line (with the differences, and the marked text when ``show``).
    True when they match."""
    sid = sample.get("id", k)
    if want.get("id") != sid:
        print(f"[{k}] id {sid}: MISMATCH golden entry has id {want.get('id')!r}")
        return False
    try:
        feats = feature_fn(sample.get("messages"), tokenizer, max_length, truncation)
    except ConversationFormatError as e:
        print(f"[{k}] id {sid}: ERROR in {samples_path}: {e}")
        return False
    got = {f: v.tolist() for f, v in feats.items()} if feats is not None else None
    problems = feature_problems(tokenizer, got, want.get("features"))
    if problems:
        print(f"[{k}] id {sid}: MISMATCH ({len(sample['messages'])} messages)")
        for p in problems:
            print("    " + p)
    else:
        n_tok = sum(got["attention_mask"]) if got else 0
        n_lab = sum(1 for x in got["labels"] if x != IGNORE_TOKEN_ID) if got else 0
        print(f"[{k}] id {sid}: ok ({len(sample['messages'])} messages, {n_tok} tokens, {n_lab} trained)")
    if show and got is not None:
        # Colour on a terminal; plain [[ ]] markers when piped to a file.
        marks = ("\x1b[1;32m[[", "]]\x1b[0m") if sys.stdout.isatty() else ("[[", "]]")
        print(f"---- id {sid}: trained tokens inside [[ ]] ----\n{marked_text(tokenizer, got, *marks)}\n----")
    return not problems


def run_checker(feature_fn: Callable, description: str, default_golden: str, argv=None) -> int:
    """The checker CLI shared by ``conversation_func.py`` and ``reverse_conversation_func.py``:
    compute features for every sample of the chosen list with ``feature_fn`` and compare
    them with the golden file. Returns the process exit code (0 only if all match, 1 on a
    mismatch, 2 for an unreadable file)."""
    args = build_parser(description, default_golden).parse_args(argv)
    split = "multi_turn" if args.multi_turn else "single_turn"
    try:
        samples, golden = load_files(args.samples, args.golden, split)
    except _Unreadable as e:
        print(e, file=sys.stderr)
        return 2
    meta = golden.get("meta", {})
    max_length = args.model_max_length or int(meta.get("model_max_length", 2048))
    truncation = args.truncation or meta.get("truncation", "left")
    tokenizer = load_tokenizer(args.model_name, max_length)
    print(f"checking {split}: {args.samples} vs {args.golden} (max_length={max_length}, truncation={truncation})")
    want_list = golden[split]
    n_bad = 0
    if len(want_list) != len(samples[split]):
        print(f"MISMATCH: {len(samples[split])} samples but {len(want_list)} golden entries")
        n_bad += 1
    n_ok = 0
    for k, (sample, want) in enumerate(zip(samples[split], want_list)):
        ok = check_sample(k, sample, want, feature_fn, tokenizer, max_length, truncation, args.samples, k < args.show)
        n_ok, n_bad = n_ok + ok, n_bad + (not ok)
    total = len(samples[split])
    print(f"{split}: {n_ok}/{total} samples match" + ("" if n_bad == 0 else f", {n_bad} mismatches"))
    return 0 if n_bad == 0 else 1
