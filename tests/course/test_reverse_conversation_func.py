"""Parts 3-4 reverse masking (reverse_conversation_func.py): official and repo golden
parity, parity with the independent prefix reference on generated conversations, the
single-turn reordering, the system-prompt insertion, and the all-masked case."""
import json
import random
from pathlib import Path

import pytest

from generate_golden_answers import reverse_reference
from reverse_conversation_func import (
    reverse_conversation_to_features,
    reverse_conversation_to_unpadded,
    reverse_conversations_to_unpadded,
    reverse_messages,
)
from conversation_func import has_trained_tokens
from test_conversation_func import as_lists, random_cases
from smolsft.chat.format import IGNORE_TOKEN_ID, ConversationFormatError
from reverse_conversation_func import REVERSE_SYSTEM_PROMPT

REPO = Path(__file__).resolve().parents[2]
SYS = {"role": "system", "content": "Be brief."}
U1, A1 = {"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}
U2, A2 = {"role": "user", "content": "And 3+3?"}, {"role": "assistant", "content": "6"}


@pytest.mark.parametrize("split", ["single_turn", "multi_turn"])
def test_official_golden_parity(course_ref, tokenizer, split):
    samples = json.loads((course_ref / "exercise_samples.json").read_text())[split]
    golden = json.loads((course_ref / "reverse_exercise_solutions.json").read_text())[split]
    assert len(samples) == len(golden) == 5
    for sample, want in zip(samples, golden):
        feats = reverse_conversation_to_features(sample["messages"], tokenizer, 2048, "left")
        assert as_lists(feats) == want["features"], f"official reverse {split} id {sample['id']}"


@pytest.mark.parametrize("split", ["single_turn", "multi_turn"])
def test_repo_golden_parity(tokenizer, split):
    samples = json.loads((REPO / "exercise_samples.json").read_text(encoding="utf-8"))[split]
    golden = json.loads((REPO / "reverse_exercise_solutions.json").read_text(encoding="utf-8"))
    for sample, want in zip(samples, golden[split], strict=True):
        feats = reverse_conversation_to_features(sample["messages"], tokenizer, 2048, golden["meta"]["truncation"])
        assert as_lists(feats) == want["features"], f"repo reverse {split} id {sample['id']}"


def test_features_equal_independent_reference(tokenizer):
    rng = random.Random(8)
    cases = random_cases(seed=9, n=100)
    # Also single-turn chats (Part 3), with and without system, some with the system last.
    for msgs, _, _ in random_cases(seed=10, n=30):
        one = [m for m in msgs if m["role"] == "system"][:1] + msgs[-2:]
        if rng.random() < 0.3:
            one = one[1:] + one[:1]
        cases.append((one, rng.choice([32, 128, 2048]), rng.choice(["left", "right"])))
    for k, (msgs, max_length, truncation) in enumerate(cases):
        got = reverse_conversation_to_features(msgs, tokenizer, max_length, truncation)
        assert as_lists(got) == reverse_reference(msgs, tokenizer, max_length, truncation), f"case {k}: {msgs!r}"


def test_batched_reverse_equals_per_call(tokenizer):
    convs = [msgs for msgs, _, _ in random_cases(seed=31, n=20)] + [[SYS, U1, A1], [U1, A1], []]
    for msgs, got in zip(convs, reverse_conversations_to_unpadded(convs, tokenizer, 200, "right"), strict=True):
        want = reverse_conversation_to_unpadded(msgs, tokenizer, 200, "right")
        assert (got is None) == (want is None)
        if got is not None:
            assert got["input_ids"].tolist() == want["input_ids"].tolist()
            assert got["labels"].tolist() == want["labels"].tolist()
    with pytest.raises(ConversationFormatError, match="conversation 1: message 0: unknown role 'bot'"):
        reverse_conversations_to_unpadded([[U1, A1], [{"role": "bot", "content": "x"}]], tokenizer, 64)


def test_single_turn_is_reordered():
    assert reverse_messages([U1, A1]) == [A1, U1]
    assert reverse_messages([SYS, U1, A1]) == [SYS, A1, U1]
    original = [SYS, U1, A1]
    reverse_messages(original)
    assert original == [SYS, U1, A1]  # the caller's list is not modified


def test_multi_turn_gets_system_prompt():
    assert reverse_messages([U1, A1, U2, A2]) == [{"role": "system", "content": REVERSE_SYSTEM_PROMPT}, U1, A1, U2, A2]
    assert reverse_messages([SYS, U1, A1, U2, A2]) == [SYS, U1, A1, U2, A2]
    assert reverse_messages([]) == []


def test_only_user_spans_are_trained(tokenizer):
    feats = reverse_conversation_to_features([U1, A1, U2, A2], tokenizer, 256, "left")
    labels = [x for x in feats["labels"].tolist() if x != IGNORE_TOKEN_ID]
    assert tokenizer.decode(labels) == (
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>user\nAnd 3+3?<|im_end|>\n")
    single = reverse_conversation_to_features([SYS, U1, A1], tokenizer, 256, "left")
    n = int(single["attention_mask"].sum())
    assert tokenizer.decode(single["input_ids"][:n].tolist()) == (
        "\n<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n")
    trained = single["labels"][single["labels"] != IGNORE_TOKEN_ID].tolist()
    assert tokenizer.decode(trained) == "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"


def test_all_masked_reverse_case(tokenizer):
    """Right truncation of a reordered single-turn chat with a long answer cuts the user
    turn (it comes last): nothing to train on, and the helper says so."""
    msgs = [{"role": "user", "content": "Why?"}, {"role": "assistant", "content": "because " * 200}]
    assert not has_trained_tokens(reverse_conversation_to_features(msgs, tokenizer, 64, "right"))
    assert not has_trained_tokens(reverse_conversation_to_unpadded(msgs, tokenizer, 64, "right"))
    assert has_trained_tokens(reverse_conversation_to_features(msgs, tokenizer, 64, "left"))


def test_bad_input_and_empty(tokenizer):
    assert reverse_conversation_to_features([], tokenizer, 64, "left") is None
    with pytest.raises(ConversationFormatError, match="message 1: unknown role 'bot'"):
        reverse_conversation_to_features([U1, {"role": "bot", "content": "x"}], tokenizer, 64, "left")
