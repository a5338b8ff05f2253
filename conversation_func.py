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
not provably the template's output uses the prefix method instead.

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

from utils import (
    CHATML_TEMPLATE, IGNORE_TOKEN_ID, IM_START, TRAIN_TURNS, TRUNCATION_SIDES, ConversationFormatError, pad_token_id,
    validate_messages,
)

ASSISTANT_ROLES = frozenset({"assistant"})


# ------------------------------------------------------------------- span finding
def _render_message(message: dict) -> str:
    """One message as the project's ChatML template renders it (chat_format.CHATML_TEMPLATE)."""
    return IM_START + message["role"] + "\n" + message["content"] + "<|im_end|>\n"


def one_pass_start_id(tokenizer) -> Optional[int]:
    """The ``<|im_start|>`` id when the one-pass method applies, else ``None``. It applies
    when the tokenizer carries the project's ChatML template (so the Python rendering
    above is the template's output) and is a fast tokenizer whose ``<|im_start|>`` is a
    special token matched as is (no strip flags, not split); each encoding is then
    checked again in :func:`spans_one_pass`."""
    template = tokenizer.chat_template
    cached = getattr(tokenizer, "_one_pass_start_id", None)
    if cached is not None and cached[0] == template:
        return cached[1]
    start_id = None
    if template == CHATML_TEMPLATE and getattr(tokenizer, "is_fast", False) \
            and not getattr(tokenizer, "split_special_tokens", False):
        tid = tokenizer.convert_tokens_to_ids(IM_START)
        added = tokenizer.added_tokens_decoder.get(tid)
        if added is not None and added.special and not (added.lstrip or added.rstrip or added.normalized):
            start_id = tid
    try:  # remember per tokenizer object (and template): it is asked for every conversation
        tokenizer._one_pass_start_id = (template, start_id)
    except AttributeError:
        pass
    return start_id


def spans_one_pass(messages: list[dict], tokenizer) -> Optional[tuple[np.ndarray, list[int]]]:
    """``(full_ids, bounds)`` from ONE tokenization, where message i owns
    ``full_ids[bounds[i]:bounds[i+1]]``; ``None`` when the tokenizer does not qualify
    (:func:`one_pass_start_id`) or the check below fails (the caller then uses the
    prefix method).

    Message i+1 starts at its header's ``<|im_start|>``, which is the (k+1)-th
    ``<|im_start|>`` token of the encoding, k being how often the text before it contains
    the string ``<|im_start|>`` (contents may hold it literally). That holds when every
    occurrence of the string became the special token, which is checked by comparing the
    token count with the string count: an ``<|im_start|>`` id only comes from that text,
    so equal counts mean no occurrence was split, stripped or swallowed by a neighbour,
    hence nothing merged across any boundary and each prefix's tokens are a prefix of
    these. Offsets are not needed, so the tokenizer's offset-free encoder is used.
    """
    return spans_one_pass_batch([messages], tokenizer)[0]


def spans_one_pass_batch(conversations: list, tokenizer) -> list:
    """:func:`spans_one_pass` for many conversations with one call into the tokenizer
    (which may spread a batch over cores: ``TOKENIZERS_PARALLELISM``)."""
    start_id = one_pass_start_id(tokenizer)
    if start_id is None:
        return [None] * len(conversations)
    rendered = [[_render_message(m) for m in msgs] for msgs in conversations]
    texts = ["\n" + "".join(pieces) for pieces in rendered]
    backend = tokenizer.backend_tokenizer
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)  # tokenizers >= 0.21 skips offsets
    out = []
    for pieces, text, enc in zip(rendered, texts, encode(texts, add_special_tokens=False)):
        ids = np.array(enc.ids, dtype=np.int64)
        starts = np.flatnonzero(ids == start_id)
        if len(starts) != text.count(IM_START):
            out.append(None)
            continue
        bounds = [0]
        seen = 0  # occurrences of "<|im_start|>" before the current message
        for piece in pieces[:-1]:
            seen += piece.count(IM_START)
            bounds.append(int(starts[seen]))
        bounds.append(len(ids))
        out.append((ids, bounds))
    return out


