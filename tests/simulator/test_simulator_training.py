"""The user simulator's training data (reverse masking): a conversation's final user turn
is trained (issue 40 row 2), the record's intent goes into the simulator's system message,
the end marker is trained after the last assistant turn when asked for, and none of it
changes the course's outputs when unused (the golden files: scripts/check_exercises_3.sh, _4.sh)."""
import json

import pytest

from smolsft.chat.format import IGNORE_TOKEN_ID
from smolsft.data import sft as sft_data
from smolsft.simulator.intent import END_MARKER, INTENT_PREFIX, SOURCE_FIELD, SOURCE_STANDIN, record_intent
from reverse_conversation_func import (REVERSE_SYSTEM_PROMPT, reverse_conversation_to_unpadded, reverse_messages,
                                       simulator_prompt)

U1, A1 = {"role": "user", "content": "Tell me about tides."}, {"role": "assistant", "content": "The moon pulls."}
U2, A2 = {"role": "user", "content": "And the sun?"}, {"role": "assistant", "content": "It pulls less."}


def trained_text(tokenizer, feats) -> str:
    return tokenizer.decode([t for t, y in zip(feats["input_ids"].tolist(), feats["labels"].tolist())
                             if y != IGNORE_TOKEN_ID])


def build(tmp_path, tokenizer, records, mask_mode="reverse", end_marker=False, max_length=512):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(records))
    return sft_data.build_features(str(path), tokenizer, max_length, "right", 0, mask_mode, end_marker=end_marker)


def sample_text(tokenizer, arrays, i=0) -> tuple[str, str]:
    s, e = arrays["offsets"][i], arrays["offsets"][i + 1]
    ids, labels = arrays["input_ids"][s:e].tolist(), arrays["labels"][s:e].tolist()
    return tokenizer.decode(ids), tokenizer.decode([t for t, y in zip(ids, labels) if y != IGNORE_TOKEN_ID])


def test_final_user_turn_is_trained_in_reverse_mode(tmp_path, tokenizer):
    """A chat ending `..., assistant, user` (flagged train: true or not): reverse mode trains
    that last user turn and counts it as kept; assistant mode still drops it as unpaired."""
    last = {"role": "user", "content": "What about storms?", "train": True}
    for final in (last, {"role": "user", "content": "What about storms?"}):
        arrays, stats = build(tmp_path, tokenizer, [{"id": "a", "conversations": [U1, A1, final]}])
        assert stats["conversations_kept"] == 1 and "turn_unpaired_user" not in stats
        assert stats["kept_final_user_turn"] == 1
        _, trained = sample_text(tokenizer, arrays)
        assert trained.endswith("<|im_start|>user\nWhat about storms?<|im_end|>\n")
        assert "Tell me about tides." in trained
    _, stats = build(tmp_path, tokenizer, [{"id": "a", "conversations": [U1, A1, last]}], mask_mode="assistant")
    assert stats["turn_unpaired_user"] == 1 and "kept_final_user_turn" not in stats


def test_unanswered_user_turn_mid_conversation_is_still_dropped(tmp_path, tokenizer):
    _, stats = build(tmp_path, tokenizer, [{"id": "a", "conversations": [U1, U2, A2]}])
    assert stats["turn_unpaired_user"] == 1 and "kept_final_user_turn" not in stats


def test_intent_goes_into_the_system_message(tmp_path, tokenizer):
    rec = {"id": "a", "intent": "Learn why tides happen.", "conversations": [U1, A1, U2, A2]}
    arrays, _ = build(tmp_path, tokenizer, [rec])
    text, _ = sample_text(tokenizer, arrays)
    assert text.startswith(f"\n<|im_start|>system\n{REVERSE_SYSTEM_PROMPT}\n\n{INTENT_PREFIX}Learn why tides happen."
                           "<|im_end|>\n<|im_start|>user\nTell me about tides.")
    plain, _ = sample_text(tokenizer, build(tmp_path, tokenizer, [{"id": "a", "conversations": [U1, A1, U2, A2]}])[0])
    assert plain.startswith(f"\n<|im_start|>system\n{REVERSE_SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n")
    # The assistant masking never sees the intent.
    with_intent, _ = build(tmp_path, tokenizer, [rec], mask_mode="assistant")
    without, _ = build(tmp_path, tokenizer, [{"id": "a", "conversations": [U1, A1, U2, A2]}], mask_mode="assistant")
    assert with_intent["input_ids"].tolist() == without["input_ids"].tolist()
    # A conversation's own system message keeps its text, the intent follows it.
    own = reverse_messages([{"role": "system", "content": "Be brief."}, U1, A1, U2, A2], intent="X")
    assert own[0]["content"] == f"Be brief.\n\n{INTENT_PREFIX}X"
    # Single-turn pairs are Part 3's back-translation: no intent (it would give the request away).
    assert reverse_messages([U1, A1], intent="X") == [A1, U1]


