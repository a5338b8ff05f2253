"""The chat format the project trains and evaluates with: the ChatML template, the
message roles, the normalization of raw chat records into clean ``[system?] round+`` lists
(a round: a user turn, then the assistant's answers, tool calls and tool results up to the
next one) and the checks masking runs on them. Standard library only."""
from __future__ import annotations

import json
from collections import Counter
from typing import Any, Iterable, Optional

# The label of a position that is not trained (what PyTorch's and transformers' losses skip).
IGNORE_TOKEN_ID = -100
TRUNCATION_SIDES = ("left", "right")
# --train_turns: every turn of the trained role, or only the last one (LLaMA-Factory's
# mask_history, torchtune's train_on_last).
TRAIN_TURNS = ("all", "last")
# The roles a per-message ``"train": true|false`` may be set on (axolotl's per-message
# ``train``); system and tool messages are context in both mask modes.
FLAGGABLE_ROLES = ("user", "assistant")

# The project's ChatML rendering (the course's): a leading newline, then
# "<|im_start|>{role}\n{content}<|im_end|>\n" per message, and with a generation prompt
# a trailing "<|im_start|>assistant\n". No default system prompt is injected: what the
# data says is what the model sees.
CHATML_TEMPLATE = (
    "{{ '\\n' }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
IM_START, IM_END, ENDOFTEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"

# Raw role name (lower-cased) -> normalized role; the table is explained in
# normalize_conversation's docstring.
ROLE_ALIASES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "bot": "assistant",
    "function_call": "assistant",
    "tool": "tool",
    "observation": "tool",
    "function_response": "tool",
    "ipython": "tool",
    "function": "tool",
}
# The roles masking accepts (what normalize_conversation produces).
MESSAGE_ROLES = ("system", "user", "assistant", "tool")


class ConversationFormatError(ValueError):
    """A chat record that cannot be read as a conversation (names what is wrong)."""


