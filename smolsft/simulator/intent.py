"""What a user simulator is told and how it ends a conversation (UserLM's protocol,
arXiv 2510.06552: the user's intent in the system message; an end-of-conversation turn
after the last assistant turn).

- :data:`INTENT_FIELD`: the record field that holds the user's intent (a string);
- :func:`intent_system_message`: the simulator's system message with the intent added;
- :data:`END_MARKER`: the text of the user turn that ends a conversation. It is plain
  text, not a special token: every engine's decoded output keeps it (special tokens are
  dropped when answers are decoded), a prompted model can be told to write it, and no
  embedding is added to the checkpoint. The tokenizer splits it into ordinary BPE tokens;
- :func:`is_end_turn`: whether a generated user turn ends the conversation;
- :func:`record_intent`: a record's intent, or the stated stand-in (its first user request).

Standard library only.
"""
from __future__ import annotations

from typing import Optional, Sequence

INTENT_FIELD = "intent"
INTENT_PREFIX = "The user's intent: "
END_MARKER = "<|endconversation|>"
# Where an intent came from, as reports name it.
SOURCE_FIELD, SOURCE_STANDIN = "record field 'intent'", "stand-in: the first user request"


def intent_system_message(system: str, intent: Optional[str]) -> str:
    """``system`` unchanged when ``intent`` is ``None`` or empty, else ``system``, a blank
    line and ``The user's intent: {intent}``."""
    if not intent:
        return system
    return f"{system}\n\n{INTENT_PREFIX}{intent.strip()}"


def is_end_turn(text: str) -> bool:
    """A generated user turn ends the conversation when it starts with :data:`END_MARKER`
    (surrounding whitespace ignored; what a model writes after the marker is ignored)."""
    return text.strip().startswith(END_MARKER)


def record_intent(record: object, messages: Sequence[dict]) -> tuple[str, str]:
    """``(intent, source)`` for one record: its ``"intent"`` string (source
    :data:`SOURCE_FIELD`), else its first user request (:data:`SOURCE_STANDIN`). Raises
    ``ValueError`` for an ``"intent"`` that is not a non-empty string, or when there is
    neither an intent nor a user turn."""
    intent = record.get(INTENT_FIELD) if isinstance(record, dict) else None
    if intent is not None:
        if not isinstance(intent, str) or not intent.strip():
            raise ValueError(f"'{INTENT_FIELD}' must be a non-empty string, got {intent!r}")
        return intent.strip(), SOURCE_FIELD
    first = next((m["content"] for m in messages if m["role"] == "user"), None)
    if first is None:
        raise ValueError("no 'intent' and no user turn to stand in for it")
    return first.strip(), SOURCE_STANDIN
