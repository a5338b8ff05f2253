"""Generation as a user (reverse_conversation_func.simulator_prompt): the rendered prompt,
tokenized, is exactly the prefix of the reverse-masked training sample up to the user
turn's content, for every user turn of the demo set and the exercise samples (multi-turn,
Part 4) and for every single-turn pair (back-translation, Part 3); the content that
follows is trained."""
import json
from pathlib import Path

import pytest

from smolsft.chat.format import IGNORE_TOKEN_ID, ConversationFormatError, is_single_turn_conversation, normalize_conversation
from reverse_conversation_func import REVERSE_SYSTEM_PROMPT, reverse_conversation_to_unpadded, simulator_prompt
from test_conversation_func import random_cases

REPO = Path(__file__).resolve().parents[2]


def conversations():
    demo = json.loads((REPO / "data" / "demo_sft.json").read_text())
    out = [normalize_conversation(r["conversations"]) for r in demo]
    samples = json.loads((REPO / "exercise_samples.json").read_text())
    out += [s["messages"] for split in ("single_turn", "multi_turn") for s in samples[split]]
    return out


def check_prefix(tokenizer, prompt: str, msgs: list, user_text: str):
    sample = reverse_conversation_to_unpadded(msgs, tokenizer, 100_000, "right")
    ids, labels = sample["input_ids"].tolist(), sample["labels"].tolist()
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert ids[:len(p)] == p
    # The prompt ends with the trained user header; the content and <|im_end|> follow, trained.
    content = tokenizer(user_text + "<|im_end|>", add_special_tokens=False)["input_ids"]
    assert ids[len(p):len(p) + len(content)] == content
    assert all(x != IGNORE_TOKEN_ID for x in labels[len(p) - 3:len(p) + len(content)])
    assert labels[len(p) - 4] == IGNORE_TOKEN_ID  # the token before the header (previous turn's newline)


def starts_with_text(content: str) -> bool:
    """Content whose first character is not whitespace: a leading newline or space may
    merge with the header's newline in the training text (then a model prompted at the
    header starts that turn with another token, so the property cannot hold)."""
    return bool(content[:1].strip())


def test_prompt_is_prefix_of_training_tokens(tokenizer):
    """Every user turn of the demo set and of the exercise samples except the exercise
    samples' edge cases whose user content starts with whitespace (3 of them)."""
    n_multi = n_single = skipped = 0
    for msgs in conversations():
        users = [m["content"] for m in msgs if m["role"] == "user"]
        if not all(starts_with_text(c) for c in users):
            skipped += 1
            continue
        if is_single_turn_conversation(msgs):
            answer = [m for m in msgs if m["role"] != "user"]
            answer.sort(key=lambda m: m["role"] != "system")
            user = next(m["content"] for m in msgs if m["role"] == "user")
            check_prefix(tokenizer, simulator_prompt(answer, tokenizer, back_translation=True), msgs, user)
            n_single += 1
            continue
        for k, m in enumerate(msgs):
            if m["role"] == "user":
                check_prefix(tokenizer, simulator_prompt(msgs[:k], tokenizer), msgs, m["content"])
                n_multi += 1
    assert n_single > 150 and n_multi > 300 and skipped <= 3


def test_prompt_is_prefix_on_hard_contents(tokenizer):
    """Generated hard contents (literal special-token text, CJK, emoji, CRLF): the prefix
    property holds for every user turn whose content does not start with whitespace."""
    checked = 0
    for msgs, _, _ in random_cases(seed=3, n=40):
        if is_single_turn_conversation(msgs):
            continue
        for k, m in enumerate(msgs):
            if m["role"] == "user" and starts_with_text(m["content"]) and k > 0:
                check_prefix(tokenizer, simulator_prompt(msgs[:k], tokenizer), msgs, m["content"])
                checked += 1
    assert checked > 20


def test_prompt_text_and_errors(tokenizer):
    u, a = {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}
    assert simulator_prompt([u, a], tokenizer) == (
        f"\n<|im_start|>system\n{REVERSE_SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\nhello<|im_end|>\n<|im_start|>user\n")
    assert simulator_prompt([a], tokenizer, back_translation=True) == \
        "\n<|im_start|>assistant\nhello<|im_end|>\n<|im_start|>user\n"
    assert simulator_prompt([], tokenizer).startswith(f"\n<|im_start|>system\n{REVERSE_SYSTEM_PROMPT}")
    with pytest.raises(ConversationFormatError, match="ends with a user turn"):
        simulator_prompt([u], tokenizer)
    with pytest.raises(ConversationFormatError, match=r"\[system\?\] \[assistant\]"):
        simulator_prompt([u, a], tokenizer, back_translation=True)
