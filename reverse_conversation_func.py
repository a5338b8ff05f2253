"""Parts 3-4: reverse loss masking, training a "user simulator" that predicts the user's
turns. It uses the masking core of ``conversation_func`` with the user role trained:

- Part 3, a single-turn chat (decided by ``utils.is_single_turn_conversation`` on the
  conversation itself): reordered to ``[system?] [assistant] [user]`` (roles and contents
  unchanged), so the model reads an answer and learns the question that produced it.
- Part 4, any other chat: ``{"role": "system", "content": utils.REVERSE_SYSTEM_PROMPT}``
  is put first when the first message is not a system message; every user span is
  trained, system and assistant spans stay -100.

Public API (same shapes as the forward module):
- ``reverse_conversation_to_features(messages, tokenizer, max_length, truncation)``
- ``reverse_conversation_to_unpadded(messages, tokenizer, max_length, truncation)``
- ``reverse_conversations_to_unpadded(conversations, ...)``: a list in one batched call.
- ``reverse_messages(messages)``: the reordered / system-prefixed message list.

CLI: ``python reverse_conversation_func.py [--multi_turn] ...`` checks against
``reverse_exercise_solutions.json`` (``masking_checker.py``; same options as ``conversation_func.py``).
"""
from __future__ import annotations

import sys
from typing import Optional

from conversation_func import conversation_to_unpadded, conversations_to_unpadded, pad_features
from chat_format import ConversationFormatError, is_single_turn_conversation, validate_messages
from tokenization import pad_token_id

USER_ROLES = frozenset({"user"})
# Part 4's system message, the course's wording: it tells a simulator it predicts the next (user) state.
REVERSE_SYSTEM_PROMPT = "You are a good state predictor."


def reverse_messages(messages: list[dict]) -> list[dict]:
    """The conversation the reverse model is trained on (see the module docstring).
    Messages are validated first; the input list is not modified."""
    validate_messages(messages)
    msgs = list(messages)
    if not msgs:
        return msgs
    if is_single_turn_conversation(msgs):
        by_role = {m["role"]: m for m in msgs}
        system = [by_role["system"]] if "system" in by_role else []
        return system + [by_role["assistant"], by_role["user"]]
    if msgs[0]["role"] != "system":
        msgs.insert(0, {"role": "system", "content": REVERSE_SYSTEM_PROMPT})
    return msgs


def reverse_conversation_to_unpadded(messages, tokenizer, max_length: int, truncation: str = "left",
                                     train_turns: str = "all") -> Optional[dict]:
    """Reverse-masked ``{"input_ids", "labels"}``: 1-D ``torch.long`` tensors, truncated,
    not padded (``None`` for an empty conversation). ``train_turns="last"`` trains only
    the last user turn; per-message ``train`` flags override the role rule
    (``conversation_func.trained_messages``)."""
    return conversation_to_unpadded(reverse_messages(messages), tokenizer, max_length, truncation, USER_ROLES,
                                    train_turns)


def reverse_conversations_to_unpadded(conversations: list, tokenizer, max_length: int, truncation: str = "left",
                                      train_turns: str = "all") -> list:
    """:func:`reverse_conversation_to_unpadded` for a list, tokenized in one batched call."""
    reordered = []
    for k, msgs in enumerate(conversations):
        try:
            reordered.append(reverse_messages(msgs))
        except ConversationFormatError as e:
            raise ConversationFormatError(f"conversation {k}: {e}") from None
    return conversations_to_unpadded(reordered, tokenizer, max_length, truncation, USER_ROLES, train_turns)


def reverse_conversation_to_features(messages, tokenizer, max_length: int, truncation: str = "left") -> Optional[dict]:
    """Parts 3-4: padded ``input_ids``/``labels``/``attention_mask`` (1-D ``torch.long``,
    length ``max_length``) with only the user spans labelled; ``None`` if empty."""
    unpadded = reverse_conversation_to_unpadded(messages, tokenizer, max_length, truncation)
    return pad_features(unpadded, max_length, pad_token_id(tokenizer))


if __name__ == "__main__":
    from masking_checker import run_checker

    sys.exit(run_checker(reverse_conversation_to_features,
                         "Parts 3-4: check reverse (user-turn) loss masking against golden files.",
                         "reverse_exercise_solutions.json"))
