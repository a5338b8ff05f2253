"""The one place that loads and configures a tokenizer, so a checkpoint is rendered the
same way when it is trained and when it is evaluated (the Part 1-4 checkers, training,
IFEval generation), plus the token ids that end a turn and a fingerprint of what decides
token ids."""
from __future__ import annotations

import hashlib
from typing import Any, Iterable, Optional

from smolsft.chat.format import CHATML_TEMPLATE, ENDOFTEXT, IM_END, IM_START
from smolsft.files import resolve_path

DEFAULT_MODEL = "SmolLM2-135M"
HUB_MODEL_ID = "HuggingFaceTB/SmolLM2-135M"


def is_smollm2_tokenizer(tokenizer) -> bool:
    """SmolLM2's vocabulary: 49152 entries with <|endoftext|>=0, <|im_start|>=1, <|im_end|>=2."""
    ids = tokenizer.convert_tokens_to_ids([ENDOFTEXT, IM_START, IM_END])
    return len(tokenizer) == 49152 and list(ids) == [0, 1, 2]


def load_tokenizer(name_or_path: str = DEFAULT_MODEL, model_max_length: int = 2048, padding_side: str = "right"):
    """Load and configure a tokenizer, the same way for checkers, training and evaluation.

    - right padding (``padding_side="left"`` for batched generation),
    - ``pad_token`` falls back to ``eos_token`` (SmolLM2 has none: pad id 0),
    - ``model_max_length`` set,
    - SmolLM2 tokenizers get the project's ChatML template (:data:`CHATML_TEMPLATE`);
      other tokenizers keep their own template, or get ChatML when they have none.
    """
    path = resolve_path(name_or_path)
    tok = _tokenizer_class(path).from_pretrained(path)
    tok.padding_side = padding_side
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.model_max_length = int(model_max_length)
    if is_smollm2_tokenizer(tok) or not getattr(tok, "chat_template", None):
        tok.chat_template = CHATML_TEMPLATE
    return tok


def _tokenizer_class(path: str):
    """``TokenizersBackend`` for a local Llama-family folder whose tokenizer_config.json
    names that class (SmolLM2's): what ``AutoTokenizer`` returns for it, without importing
    every model's auto classes (seconds per process; tests/chat/test_tokenization.py checks the
    two agree). ``AutoTokenizer`` for anything else (a hub id, custom code, another class)."""
    import json
    import os

    try:
        with open(os.path.join(path, "tokenizer_config.json"), encoding="utf-8") as f:
            tok_cfg = json.load(f)
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            model_type = json.load(f).get("model_type")
    except (OSError, ValueError, AttributeError):
        tok_cfg, model_type = {}, None
    if (isinstance(tok_cfg, dict) and tok_cfg.get("tokenizer_class") == "TokenizersBackend"
            and "auto_map" not in tok_cfg and model_type == "llama"):
        from transformers.tokenization_utils_tokenizers import TokenizersBackend

        return TokenizersBackend
    from transformers import AutoTokenizer

    return AutoTokenizer


# An assistant answer no template rewrites (no whitespace to trim, no think tags).
_PROBE_ANSWER = "Probe answer 7"


def template_turn_terminator(tokenizer) -> Optional[int]:
    """The id of the special token the chat template writes right after an assistant
    message's content (whitespace aside): ``<|im_end|>`` for ChatML (SmolLM2, Qwen),
    ``<end_of_turn>`` for Gemma, ``<|eot_id|>`` for Llama-3. Found by rendering a
    two-message chat and tokenizing what follows the answer; ``None`` when the tokenizer
    has no template, the template fails on the probe, or no special token follows."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "Probe question"},
                                              {"role": "assistant", "content": _PROBE_ANSWER}], tokenize=False)
    except Exception:  # a template that refuses the probe (e.g. demands a system message)
        return None
    at = text.rfind(_PROBE_ANSWER)
    if at < 0:
        return None
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    for tid in tokenizer(text[at + len(_PROBE_ANSWER):], add_special_tokens=False)["input_ids"]:
        if tid in special:
            return int(tid)
        if tokenizer.decode([tid]).strip():  # text before any special token: no terminator
            return None
    return None


def end_of_turn_ids(tokenizer, extra: Iterable[Any] = ()) -> list[int]:
    """Token ids that end a generated answer, the one list for training and evaluation.

    First the chat template's own turn terminator (:func:`template_turn_terminator`:
    ``<|im_end|>`` for the project's ChatML, id 2 in SmolLM2; ``<end_of_turn>`` for a
    Gemma template, ``<|eot_id|>`` for Llama-3), or ``<|im_end|>`` when the template shows
    none and the vocabulary has it; then the tokenizer's eos (``<|endoftext|>``, id 0);
    then ``extra``: an int, a list of ints or ``None`` (what a
    ``generation_config.eos_token_id`` holds), or an iterable of them. Duplicates are
    dropped, order kept. Training writes this list into every checkpoint's
    ``generation_config.eos_token_id``; the IFEval runner stops at it whatever the
    checkpoint says (a model fine-tuned from a base checkpoint keeps the base's single
    eos and would otherwise write invented user turns)."""
    ids: list[int] = []
    term = template_turn_terminator(tokenizer)
    if term is not None:
        ids.append(term)
    elif IM_END in tokenizer.get_vocab():
        ids.append(int(tokenizer.convert_tokens_to_ids(IM_END)))
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    if extra is None or isinstance(extra, int):
        extra = [extra]
    for item in extra:
        for i in (item if isinstance(item, (list, tuple)) else [item]):
            if i is not None:
                ids.append(int(i))
    return list(dict.fromkeys(ids))


def pad_token_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def tokenizer_fingerprint(tokenizer) -> str:
    """A short hash of what decides token ids: the vocabulary, the chat template and
    the special tokens (used in cache keys and run manifests)."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update((backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))).encode())
    h.update((tokenizer.chat_template or "").encode())
    h.update(repr((tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token, tokenizer.padding_side)).encode())
    return h.hexdigest()[:16]
