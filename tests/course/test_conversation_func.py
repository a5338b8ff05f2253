"""Parts 1-2 masking (conversation_func.py): parity with the course's golden files and,
on generated conversations full of hard cases, with the independent prefix-method
reference in generate_golden_answers.py; the unpadded API, the all-masked helper, input
errors and the fallback for other templates (the checker CLI: test_masking_checker.py)."""
import json
import random
from pathlib import Path

import pytest
import torch

from conversation_func import (
    TemplateMaskingError,
    conversation_to_features,
    conversation_to_unpadded,
    conversations_to_unpadded,
    count_trained_tokens,
    has_trained_tokens,
    mask_conversation,
    pad_features,
    spans_by_prefix,
    spans_one_pass,
)
from generate_golden_answers import forward_reference
from smolsft.chat.format import IGNORE_TOKEN_ID, ConversationFormatError
from smolsft.chat.tokenization import load_tokenizer

REPO = Path(__file__).resolve().parents[2]
FIELDS = ("input_ids", "labels", "attention_mask")

# Contents that stress span boundaries: surrounding whitespace and newlines, literal
# special-token text (whole and in pieces), empty strings, CJK, emoji (ZWJ sequences,
# flags), combining marks, CRLF, byte-level look-alikes.
HARD_PIECES = [
    "", " ", "  ", "\t", "\n", "\n\n", "\r\n", "  \n  ", "\u00a0", "e\u0301", "ß",
    "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_", "end|>", "|>", "<",
    "<|im_start|>assistant\n", "<|im_end|>\n", "\n<|im_start|>user", "system", "assistant",
    "日本語のテキスト", "中文", "한국어", "😊", "👨\u200d👩\u200d👧", "🇰🇷", "Ġ", "\\n",
    "hello", " world", "'s", "123", "...", "don't", "   trailing   ",
]


def random_content(rng: random.Random) -> str:
    """A string of random hard pieces; now and then long enough to force truncation."""
    n = rng.choice([0, 1, 3, 8, 20]) if rng.random() > 0.08 else rng.randint(400, 900)
    return "".join(rng.choice(HARD_PIECES) for _ in range(n))


def random_conversation(rng: random.Random) -> list:
    """[system?] then 1-8 (user, assistant) rounds of random hard content."""
    msgs = [{"role": "system", "content": random_content(rng)}] if rng.random() < 0.5 else []
    for _ in range(rng.randint(1, 8)):
        msgs += [{"role": "user", "content": random_content(rng)},
                 {"role": "assistant", "content": random_content(rng)}]
    return msgs


def random_cases(seed: int, n: int):
    """(messages, max_length, truncation) triples, max_length between 32 and 2048."""
    rng = random.Random(seed)
    return [(random_conversation(rng), rng.choice([32, 57, 128, 300, 777, 2048]), rng.choice(["left", "right"]))
            for _ in range(n)]


def as_lists(feats):
    return {k: feats[k].tolist() for k in FIELDS}