def render_chat(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _tool_calls_text(turn: dict, index: int) -> Optional[str]:
    """The tool calls of an OpenAI-style assistant turn (``tool_calls`` list, or the
    legacy ``function_call`` object) as text, one ``{"name", "arguments"}`` JSON object
    per line (``arguments`` parsed when it is a JSON string); ``None`` without calls."""
    calls = turn.get("tool_calls") or ([turn["function_call"]] if turn.get("function_call") else [])
    if not calls:
        return None
    if not isinstance(calls, list):
        raise ConversationFormatError(f"turn {index}: 'tool_calls' must be a list, got {type(calls).__name__}")
    lines = []
    for call in calls:
        fn = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise ConversationFormatError(f"turn {index}: a tool call needs a function name, got {call!r}")
        args = fn.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                pass  # kept as the string it is
        lines.append(json.dumps({"name": fn["name"], "arguments": args}, ensure_ascii=False))
    return "\n".join(lines)


def _turn_role_content(turn: Any, index: int) -> tuple[str, str]:
    if not isinstance(turn, dict):
        raise ConversationFormatError(f"turn {index}: expected an object with role/content, got {type(turn).__name__}")
    if "role" in turn or "content" in turn:
        role, content, keys = turn.get("role"), turn.get("content"), ("role", "content")
        calls = _tool_calls_text(turn, index)
        if calls is not None and content in (None, ""):  # an OpenAI-style call: content may be null
            content = calls
        elif calls is not None and isinstance(content, str):
            content = content + "\n" + calls
    elif "from" in turn or "value" in turn:
        role, content, keys = turn.get("from"), turn.get("value"), ("from", "value")
    else:
        raise ConversationFormatError(f"turn {index}: has neither role/content nor from/value keys (keys: {sorted(turn)})")
    if not isinstance(role, str):
        raise ConversationFormatError(f"turn {index}: '{keys[0]}' must be a string, got {role!r}")
    if not isinstance(content, str):
        raise ConversationFormatError(f"turn {index}: '{keys[1]}' must be a string, got {type(content).__name__}")
    return role, content


def _clean_round(turns: list[dict], stats: Counter) -> list[dict]:
    """One round (a user turn and the turns up to the next user turn) with the turns
    that cannot stand where they are dropped and counted: an assistant turn right after
    another, a tool result not preceded by an assistant turn or another result, a
    system turn. ``[]`` when no assistant turn is left (the user is unanswered)."""
    kept = [turns[0]]
    for m in turns[1:]:
        prev = kept[-1]["role"]
        answer_here = m["role"] == "assistant" and prev != "assistant"
        result_here = m["role"] == "tool" and prev in ("assistant", "tool")
        if answer_here or result_here:
            kept.append(m)
        else:
            stats["turn_unpaired_" + m["role"]] += 1
    if not any(m["role"] == "assistant" for m in kept):
        stats["turn_unpaired_user"] += 1
        return []
    return kept


def normalize_conversation(turns: Iterable[Any], max_rounds: int = 0, stats: Optional[Counter] = None,
                           keep_final_user: bool = False) -> list[dict]:
    """Clean a raw conversation into ``[system?] round+`` ``{role, content}`` dicts.

    Turns are ``{role, content}`` (OpenAI style) or ShareGPT ``{from, value}``. Roles
    (case-insensitive) are read as:

    ====================================================== =========== =============
    raw role                                               normalized  trained
    ====================================================== =========== =============
    ``system``                                             system      never
    ``user``, ``human``                                    user        reverse mode
    ``assistant``, ``gpt``, ``bot``, ``function_call``     assistant   assistant mode
    ``tool``, ``observation``, ``function_response``,      tool        never
    ``ipython``, ``function``
    anything else                                          dropped     (counted)
    ====================================================== =========== =============

    The model's own outputs are assistant turns: its answers and its tool calls (a
    ShareGPT ``function_call`` turn as written; an OpenAI ``tool_calls`` list or legacy
    ``function_call`` object as one ``{"name", "arguments"}`` JSON object per line,
    after any text content). What the environment returns is a ``tool`` turn: context,
    rendered by the chat template (``<|im_start|>tool``), never trained in either mask
    mode.

    A round is a user turn and everything up to the next user turn, so tool calls and
    their results stay in their round. Leading turns that are neither system nor user
    are dropped; a leading system message is kept. In a round, an assistant turn right
    after another, a tool turn that does not follow an assistant or tool turn, and a
    system turn are dropped; a round with no assistant turn is dropped (its user is
    unanswered). Tool turns that end the conversation are dropped (nothing after them
    is trained). ``max_rounds > 0`` keeps the first rounds (it counts user turns). No
    complete round gives ``[]``. Chats without tool turns come out as course-style
    ``[system?] (user, assistant)+``.

    A per-message ``"train": true|false`` is kept on the normalized message (it overrides
    the mask mode's role rule for that message, see ``conversation_func.trained_messages``);
    on a system or tool turn, or with a value that is not a JSON boolean, it raises.

    A structurally malformed turn (not an object, missing or non-string role/content, a
    tool call without a function name, a misplaced ``train`` flag) raises
    :class:`ConversationFormatError`.
    ``stats`` (a Counter), when given, counts what was dropped, by reason
    (``turn_unknown_role``, ``turn_leading_non_user``, ``turn_unpaired_<role>``,
    ``round_beyond_max_rounds``, ``turn_trailing_tool``).

    ``keep_final_user`` (reverse masking, which trains user turns): a conversation's last
    round that is a user turn with nothing answering it (``..., assistant, user``, or a
    lone ``user``) is kept as that user turn and counted ``kept_final_user_turn``, instead
    of being dropped as ``turn_unpaired_user``: it is the next user turn a simulator learns
    to write. A system turn after it is still dropped and counted.
    """
    stats = stats if stats is not None else Counter()
    if not isinstance(turns, (list, tuple)):
        raise ConversationFormatError(f"conversation must be a list of turns, got {type(turns).__name__}")
    msgs = []
    for i, turn in enumerate(turns):
        role, content = _turn_role_content(turn, i)
        norm = ROLE_ALIASES.get(role.strip().lower())
        if norm is None:
            stats["turn_unknown_role"] += 1
            continue
        msg = {"role": norm, "content": content}
        if isinstance(turn, dict) and "train" in turn:
            check_train_flag(turn["train"], norm, f"turn {i}")
            msg["train"] = turn["train"]
        msgs.append(msg)
    # Drop leading turns that cannot open a conversation.
    start = 0
    while start < len(msgs) and msgs[start]["role"] not in ("system", "user"):
        stats["turn_leading_non_user"] += 1
        start += 1
    msgs = msgs[start:]
    out: list[dict] = []
    if msgs and msgs[0]["role"] == "system":
        out.append(msgs[0])
        msgs = msgs[1:]
    rounds = 0
    i = 0
    while i < len(msgs):
        if msgs[i]["role"] != "user":  # only a second system message can stand here
            stats["turn_unpaired_" + msgs[i]["role"]] += 1
            i += 1
            continue
        end = i + 1
        while end < len(msgs) and msgs[end]["role"] != "user":
            end += 1
        final_user = keep_final_user and end == len(msgs) and not any(m["role"] == "assistant" for m in msgs[i:end])
        if final_user:
            kept = [msgs[i]]
            for m in msgs[i + 1:end]:
                stats["turn_unpaired_" + m["role"]] += 1
        else:
            kept = _clean_round(msgs[i:end], stats)
        i = end
        if not kept:
            continue
        if max_rounds > 0 and rounds >= max_rounds:
            stats["round_beyond_max_rounds"] += 1
            continue
        out.extend(kept)
        rounds += 1
        if final_user:
            stats["kept_final_user_turn"] += 1
    if rounds == 0:
        return []
    while out[-1]["role"] == "tool":
        stats["turn_trailing_tool"] += 1
        out.pop()
    return out


def is_single_turn_conversation(messages: list[dict]) -> bool:
    """Exactly one user and one assistant message, at most one system, nothing else."""
    roles = Counter(m.get("role") for m in messages)
    return (
        roles.get("user", 0) == 1
        and roles.get("assistant", 0) == 1
        and roles.get("system", 0) <= 1
        and sum(roles.values()) == roles.get("user", 0) + roles.get("assistant", 0) + roles.get("system", 0)
    )


def check_train_flag(flag: Any, role: str, where: str) -> None:
    """A per-message ``train`` flag must be a boolean on a user or assistant message."""
    if not isinstance(flag, bool):
        raise ConversationFormatError(f"{where} ({role}): 'train' must be true or false, got {flag!r}")
    if role not in FLAGGABLE_ROLES:
        raise ConversationFormatError(
            f"{where} ({role}): 'train' may be set on user and assistant messages only "
            f"({role} messages are never trained)")


def validate_messages(messages: Any, allowed_roles=MESSAGE_ROLES) -> None:
    """Raise :class:`ConversationFormatError` naming the first bad message; masking calls
    this so it never guesses about input that normalization should have cleaned."""
    if not isinstance(messages, (list, tuple)):
        raise ConversationFormatError(f"messages must be a list, got {type(messages).__name__}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ConversationFormatError(f"message {i}: expected a dict, got {type(m).__name__}")
        if m.get("role") not in allowed_roles:
            raise ConversationFormatError(
                f"message {i}: unknown role {m.get('role')!r} (expected one of {list(allowed_roles)}; "
                "normalize raw data with chat_format.normalize_conversation first)"
            )
        if not isinstance(m.get("content"), str):
            raise ConversationFormatError(
                f"message {i} ({m['role']}): content must be a string, got {type(m.get('content')).__name__}"
            )
        if "train" in m:
            check_train_flag(m["train"], m["role"], f"message {i}")
