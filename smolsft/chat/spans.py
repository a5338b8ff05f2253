"""Message spans of a ChatML conversation: where each message's tokens begin and end in
the tokenization of the whole conversation (the machinery under Parts 1-2's masking).

Two methods, one contract (``conversation_func``'s docstring): message *i* owns
``full_ids[bounds[i]:bounds[i+1]]``.

- One pass (:func:`spans_one_pass`, :func:`spans_one_pass_batch`): the conversation is
  rendered once in Python and tokenized once; message i+1 begins at its header's
  ``<|im_start|>`` token. Exact because ``<|im_start|>`` is a special token, split out
  before any BPE merge; each encoding is checked, and ``None`` means "use the prefix method".
- Prefix (:func:`spans_by_prefix`): the course's method for any chat template, every
  prefix rendered and tokenized again; :func:`check_prefix_tokens` refuses a template for
  which a prefix's tokens are not a prefix of the whole (:class:`TemplateMaskingError`).
"""
from __future__ import annotations

import hashlib
from typing import Optional, Sequence

import numpy as np

from smolsft.chat.format import CHATML_TEMPLATE, IM_START


def _render_message(message: dict) -> str:
    """One message as the project's ChatML template renders it (``smolsft.chat.format.CHATML_TEMPLATE``)."""
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