def spans_by_prefix(messages: list[dict], tokenizer) -> tuple[list[int], list[int]]:
    """The course's method, for any chat template: tokenize the rendering of every prefix
    and take its length as the next boundary. Each prefix's tokens must be a prefix of
    the full encoding (:func:`check_prefix_tokens`), else :class:`TemplateMaskingError`."""
    full = list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False, add_generation_prompt=False))
    bounds = [0]
    for i in range(1, len(messages)):
        prefix = tokenizer.apply_chat_template(messages[:i], tokenize=True, return_dict=False, add_generation_prompt=False)
        bounds.append(check_prefix_tokens(full, list(prefix), i - 1, messages, tokenizer))
    bounds.append(len(full))
    return full, bounds


# ------------------------------------------------- prefix check for any chat template
class TemplateMaskingError(ValueError):
    """The tokenizer's chat template cannot be masked by the prefix method: rendering a
    conversation's first messages is not a prefix of rendering all of them (e.g. a
    Qwen3-style template drops the ``<think>`` block of assistant turns before the last
    user turn). Names the message and the template."""


def template_name(tokenizer) -> str:
    """``"the chat template of NAME (sha256 0123abcd4567)"``: which template, for messages."""
    import hashlib

    digest = hashlib.sha256((tokenizer.chat_template or "").encode()).hexdigest()[:12]
    return f"the chat template of {getattr(tokenizer, 'name_or_path', '') or '?'} (sha256 {digest})"


def check_prefix_tokens(full: Sequence[int], prefix: Sequence[int], last: int, messages: list[dict], tokenizer) -> int:
    """The boundary after message ``last``: ``len(prefix)``, where ``prefix`` holds the
    tokens of ``messages[:last + 1]`` rendered alone and ``full`` those of the whole
    conversation. The prefix method is exact only when ``prefix`` is a prefix of
    ``full``; otherwise the spans would be shifted (a user turn trained, an answer
    not), so this raises :class:`TemplateMaskingError` naming the message index, its
    role, the first differing token position and the template."""
    n = len(prefix)
    if n <= len(full) and list(full[:n]) == list(prefix):
        return n
    pos = next((k for k, (a, b) in enumerate(zip(full, prefix)) if a != b), min(n, len(full)))
    raise TemplateMaskingError(
        f"message {last} ({messages[last]['role']}): the tokens of messages 0..{last} rendered alone are not a "
        f"prefix of the whole conversation's (they differ from token {pos} on), so the prefix method cannot "
        f"find the message spans with {template_name(tokenizer)}; this template renders a turn differently "
        f"once later turns follow (e.g. Qwen3 drops <think> blocks before the last user turn): use a tokenizer "
        f"whose template renders each turn independently of the later ones")


PROBE_CONVERSATION = [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "Count to 3."},
    {"role": "assistant", "content": "<think>\nEasy.\n</think>\n\n1, 2, 3"},
    {"role": "user", "content": "Now to 4."},
    {"role": "assistant", "content": "<think>\nOne more.\n</think>\n\n1, 2, 3, 4"},
]


def check_prefix_masking(tokenizer, messages: Optional[list[dict]] = None) -> None:
    """Refuse (:class:`TemplateMaskingError`) a tokenizer whose chat template cannot be
    masked by the prefix method, tried on ``messages`` (default: a two-round probe with
    a system message and ``<think>`` blocks, which catches templates that rewrite
    earlier assistant turns). For a run's set-up, before any data is tokenized; every
    conversation masked by the prefix method is checked again in :func:`spans_by_prefix`.
    A template that refuses the default probe's system message (Gemma's) is probed
    without it."""
    if messages is not None:
        spans_by_prefix(list(messages), tokenizer)
        return
    try:
        spans_by_prefix(list(PROBE_CONVERSATION), tokenizer)
    except TemplateMaskingError:
        raise
    except Exception:  # the template raised on the system role
        spans_by_prefix(list(PROBE_CONVERSATION[1:]), tokenizer)


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
