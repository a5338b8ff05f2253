"""Parts 1-2: loss masking of a chat for SFT (assistant turns trained), plus the shared
masking core that Parts 3-4 (``reverse_conversation_func.py``) reuse.

The contract (the course's): ``full_ids`` is the chat-template rendering of the whole
conversation, tokenized. Message *i* owns the tokens from ``len(tok(render(messages[:i])))``
to ``len(tok(render(messages[:i+1])))`` (the first span starts at 0, so it holds the
template's leading newline), i.e. its role header, its content and its ``<|im_end|>\\n``.
Labels copy ``full_ids`` on the spans of the trained roles and are -100 elsewhere; then
the sequence is truncated to ``max_length`` (``left`` keeps the end, ``right`` the start)
and right-padded.

Speed: the course finds the spans by tokenizing every prefix again (one chat-template
rendering and tokenization per message). Here the conversation is rendered once in
Python and tokenized once, and each boundary is read off that single encoding: message
i+1 begins at its header's ``<|im_start|>`` token. This is exact because ``<|im_start|>``
is a special token, which the tokenizer splits out before any BPE merge: nothing merges
across a boundary, so the tokens of each prefix rendering are a prefix of the full
tokens. Each encoding is checked (every ``<|im_start|>`` in the text, including any
written literally inside a content, must have become that token; see
:func:`spans_one_pass`), and a tokenizer or template for which the Python rendering is
not provably the template's output uses the prefix method instead. Both methods live in
``smolsft/chat/spans.py`` (re-exported here); this file keeps the masking itself.

Public API
- ``conversation_to_features(messages, tokenizer, max_length, truncation)`` -> padded
  1-D ``torch.long`` tensors ``input_ids``/``labels``/``attention_mask`` or ``None``.
- ``conversation_to_unpadded(messages, tokenizer, max_length, truncation, train_roles, train_turns)``
  -> ``{"input_ids", "labels"}`` 1-D ``torch.long`` tensors, truncated, NOT padded, or
  ``None``; what a training pipeline stores before padding per batch.
- ``conversations_to_unpadded(conversations, ...)``: the same for a list, tokenized in
  one batched call (bulk preprocessing).
- ``pad_features(unpadded, max_length, pad_id)`` -> the padded tensors.
- ``mask_conversation(messages, tokenizer, train_roles, train_turns)`` -> untruncated
  ``(ids, labels)`` int64 numpy arrays.
- ``trained_messages(messages, train_roles, train_turns)``: which messages are trained:
  the role rule (``train_turns="all"`` every message of a trained role, ``"last"`` only
  the last one), overridden per message by a ``"train": true|false`` flag.
- ``has_trained_tokens(features)`` / ``count_trained_tokens(features)``: a sample whose
  labels are all -100 (e.g. its trained turns were cut by truncation) must be dropped.

CLI: ``python conversation_func.py [--multi_turn] ...`` checks the masking against the
golden files (``smolsft/chat/masking_checker.py`` holds the checker; exit 0 only when every sample matches).
"""
from __future__ import annotations

import sys
from typing import Iterable, Optional, Sequence

import numpy as np
import torch

from smolsft.chat.spans import (  # noqa: F401  (re-exported: the one-pass span machinery, not the exercise)
    PROBE_CONVERSATION, TemplateMaskingError, check_prefix_masking, check_prefix_tokens, one_pass_start_id,
    spans_by_prefix, spans_one_pass, spans_one_pass_batch, template_name,
)
from utils import IGNORE_TOKEN_ID, TRAIN_TURNS, TRUNCATION_SIDES, ConversationFormatError, pad_token_id, validate_messages

ASSISTANT_ROLES = frozenset({"assistant"})


# ------------------------------------------------------------------- span finding
def message_spans(messages: list[dict], tokenizer) -> tuple[Sequence[int], list[int]]:
    """``(full_ids, bounds)`` (ids as a list or int64 array): one pass when exact, otherwise
    the prefix method."""
    out = spans_one_pass(messages, tokenizer)
    return out if out is not None else spans_by_prefix(messages, tokenizer)