@pytest.mark.parametrize("bad", [3, "", "  ", ["x"]])
def test_a_bad_intent_names_the_record(tmp_path, tokenizer, bad):
    with pytest.raises(sft_data.DataFormatError, match=r"d.json record 0: 'intent' must be a non-empty string"):
        build(tmp_path, tokenizer, [{"id": "a", "intent": bad, "conversations": [U1, A1, U2, A2]}])


def test_end_marker_is_trained_after_the_last_assistant_turn(tmp_path, tokenizer):
    convs = [{"id": "a", "conversations": [U1, A1, U2, A2]}, {"id": "b", "conversations": [U1, A1, U2]},
             {"id": "c", "conversations": [U1, A1]}]
    on, _ = build(tmp_path, tokenizer, convs, end_marker=True)
    off, _ = build(tmp_path, tokenizer, convs)
    text, trained = sample_text(tokenizer, on, 0)
    assert text.endswith(f"<|im_start|>assistant\nIt pulls less.<|im_end|>\n<|im_start|>user\n{END_MARKER}<|im_end|>\n")
    assert trained.endswith(f"<|im_start|>user\n{END_MARKER}<|im_end|>\n")
    assert END_MARKER not in sample_text(tokenizer, off, 0)[0]
    # Ending with a user turn (nothing closed it) or a single-turn pair (Part 3): no marker.
    for i in (1, 2):
        assert sample_text(tokenizer, on, i) == sample_text(tokenizer, off, i)
    key = dict(tokenizer=tokenizer, max_length=64, truncation="right", max_rounds=0, mask_mode="reverse",
               conversation_field="conversations")
    assert sft_data.cache_key("h", **key) != sft_data.cache_key("h", **key, end_marker=True)
    assert "simulator_end_marker" not in sft_data.cache_key("h", **key)


def test_prompt_with_intent_is_prefix_of_the_training_sample(tokenizer):
    msgs = [U1, A1, U2, A2]
    sample = reverse_conversation_to_unpadded(msgs, tokenizer, 10_000, "right", intent="Tides.", end_marker=True)
    ids = sample["input_ids"].tolist()
    for k in (0, 2, 4):
        p = tokenizer(simulator_prompt(msgs[:k], tokenizer, intent="Tides."), add_special_tokens=False)["input_ids"]
        assert ids[:len(p)] == p
        want = msgs[k]["content"] if k < 4 else END_MARKER
        rest = tokenizer.decode(ids[len(p):])
        assert rest.startswith(want + "<|im_end|>"), (k, rest)


def test_record_intent_falls_back_to_the_first_request():
    assert record_intent({"intent": " Tides. "}, [U1]) == ("Tides.", SOURCE_FIELD)
    assert record_intent({"conversations": []}, [U1, A1]) == ("Tell me about tides.", SOURCE_STANDIN)
    with pytest.raises(ValueError, match="non-empty string"):
        record_intent({"intent": 5}, [U1])


def test_training_refuses_the_end_marker_in_assistant_mode(tmp_path):
    import train_hw_parallel

    with pytest.raises(SystemExit, match="--simulator_end_marker trains a user turn: it needs --mask_mode reverse"):
        train_hw_parallel.main(["--model_name_or_path", "x", "--data_path", "x.json", "--output_dir",
                                str(tmp_path / "o"), "--simulator_end_marker", "True", "--report_to", "none"])
