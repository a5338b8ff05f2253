"""The baseline people use instead of a trained user simulator: an assistant (Instruct)
model told to play the user (UserLM compares with GPT-4o prompted so; here the
embedded SmolLM2-135M, whose weights are the Instruct model's, see SmolLM2-135M/SOURCE.md).

The dialogue is shown to it with the roles swapped, the way such role-play is usually
prompted: its own (user) turns as ``assistant`` messages, the real assistant's as ``user``
messages, after a system message with the user's intent and the end marker, and a first
``user`` message that asks it to open. It answers as the ``assistant`` of the chat template.
Standard library only.
"""
from __future__ import annotations

from smolsft.simulator.intent import END_MARKER

PROMPTED_USER_SYSTEM = (
    "You are role-playing a human user who is chatting with an AI assistant. Your goal: {intent}\n"
    "Write only the user's next message, short and plain, the way a person types it. Never answer as the "
    "assistant and never offer help. When your goal has been met, reply with exactly " + END_MARKER + " and "
    "nothing else."
)
KICKOFF = "(The conversation begins. Write your first message to the AI assistant.)"
FLIP = {"user": "assistant", "assistant": "user"}


def prompted_user_messages(history: list[dict], intent: str) -> list[dict]:
    """The chat shown to the prompted assistant (see the module docstring). ``history``:
    the dialogue so far (``[system?] (user, assistant)*``, ending before a user turn); a
    system message of the dialogue is dropped (it was the assistant's)."""
    msgs = [{"role": "system", "content": PROMPTED_USER_SYSTEM.format(intent=intent)},
            {"role": "user", "content": KICKOFF}]
    msgs += [{"role": FLIP[m["role"]], "content": m["content"]} for m in history if m["role"] in FLIP]
    return msgs


def prompted_user_prompt(history: list[dict], intent: str, tokenizer) -> str:
    """:func:`prompted_user_messages` rendered with the tokenizer's chat template and the
    assistant generation prompt."""
    from smolsft.chat.format import render_chat

    return render_chat(tokenizer, prompted_user_messages(history, intent), add_generation_prompt=True)