# --------------------------------------------------------------------- masking core
def trained_messages(messages: list[dict], train_roles: Iterable[str], train_turns: str = "all") -> list[bool]:
    """Which messages are trained, one bool per message: the role rule first (every
    message whose role is in ``train_roles`` for ``train_turns="all"``; only the last such
    message of the conversation for ``"last"``), then each message's own ``"train"``
    flag, where present, overrides it for that message (so ``"last"`` still picks the
    last message of the trained role, flagged or not, and a flag can add or remove any
    user or assistant message)."""
    if train_turns not in TRAIN_TURNS:
        raise ValueError(f"train_turns must be one of {list(TRAIN_TURNS)}, got {train_turns!r}")
    roles = set(train_roles)
    by_role = [m["role"] in roles for m in messages]
    if train_turns == "last":
        last = max((i for i, r in enumerate(by_role) if r), default=None)
        by_role = [i == last for i in range(len(messages))]
    return [bool(m["train"]) if "train" in m else r for m, r in zip(messages, by_role)]


def _labels_from_spans(messages: list[dict], ids, bounds: list[int], train_roles,
                       train_turns: str = "all") -> tuple[np.ndarray, np.ndarray]:
    """(ids, labels) int64 arrays: labels copy ids on the spans of the trained messages
    (:func:`trained_messages`)."""
    ids = np.asarray(ids, dtype=np.int64)
    labels = np.full(len(ids), IGNORE_TOKEN_ID, dtype=np.int64)
    for i, trained in enumerate(trained_messages(messages, train_roles, train_turns)):
        if trained:
            s, e = bounds[i], bounds[i + 1]
            labels[s:e] = ids[s:e]
    return ids, labels


def mask_conversation(messages: list[dict], tokenizer, train_roles: Iterable[str],
                      train_turns: str = "all") -> tuple[np.ndarray, np.ndarray]:
    """Untruncated, unpadded ``(input_ids, labels)`` as int64 numpy arrays: labels copy
    the ids on the spans of the trained messages (:func:`trained_messages`: role in
    ``train_roles``, every turn or the last, per-message ``train`` flags), -100 elsewhere.
    Validates the messages (a bad role, non-string content or misplaced ``train`` flag
    raises ``chat_format.ConversationFormatError``)."""
    validate_messages(messages)
    ids, bounds = message_spans(list(messages), tokenizer)
    return _labels_from_spans(messages, ids, bounds, train_roles, train_turns)


def _check_args(max_length: int, truncation: str, train_turns: str = "all") -> None:
    if train_turns not in TRAIN_TURNS:
        raise ValueError(f"train_turns must be one of {list(TRAIN_TURNS)}, got {train_turns!r}")
    if truncation not in TRUNCATION_SIDES:
        raise ValueError(f"truncation must be 'left' or 'right', got {truncation!r}")
    if not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"max_length must be a positive int, got {max_length!r}")


def _window(ids: np.ndarray, labels: np.ndarray, max_length: int, truncation: str) -> dict:
    """Truncate (``left`` keeps the end, ``right`` the start) and wrap as tensors."""
    if len(ids) > max_length:
        cut = slice(len(ids) - max_length, None) if truncation == "left" else slice(0, max_length)
        ids, labels = ids[cut], labels[cut]
    return {"input_ids": torch.from_numpy(ids), "labels": torch.from_numpy(labels)}


def conversation_to_unpadded(messages, tokenizer, max_length: int, truncation: str = "left",
                             train_roles: Iterable[str] = ASSISTANT_ROLES, train_turns: str = "all") -> Optional[dict]:
    """``{"input_ids", "labels"}``: 1-D ``torch.long`` tensors truncated to ``max_length``
    (``left`` keeps the end, ``right`` the start) but NOT padded, so a training pipeline
    can store them compactly and pad per batch; ``None`` for an empty conversation.
    ``train_turns`` (``all``/``last``) and per-message ``train`` flags: see
    :func:`trained_messages`. Check :func:`has_trained_tokens` before training on it (with
    ``last`` and right truncation the one trained turn may be cut away)."""
    _check_args(max_length, truncation, train_turns)
    if isinstance(messages, (list, tuple)) and len(messages) == 0:
        return None
    return _window(*mask_conversation(messages, tokenizer, train_roles, train_turns), max_length, truncation)


