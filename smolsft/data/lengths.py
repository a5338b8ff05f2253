"""The shortest ``--model_max_length`` a data file can train at: a sample trains only when its
first trained token (after the header: the chat template's opening and the untrained turns
before it) falls inside the length; with right truncation a shorter length drops every sample.
Checked by ``scripts/sweep.py`` before any configuration trains."""
from __future__ import annotations

from typing import Optional

import numpy as np

from smolsft.data import sft


def shortest_header(data_path: str, tokenizer, mask_mode: str = "assistant", train_turns: str = "all",
                    max_rounds: int = 5, conversation_field: str = "conversations") -> tuple[Optional[int], str]:
    """(tokens before the first trained token in the sample where that is fewest, where that
    sample is: ``"FILE:LINE"``-style record label); ``(None, "")`` when no sample trains at
    any length. Each record goes through the training's own masking (``sft._process``,
    untruncated), so the rule is the run's. Raises ``sft.DataFormatError`` for a bad record."""
    cfg = dict(max_length=sft._UNTRUNCATED, truncation="right", max_rounds=max_rounds, mask_mode=mask_mode,
               conversation_field=conversation_field, train_turns=train_turns)
    best: tuple[Optional[int], str] = (None, "")
    for where, rec in sft.read_records(data_path):
        out, _, err = sft._process((where, rec, tokenizer, cfg))
        if err:
            raise sft.DataFormatError(err)
        if out is None:
            continue
        first = int(np.argmax(out[1] != sft.IGNORE_TOKEN_ID))
        if best[0] is None or first < best[0]:
            best = (first, where)
    return best


def length_problems(lengths, data_path: str, tokenizer, truncation: str = "right", **masking) -> list[str]:
    """One line per length of ``lengths`` at which no sample of ``data_path`` would keep a
    trained token (right truncation only: a left-truncated window keeps a sample's end)."""
    if truncation != "right" or not lengths:
        return []
    header, where = shortest_header(data_path, tokenizer, **masking)
    if header is None:
        return [f"{data_path}: no sample has a trained token at any --model_max_length"]
    return [f"--model_max_length {n}: no sample of {data_path} would train (the shortest header, in {where}, is "
            f"{header} tokens before its first trained token; use at least {header + 1})"
            for n in sorted(set(lengths)) if n <= header]