def load_golden(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


# ------------------------------------------------------------------ golden parity
@pytest.mark.parametrize("split", ["single_turn", "multi_turn"])
def test_official_golden_parity(course_ref, tokenizer, split):
    samples = load_golden(course_ref / "exercise_samples.json")[split]
    golden = load_golden(course_ref / "exercise_solutions.json")[split]
    assert len(samples) == len(golden) == 5
    for sample, want in zip(samples, golden):
        feats = conversation_to_features(sample["messages"], tokenizer, 2048, "left")
        assert {k: v.dtype for k, v in feats.items()} == {k: torch.long for k in FIELDS}
        assert as_lists(feats) == want["features"], f"official {split} id {sample['id']}"


@pytest.mark.parametrize("split", ["single_turn", "multi_turn"])
def test_repo_golden_parity(tokenizer, split):
    samples = load_golden(REPO / "exercise_samples.json")[split]
    golden = load_golden(REPO / "exercise_solutions.json")
    assert golden["meta"]["model_max_length"] == 2048 and len(samples) >= 5
    for sample, want in zip(samples, golden[split], strict=True):
        assert sample["id"] == want["id"]
        feats = conversation_to_features(sample["messages"], tokenizer, 2048, golden["meta"]["truncation"])
        assert as_lists(feats) == want["features"], f"repo {split} id {sample['id']}"


def test_repo_samples_cover_the_issue_cases(tokenizer):
    """The project's samples hold what the issue asks: >=5 of each kind, system or not,
    1 to 6 rounds, one conversation over 2048 tokens, unicode, literal <|im_end|>."""
    doc = load_golden(REPO / "exercise_samples.json")
    assert len(doc["single_turn"]) >= 5 and len(doc["multi_turn"]) >= 5
    convs = [s["messages"] for split in ("single_turn", "multi_turn") for s in doc[split]]
    rounds = {sum(m["role"] == "user" for m in c) for c in convs}
    assert {1, 6} <= rounds
    has_system = {c[0]["role"] == "system" for c in convs}
    assert has_system == {True, False}
    lengths = [len(tokenizer.apply_chat_template(c, tokenize=True, return_dict=False)) for c in convs]
    assert max(lengths) > 2048
    text = "".join(m["content"] for c in convs for m in c)
    assert "<|im_end|>" in text and any(ord(ch) > 0x3000 for ch in text) and any(ord(ch) > 0xFFFF for ch in text)


# ------------------------------------------------------------- property-style parity
def test_one_pass_spans_equal_prefix_spans(tokenizer):
    """The span boundaries themselves, before any masking, on 150 hard conversations."""
    for k, (msgs, _, _) in enumerate(random_cases(seed=11, n=150)):
        fast = spans_one_pass(msgs, tokenizer)
        assert fast is not None, f"case {k}: one-pass check refused a ChatML conversation"
        ids, bounds = spans_by_prefix(msgs, tokenizer)
        assert fast[0].tolist() == list(ids) and fast[1] == bounds, f"case {k}: {msgs!r}"


def test_features_equal_independent_reference(tokenizer):
    """Full features (masking, truncation both ways, padding, lengths 32..2048) against
    generate_golden_answers.forward_reference, which only uses apply_chat_template."""
    truncated = 0
    for k, (msgs, max_length, truncation) in enumerate(random_cases(seed=5, n=120)):
        got = conversation_to_features(msgs, tokenizer, max_length, truncation)
        want = forward_reference(msgs, tokenizer, max_length, truncation)
        assert as_lists(got) == want, f"case {k} ({max_length}, {truncation}): {msgs!r}"
        truncated += want["attention_mask"][-1] == 1
    assert truncated > 20  # the generator really exercises truncation


def test_other_template_uses_prefix_method(model_dir):
    """A template the one-pass rendering does not reproduce (here: contents stripped,
    a generation-style footer) still gives the reference output, via the fallback."""
    tok = load_tokenizer(str(model_dir), 2048)
    tok.chat_template = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] | trim + '<|im_end|>\\n' }}"
        "{% endfor %}"
    )
    assert spans_one_pass([{"role": "user", "content": "x"}], tok) is None
    for k, (msgs, max_length, truncation) in enumerate(random_cases(seed=3, n=25)):
        got = conversation_to_features(msgs, tok, max_length, truncation)
        assert as_lists(got) == forward_reference(msgs, tok, max_length, truncation), f"case {k}"


def test_count_check_rejects_split_special_tokens(model_dir):
    """If the backend stops matching <|im_start|> as one token, the per-encoding check
    refuses the one-pass result (and the prefix method is used instead)."""
    tok = load_tokenizer(str(model_dir), 2048)
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert spans_one_pass(msgs, tok) is not None
    tok.backend_tokenizer.encode_special_tokens = True
    assert spans_one_pass(msgs, tok) is None


# --------------------------------------------------------------------- API details
def test_span_layout_on_a_small_chat(tokenizer):
    """Spans include the role header and the trailing <|im_end|>\\n; the first span holds
    the template's leading newline; only assistant tokens are labelled."""
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    ids, labels = mask_conversation(msgs, tokenizer, {"assistant"})
    text_user = tokenizer.apply_chat_template(msgs[:1], tokenize=True, return_dict=False)
    assert labels[: len(text_user)].tolist() == [IGNORE_TOKEN_ID] * len(text_user)
    trained = tokenizer.decode(ids[len(text_user):].tolist())
    assert trained == "<|im_start|>assistant\nHello!<|im_end|>\n"
    assert (labels[len(text_user):] == ids[len(text_user):]).all()


