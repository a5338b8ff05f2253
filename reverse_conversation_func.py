"""Parts 3-4: reverse loss masking, training a "user simulator" that predicts the user's
turns. It uses the masking core of ``conversation_func`` with the user role trained:

- Part 3, a single-turn chat (decided by ``chat_format.is_single_turn_conversation`` on the
  conversation itself): reordered to ``[system?] [assistant] [user]`` (roles and contents
  unchanged), so the model reads an answer and learns the question that produced it.
- Part 4, any other chat: ``{"role": "system", "content": REVERSE_SYSTEM_PROMPT}``
  is put first when the first message is not a system message; every user span is
  trained, system and assistant spans stay -100. Two options of the user-simulator
  protocol (UserLM, ``smolsft/simulator/intent.py``), off by default so the golden files
  hold: ``intent`` (the record's) is added to that system message, and ``end_marker``
  appends a user turn ``END_MARKER`` after a last assistant turn (the conversation's
  K+1-th user turn: the simulator learns to end it).

Public API (same shapes as the forward module):
- ``reverse_conversation_to_features(messages, tokenizer, max_length, truncation)``
- ``reverse_conversation_to_unpadded(messages, tokenizer, max_length, truncation)``
- ``reverse_conversations_to_unpadded(conversations, ...)``: a list in one batched call.
- ``reverse_messages(messages)``: the reordered / system-prefixed message list.
- ``simulator_prompt(messages, tokenizer, back_translation=False)``: the text a simulator
  trained with this masking is prompted with to write the next user turn (generation as
  a user), rendered exactly as the training samples begin.

CLI: ``python reverse_conversation_func.py [--multi_turn] ...`` checks against
``reverse_exercise_solutions.json`` (``smolsft/chat/masking_checker.py``; same options as ``conversation_func.py``).
"""
from __future__ import annotations

import sys
from typing import Optional

from conversation_func import conversation_to_unpadded, conversations_to_unpadded, pad_features
from smolsft.simulator.intent import END_MARKER, intent_system_message
from utils import (IM_START, ConversationFormatError, is_single_turn_conversation, pad_token_id, render_chat,
                   validate_messages)

USER_ROLES = frozenset({"user"})
# Part 4's system message, the course's wording: it tells a simulator it predicts the next (user) state.
REVERSE_SYSTEM_PROMPT = "You are a good state predictor."


def reverse_messages(messages: list[dict], intent: Optional[str] = None, end_marker: bool = False) -> list[dict]:
    """The conversation the reverse model is trained on (see the module docstring).
    Messages are validated first; the input list is not modified. ``intent`` and
    ``end_marker`` apply to Part 4 (multi-turn) only: a single-turn pair is Part 3's
    back-translation, whose request the intent would give away."""
    validate_messages(messages)
    msgs = list(messages)
    if not msgs:
        return msgs
    if is_single_turn_conversation(msgs):
        by_role = {m["role"]: m for m in msgs}
        system = [by_role["system"]] if "system" in by_role else []
        return system + [by_role["assistant"], by_role["user"]]
    msgs = _with_system(msgs, intent)
    if end_marker and msgs[-1]["role"] == "assistant":
        msgs.append({"role": "user", "content": END_MARKER})
    return msgs


def _with_system(msgs: list[dict], intent: Optional[str]) -> list[dict]:
    """``msgs`` with the simulator's system message first: the conversation's own, else
    :data:`REVERSE_SYSTEM_PROMPT`, with ``intent`` added (``intent_system_message``)."""
    if msgs and msgs[0]["role"] == "system":
        head, rest = msgs[0], msgs[1:]
    else:
        head, rest = {"role": "system", "content": REVERSE_SYSTEM_PROMPT}, msgs
    if intent:
        head = {"role": "system", "content": intent_system_message(head["content"], intent)}
    return [head] + rest


def simulator_prompt(messages: list[dict], tokenizer, back_translation: bool = False,
                     intent: Optional[str] = None) -> str:
    """The prompt that makes a simulator write the next user turn, rendered the way its
    training samples (:func:`reverse_messages`) begin, then the user generation prompt
    ``<|im_start|>user\n``; tokenized with ``add_special_tokens=False`` it is token for
    token the prefix of the training sample up to that user turn's content (when that
    content does not start with whitespace, which BPE may merge with the header's newline;
    tests/simulator/test_simulator_prompt.py checks it on every user turn of the demo set).

    - Multi-turn (Part 4, default): ``messages`` is the conversation so far (``[]``, a
      system message, or rounds ending with an assistant turn); :data:`REVERSE_SYSTEM_PROMPT`
      goes first unless it starts with a system message, as in training.
    - ``back_translation`` (Part 3): ``messages`` is ``[system?] [assistant]``, an answer;
      the simulator writes the request that answer replies to.
    - ``intent`` (multi-turn only): added to the system message as in training.

    Raises ``ConversationFormatError`` for a conversation whose next turn is not the
    user's (it ends with a user turn) or a back-translation input of another shape.
    """
    validate_messages(messages)
    msgs = list(messages)
    if back_translation:
        roles = [m["role"] for m in msgs]
        if roles not in (["assistant"], ["system", "assistant"]):
            raise ConversationFormatError(f"back-translation prompt needs [system?] [assistant], got roles {roles}")
    else:
        if msgs and msgs[-1]["role"] == "user":
            raise ConversationFormatError("the conversation ends with a user turn: the next turn is the assistant's")
        msgs = _with_system(msgs, intent)
    return render_chat(tokenizer, msgs, add_generation_prompt=False) + IM_START + "user\n"


def reverse_conversation_to_unpadded(messages, tokenizer, max_length: int, truncation: str = "left",
                                     train_turns: str = "all", intent: Optional[str] = None,
                                     end_marker: bool = False) -> Optional[dict]:
    """Reverse-masked ``{"input_ids", "labels"}``: 1-D ``torch.long`` tensors, truncated,
    not padded (``None`` for an empty conversation). ``train_turns="last"`` trains only
    the last user turn (the end marker's, when ``end_marker``); per-message ``train``
    flags override the role rule (``conversation_func.trained_messages``); ``intent``,
    ``end_marker``: :func:`reverse_messages`."""
    return conversation_to_unpadded(reverse_messages(messages, intent, end_marker), tokenizer, max_length, truncation,
                                    USER_ROLES, train_turns)


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
    from smolsft.chat.masking_checker import run_checker

    sys.exit(run_checker(reverse_conversation_to_features,
                         "Parts 3-4: check reverse (user-turn) loss masking against golden files.",
                         "reverse_exercise_solutions.json"))