def conversations_to_unpadded(conversations: list, tokenizer, max_length: int, truncation: str = "left",
                              train_roles: Iterable[str] = ASSISTANT_ROLES, train_turns: str = "all") -> list:
    """:func:`conversation_to_unpadded` for a list of conversations, tokenized in one
    batched call (faster for bulk preprocessing; same outputs). A malformed conversation
    raises ``ConversationFormatError`` naming its index."""
    _check_args(max_length, truncation, train_turns)
    for k, msgs in enumerate(conversations):
        try:
            validate_messages(msgs)
        except ConversationFormatError as e:
            raise ConversationFormatError(f"conversation {k}: {e}") from None
    todo = [k for k, msgs in enumerate(conversations) if len(msgs) > 0]
    spans = spans_one_pass_batch([list(conversations[k]) for k in todo], tokenizer)
    out: list = [None] * len(conversations)
    for k, sp in zip(todo, spans):
        msgs = list(conversations[k])
        ids, bounds = sp if sp is not None else spans_by_prefix(msgs, tokenizer)
        out[k] = _window(*_labels_from_spans(msgs, ids, bounds, train_roles, train_turns), max_length, truncation)
    return out


def pad_features(unpadded: Optional[dict], max_length: int, pad_id: int = 0) -> Optional[dict]:
    """Right-pad unpadded features (tensors or int lists) to ``max_length``: ids with
    ``pad_id``, labels -100, attention 0. Returns 1-D ``torch.long`` tensors
    (``None`` stays ``None``)."""
    if unpadded is None:
        return None
    n = len(unpadded["input_ids"])
    if n > max_length:
        raise ValueError(f"sequence of {n} tokens is longer than max_length={max_length}")
    # numpy then one zero-copy wrap: a few torch ops per sample cost more than the masking.
    ids = np.full(max_length, pad_id, dtype=np.int64)
    labels = np.full(max_length, IGNORE_TOKEN_ID, dtype=np.int64)
    attention = np.zeros(max_length, dtype=np.int64)
    ids[:n] = np.asarray(unpadded["input_ids"])
    labels[:n] = np.asarray(unpadded["labels"])
    attention[:n] = 1
    return {"input_ids": torch.from_numpy(ids), "labels": torch.from_numpy(labels),
            "attention_mask": torch.from_numpy(attention)}


def conversation_to_features(messages, tokenizer, max_length: int, truncation: str = "left") -> Optional[dict]:
    """Parts 1-2: padded ``input_ids``/``labels``/``attention_mask`` (1-D ``torch.long``,
    length ``max_length``) with only the assistant spans labelled; ``None`` if empty."""
    unpadded = conversation_to_unpadded(messages, tokenizer, max_length, truncation, ASSISTANT_ROLES)
    return pad_features(unpadded, max_length, pad_token_id(tokenizer))


def count_trained_tokens(features: Optional[dict]) -> int:
    """Number of labels that are not -100 (0 for ``None``); takes lists or tensors."""
    if features is None:
        return 0
    labels = features["labels"]
    if isinstance(labels, torch.Tensor):
        return int((labels != IGNORE_TOKEN_ID).sum())
    return sum(1 for x in labels if x != IGNORE_TOKEN_ID)


def has_trained_tokens(features: Optional[dict]) -> bool:
    """False for a sample that would contribute nothing to the loss (all labels -100,
    e.g. truncation cut every trained turn): the training data drops it and counts it."""
    return count_trained_tokens(features) > 0


if __name__ == "__main__":
    from smolsft.chat.masking_checker import run_checker

    sys.exit(run_checker(conversation_to_features,
                         "Parts 1-2: check assistant-only loss masking against golden files.",
                         "exercise_solutions.json"))