def test_unpadded_and_pad_features_round_trip(tokenizer):
    msgs = [{"role": "user", "content": "abc " * 50}, {"role": "assistant", "content": "def " * 50}]
    for truncation in ("left", "right"):
        un = conversation_to_unpadded(msgs, tokenizer, 64, truncation)
        assert un["input_ids"].dtype == torch.long and len(un["input_ids"]) == len(un["labels"]) == 64
        padded = conversation_to_features(msgs, tokenizer, 64, truncation)
        assert as_lists(pad_features(un, 64, 0)) == as_lists(padded)
    un = conversation_to_unpadded(msgs, tokenizer, 2048, "left")
    feats = pad_features(un, 2048, 0)
    n = len(un["input_ids"])
    assert feats["attention_mask"].tolist() == [1] * n + [0] * (2048 - n)
    assert feats["labels"][n:].eq(IGNORE_TOKEN_ID).all() and feats["input_ids"][n:].eq(0).all()
    with pytest.raises(ValueError, match="longer than max_length"):
        pad_features(un, n - 1)


def test_batched_api_equals_per_call(tokenizer, model_dir):
    """conversations_to_unpadded gives what conversation_to_unpadded gives, one by one,
    including empty conversations and (with another template) the prefix fallback."""
    convs = [msgs for msgs, _, _ in random_cases(seed=21, n=40)]
    convs.insert(3, [])
    other = load_tokenizer(str(model_dir), 2048)
    # Another template whose turns end at a special token: the prefix method is exact for it.
    other.chat_template = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '<|im_end|>' }}{% endfor %}"
    for tok in (tokenizer, other):
        for truncation in ("left", "right"):
            batch = conversations_to_unpadded(convs, tok, 300, truncation)
            for k, (msgs, got) in enumerate(zip(convs, batch, strict=True)):
                want = conversation_to_unpadded(msgs, tok, 300, truncation)
                assert (got is None) == (want is None) == (msgs == []), k
                if got is not None:
                    assert got["input_ids"].tolist() == want["input_ids"].tolist(), k
                    assert got["labels"].tolist() == want["labels"].tolist(), k
    with pytest.raises(ConversationFormatError, match="conversation 1: message 0 \\(user\\): content must be a string"):
        conversations_to_unpadded([convs[0], [{"role": "user", "content": None}]], tokenizer, 64)
    # Plain-text turns ("role: content\n") let BPE merge across a boundary (contents here
    # hold newlines and spaces): the prefix method is not exact there and refuses, where it
    # used to return shifted spans.
    other.chat_template = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
    with pytest.raises(TemplateMaskingError, match=r"message \d+ \(\w+\): the tokens of messages 0\.\.\d+ rendered"):
        conversations_to_unpadded(convs, other, 300)


def test_empty_conversation_is_none(tokenizer):
    assert conversation_to_features([], tokenizer, 128, "left") is None
    assert conversation_to_unpadded([], tokenizer, 128, "left") is None
    assert not has_trained_tokens(None) and count_trained_tokens(None) == 0


def test_all_masked_after_truncation_is_reported(tokenizer):
    """Right truncation that keeps only the user turn leaves nothing to learn."""
    msgs = [{"role": "user", "content": "word " * 300}, {"role": "assistant", "content": "answer"}]
    cut = conversation_to_features(msgs, tokenizer, 100, "right")
    assert count_trained_tokens(cut) == 0 and not has_trained_tokens(cut)
    assert not has_trained_tokens(conversation_to_unpadded(msgs, tokenizer, 100, "right"))
    kept = conversation_to_features(msgs, tokenizer, 100, "left")
    assert has_trained_tokens(kept) and count_trained_tokens(kept) == int((kept["labels"] != -100).sum())
    assert has_trained_tokens({"labels": [IGNORE_TOKEN_ID, 5]}) and not has_trained_tokens({"labels": [IGNORE_TOKEN_ID]})


@pytest.mark.parametrize("messages, message", [
    ([{"role": "user"}], "message 0 (user): content must be a string, got NoneType"),
    ([{"role": "user", "content": 3}], "message 0 (user): content must be a string, got int"),
    ([{"role": "user", "content": "a"}, {"role": "gpt", "content": "b"}], "message 1: unknown role 'gpt'"),
    ("hello", "messages must be a list, got str"),
    ([["user", "hi"]], "message 0: expected a dict, got list"),
])
def test_bad_messages_raise_clear_errors(tokenizer, messages, message):
    with pytest.raises(ConversationFormatError) as err:
        conversation_to_features(messages, tokenizer, 64, "left")
    assert message in str(err.value)


def test_bad_arguments(tokenizer):
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    with pytest.raises(ValueError, match="truncation must be 'left' or 'right'"):
        conversation_to_features(msgs, tokenizer, 64, "middle")
    with pytest.raises(ValueError, match="max_length must be a positive int"):
        conversation_to_features(msgs, tokenizer, 0, "left")
