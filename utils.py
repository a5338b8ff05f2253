"""Helper functions the course's files use: the chat format, the tokenizer, the ignore index.

    from utils import IGNORE_TOKEN_ID, load_tokenizer, render_chat

Everything here is defined once in the ``smolsft`` package (``smolsft/chat``) and only
named here, so an exercise file needs one import line and the library has one definition.
"""
from smolsft.chat.format import (  # noqa: F401  (re-exported for the course's files)
    CHATML_TEMPLATE, IGNORE_TOKEN_ID, IM_END, IM_START, TRAIN_TURNS, TRUNCATION_SIDES, ConversationFormatError,
    is_single_turn_conversation, normalize_conversation, render_chat, validate_messages,
)
from smolsft.chat.tokenization import DEFAULT_MODEL, load_tokenizer, pad_token_id  # noqa: F401

__all__ = ["CHATML_TEMPLATE", "DEFAULT_MODEL", "IGNORE_TOKEN_ID", "IM_END", "IM_START", "TRAIN_TURNS",
           "TRUNCATION_SIDES", "ConversationFormatError", "is_single_turn_conversation", "load_tokenizer",
           "normalize_conversation", "pad_token_id", "render_chat", "validate_messages"]
