"""Write the golden files for Parts 1-4 with the course's straightforward prefix method.

This is the independent reference the fast masking in ``conversation_func.py`` is
checked against, so it deliberately shares none of that code: it renders every prefix
of a conversation with the tokenizer's own chat template (``apply_chat_template``), reads
each message's token span off the growing prefix lengths, and builds labels, truncation
and padding in plain loops. Only the tokenizer setup and the input validation come
from ``tokenization`` and ``chat_format``, as for everything else in the project.

    python generate_golden_answers.py                      # the repo's samples -> the two golden files
    python generate_golden_answers.py --samples S.json --forward_out F.json --reverse_out R.json

Output layout (the course's): ``{"meta", "single_turn": [{"id", "features":
{"input_ids", "labels", "attention_mask"}}], "multi_turn": [...]}``, lists of
``model_max_length`` ints, one sample per line.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from tqdm import tqdm

from utils import DEFAULT_MODEL, IGNORE_TOKEN_ID, is_single_turn_conversation, load_tokenizer, validate_messages

REPO_ROOT = Path(__file__).resolve().parent

SPLITS = ("single_turn", "multi_turn")
# The course's Part 4 system message, written out here so this reference path shares no code with
# reverse_conversation_func.py (the code under test).
REVERSE_SYSTEM_PROMPT = "You are a good state predictor."


def prefix_token_lengths(messages: list[dict], tokenizer) -> list[int]:
    """``[0, len(tok(render(m[:1]))), ..., len(tok(render(m)))]``: one full chat-template
    rendering and tokenization per prefix (the empty prefix renders nothing). Raises
    ``ValueError`` when a prefix's tokens are not a prefix of the whole conversation's
    (the lengths would then not be span boundaries: a template that rewrites earlier
    turns, or BPE merging across a boundary)."""
    lengths = [0]
    full = list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False, add_generation_prompt=False))
    for i in range(1, len(messages) + 1):
        ids = list(tokenizer.apply_chat_template(messages[:i], tokenize=True, return_dict=False,
                                                 add_generation_prompt=False))
        if full[:len(ids)] != ids:
            raise ValueError(f"message {i - 1} ({messages[i - 1]['role']}): the tokens of messages 0..{i - 1} are "
                             f"not a prefix of the whole conversation's; the prefix method does not apply to this "
                             f"chat template")
        lengths.append(len(ids))
    return lengths


def reference_features(messages: list[dict], tokenizer, max_length: int, truncation: str, trained_role: str,
                       train_turns: str = "all"):
    """Padded features as plain int lists (``None`` for an empty conversation): labels
    copy the ids on every span of ``trained_role`` (``train_turns="last"``: only on the
    last message of that role), a message's own ``"train"`` flag deciding for itself
    where it has one; then truncate, then right-pad. The golden files use the defaults
    (every turn, no flags)."""
    validate_messages(messages)
    if not messages:
        return None
    full_ids = list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False, add_generation_prompt=False))
    lengths = prefix_token_lengths(messages, tokenizer)
    of_role = [i for i, m in enumerate(messages) if m["role"] == trained_role]
    trained = []
    for i, m in enumerate(messages):
        if "train" in m:
            trained.append(m["train"] is True)
        elif train_turns == "last":
            trained.append(bool(of_role) and i == of_role[-1])
        else:
            trained.append(m["role"] == trained_role)
    labels = []
    for pos in range(len(full_ids)):
        # The message owning token pos: the last i whose prefix length is <= pos.
        owner = max(i for i in range(len(messages)) if min(lengths[i], len(full_ids)) <= pos)
        labels.append(full_ids[pos] if trained[owner] else IGNORE_TOKEN_ID)
    if len(full_ids) > max_length:
        if truncation == "left":
            full_ids, labels = full_ids[-max_length:], labels[-max_length:]
        else:
            full_ids, labels = full_ids[:max_length], labels[:max_length]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    n_pad = max_length - len(full_ids)
    return {
        "input_ids": full_ids + [pad_id] * n_pad,
        "labels": labels + [IGNORE_TOKEN_ID] * n_pad,
        "attention_mask": [1] * len(full_ids) + [0] * n_pad,
    }


def reversed_for_training(messages: list[dict]) -> list[dict]:
    """Part 3: a single-turn chat becomes system (if any), then the assistant message,
    then the user message. Part 4: a longer chat gets the reverse system prompt in front
    unless it already starts with a system message."""
    if is_single_turn_conversation(messages):
        order = {"system": 0, "assistant": 1, "user": 2}
        return sorted(messages, key=lambda m: order[m["role"]])
    if messages and messages[0]["role"] == "system":
        return list(messages)
    return [{"role": "system", "content": REVERSE_SYSTEM_PROMPT}] + list(messages)


def forward_reference(messages, tokenizer, max_length, truncation, train_turns="all"):
    """Parts 1-2 reference: assistant spans trained."""
    return reference_features(messages, tokenizer, max_length, truncation, "assistant", train_turns)


def reverse_reference(messages, tokenizer, max_length, truncation, train_turns="all"):
    """Parts 3-4 reference: user spans trained after reordering / system insertion."""
    validate_messages(messages)
    return reference_features(reversed_for_training(messages), tokenizer, max_length, truncation, "user", train_turns)


def write_golden(path: Path, meta: dict, entries: dict) -> None:
    """The course layout, one sample per line so diffs and file sizes stay readable."""
    lines = ["{", f'  "meta": {json.dumps(meta)},']
    for s, split in enumerate(SPLITS):
        lines.append(f'  "{split}": [')
        rows = [f"    {json.dumps(e, separators=(',', ':'))}" for e in entries[split]]
        lines.append(",\n".join(rows))
        lines.append("  ]" + ("," if s + 1 < len(SPLITS) else ""))
    lines.append("}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Generate Part 1-4 golden files with the prefix method.")
    ap.add_argument("--samples", default=str(REPO_ROOT / "exercise_samples.json"), help="samples JSON (default: the repo's)")
    ap.add_argument("--forward_out", default=str(REPO_ROOT / "exercise_solutions.json"), help="Parts 1-2 golden output")
    ap.add_argument("--reverse_out", default=str(REPO_ROOT / "reverse_exercise_solutions.json"), help="Parts 3-4 golden output")
    ap.add_argument("--model_name", default=DEFAULT_MODEL, help="tokenizer folder or hub id (default: %(default)s)")
    ap.add_argument("--model_max_length", type=int, default=2048, help="max_length (default: %(default)s)")
    ap.add_argument("--truncation", choices=("left", "right"), default="left", help="truncation side (default: %(default)s)")
    args = ap.parse_args(argv)

    samples_path = Path(args.samples)
    samples = json.loads(samples_path.read_text(encoding="utf-8"))
    tokenizer = load_tokenizer(args.model_name, args.model_max_length)
    meta = {"samples_path": samples_path.name, "model_name": args.model_name,
            "model_max_length": args.model_max_length, "truncation": args.truncation}
    counts = {}
    for out, fn in ((args.forward_out, forward_reference), (args.reverse_out, reverse_reference)):
        entries = {split: [] for split in SPLITS}
        for split in SPLITS:
            for k, sample in enumerate(tqdm(samples.get(split, []), desc=f"{Path(out).name} {split}", leave=False)):
                try:
                    feats = fn(sample["messages"], tokenizer, args.model_max_length, args.truncation)
                except (KeyError, ValueError) as e:
                    raise SystemExit(f"{samples_path}: {split}[{k}] (id {sample.get('id')!r}): {e}")
                entries[split].append({"id": sample.get("id", k), "features": feats})
        write_golden(Path(out), meta, entries)
        counts[out] = {split: len(v) for split, v in entries.items()}
    print("wrote " + "; ".join(f"{p}: {c['single_turn']} single-turn + {c['multi_turn']} multi-turn" for p, c in counts.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
