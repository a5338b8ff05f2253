"""Per-turn training control: ``--train_turns all|last`` and the per-message ``"train"``
flag, in both mask modes, against the independent prefix-method reference
(generate_golden_answers.reference_features, which renders every prefix with the
tokenizer's own chat template); normalization keeps the flag, misplaced flags are errors
naming the file and record, a last turn cut by truncation drops the sample (counted),
and the feature cache key and the run plan hold the setting."""
import json
import random

import pytest

from smolsft.data import sft as sft_data
from smolsft.chat.format import IGNORE_TOKEN_ID, ConversationFormatError, normalize_conversation
from conversation_func import ASSISTANT_ROLES, conversation_to_unpadded, pad_features, trained_messages
from generate_golden_answers import forward_reference, reverse_reference
from reverse_conversation_func import reverse_conversation_to_unpadded, reverse_messages
from smolsft.train.records import check_run_plan
from test_conversation_func import as_lists, random_cases

FUNCS = {
    "assistant": (lambda m, tok, n, t, turns: conversation_to_unpadded(m, tok, n, t, ASSISTANT_ROLES, turns),
                  forward_reference),
    "reverse": (reverse_conversation_to_unpadded, reverse_reference),
}


def features(mode, msgs, tok, max_length, truncation, turns):
    unpadded = FUNCS[mode][0](msgs, tok, max_length, truncation, turns)
    return as_lists(pad_features(unpadded, max_length, tok.pad_token_id))


def with_random_flags(msgs, rng):
    out = []
    for m in msgs:
        m = dict(m)
        if m["role"] in ("user", "assistant") and rng.random() < 0.35:
            m["train"] = rng.random() < 0.5
        out.append(m)
    return out


@pytest.mark.parametrize("mode", ["assistant", "reverse"])
def test_last_turn_equals_reference_both_truncation_sides(tokenizer, mode):
    cases = random_cases(seed=21, n=60)
    cut, kept_partly, sides = 0, 0, set()
    for k, (msgs, max_length, truncation) in enumerate(cases):
        got = features(mode, msgs, tokenizer, max_length, truncation, "last")
        want = FUNCS[mode][1](msgs, tokenizer, max_length, truncation, "last")
        assert got == want, f"case {k} ({mode}, {max_length}, {truncation})"
        trained = [x for x in want["labels"] if x != IGNORE_TOKEN_ID]
        # Only one message is trained: at most one run of labelled positions.
        runs = sum(1 for j, x in enumerate(want["labels"]) if x != IGNORE_TOKEN_ID
                   and (j == 0 or want["labels"][j - 1] == IGNORE_TOKEN_ID))
        assert runs <= 1, f"case {k}: {runs} trained runs with train_turns=last"
        if want["attention_mask"][-1] == 1:
            sides.add(truncation)
            cut += not trained
            kept_partly += bool(trained)
    # The generator exercises truncation on both sides, including a last turn cut away.
    assert sides == {"left", "right"} and cut > 0 and kept_partly > 0


@pytest.mark.parametrize("mode", ["assistant", "reverse"])
@pytest.mark.parametrize("turns", ["all", "last"])
def test_per_message_flags_equal_reference(tokenizer, mode, turns):
    rng = random.Random(31)
    n_flagged = 0
    for k, (msgs, max_length, truncation) in enumerate(random_cases(seed=33, n=40)):
        msgs = with_random_flags(msgs, rng)
        n_flagged += sum("train" in m for m in msgs)
        got = features(mode, msgs, tokenizer, max_length, truncation, turns)
        want = FUNCS[mode][1](msgs, tokenizer, max_length, truncation, turns)
        assert got == want, f"case {k} ({mode}, {turns}, {max_length}, {truncation})"
    assert n_flagged > 30


def test_all_turns_without_flags_is_unchanged(tokenizer):
    """The default equals the masking without the new options (the golden files' tests
    check the values; this checks the new arguments' defaults route there)."""
    for msgs, max_length, truncation in random_cases(seed=41, n=20):
        base = conversation_to_unpadded(msgs, tokenizer, max_length, truncation)
        explicit = conversation_to_unpadded(msgs, tokenizer, max_length, truncation, ASSISTANT_ROLES, "all")
        assert base["labels"].tolist() == explicit["labels"].tolist()


def test_trained_messages_rule():
    u, a, s = ({"role": r, "content": r} for r in ("user", "assistant", "system"))
    msgs = [s, u, a, dict(u), dict(a, train=False), dict(u, train=True)]
    assert trained_messages(msgs, {"assistant"}) == [False, False, True, False, False, True]
    # "last" picks the last assistant message (flagged False here), the flags then decide.
    assert trained_messages(msgs, {"assistant"}, "last") == [False, False, False, False, False, True]
    assert trained_messages(msgs, {"user"}, "last") == [False, False, False, False, False, True]
    with pytest.raises(ValueError, match="train_turns"):
        trained_messages(msgs, {"user"}, "first")


def test_reverse_last_turn_is_the_last_user_turn(tokenizer):
    msgs = [{"role": "user", "content": "first question"}, {"role": "assistant", "content": "first answer"},
            {"role": "user", "content": "second question"}, {"role": "assistant", "content": "second answer"}]
    f = reverse_conversation_to_unpadded(msgs, tokenizer, 2048, "left", "last")
    text = tokenizer.decode([int(i) for i, l in zip(f["input_ids"], f["labels"]) if l != IGNORE_TOKEN_ID])
    assert text == "<|im_start|>user\nsecond question<|im_end|>\n"
    # Part 3's single-turn reorder keeps a message's flag.
    assert reverse_messages([dict(msgs[0], train=False), msgs[1]])[1] == dict(msgs[0], train=False)


def test_normalization_keeps_the_flag_and_rejects_misplaced_ones():
    raw = [{"from": "human", "value": "q", "train": False}, {"role": "gpt", "content": "a", "train": True}]
    with pytest.raises(ConversationFormatError, match=r"turn 0 \(system\): 'train' may be set"):
        normalize_conversation([{"role": "system", "content": "s", "train": True}] + raw)
    assert normalize_conversation(raw) == [{"role": "user", "content": "q", "train": False},
                                           {"role": "assistant", "content": "a", "train": True}]
    for bad, match in (({"role": "tool", "content": "r", "train": False}, r"turn 2 \(tool\).*user and assistant"),
                       ({"role": "assistant", "content": "r", "train": "yes"}, r"turn 2 \(assistant\).*true or false")):
        with pytest.raises(ConversationFormatError, match=match):
            normalize_conversation([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}, bad])


def write(path, records):
    path.write_text(json.dumps(records))
    return str(path)


def test_flag_on_system_message_names_file_and_record(tmp_path, tokenizer):
    good = {"conversations": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    bad = {"conversations": [{"role": "system", "content": "s", "train": True}] + good["conversations"]}
    path = write(tmp_path / "d.json", [good, bad])
    with pytest.raises(sft_data.DataFormatError, match=r"d\.json record 1: turn 0 \(system\): 'train' may be set"):
        sft_data.build_features(path, tokenizer, 256, "right", 0, "assistant")


@pytest.mark.parametrize("mode", ["assistant", "reverse"])
def test_last_turn_cut_by_truncation_is_dropped_and_counted(tmp_path, tokenizer, mode):
    long = "word " * 300
    recs = [{"conversations": [{"role": "user", "content": "short q"}, {"role": "assistant", "content": "short a"},
                               {"role": "user", "content": long}, {"role": "assistant", "content": long},
                               {"role": "user", "content": "last q"}, {"role": "assistant", "content": "last a"}]}]
    path = write(tmp_path / "d.json", recs)
    _, stats = sft_data.build_features(path, tokenizer, 128, "right", 0, mode, train_turns="last")
    assert stats["conversations_kept"] == 0 and stats["dropped_no_trained_token_after_truncation"] == 1
    arrays, stats = sft_data.build_features(path, tokenizer, 128, "left", 0, mode, train_turns="last")
    assert stats["conversations_kept"] == 1
    labels = arrays["labels"]
    text = tokenizer.decode([int(i) for i, l in zip(arrays["input_ids"], labels) if l != IGNORE_TOKEN_ID])
    assert text.endswith("last a<|im_end|>\n" if mode == "assistant" else "last q<|im_end|>\n")
    _, stats = sft_data.build_features(path, tokenizer, 128, "right", 0, mode, train_turns="all")
    assert stats["conversations_kept"] == 1  # the first round is still trained


@pytest.mark.parametrize("mode", ["assistant", "reverse"])
def test_each_drop_is_counted_under_its_own_cause(tmp_path, tokenizer, mode):
    role = "assistant" if mode == "assistant" else "user"
    short = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    flagged_off = [dict(m, train=False) if m["role"] == role else m for m in short]  # the last turn: "train": false
    cut = [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "word " * 200}]
    recs = [{"conversations": flagged_off}, {"conversations": cut}, {"conversations": short},
            {"conversations": [{"role": "user", "content": "unanswered"}]}]
    _, stats = sft_data.build_features(write(tmp_path / "d.json", recs), tokenizer, 64, "right", 0, mode,
                                       train_turns="last")
    assert stats["dropped_no_turn_trained_by_flags"] == 1  # nothing truncated it
    assert stats["dropped_no_trained_token_after_truncation"] == 1 and stats["truncated_samples"] == 1
    if mode == "assistant":  # the unanswered request: nothing to train, counted as unpaired
        assert stats["conversations_kept"] == 1
        assert stats["dropped_empty_after_normalization"] == 1 and stats["turn_unpaired_user"] == 1
    else:  # reverse masking trains it: the user's opening request (issue 40 row 2)
        assert stats["conversations_kept"] == 2 and stats["kept_final_user_turn"] == 1
        assert stats.get("turn_unpaired_user", 0) == 0
    line = sft_data.format_stats(stats)
    assert "dropped_no_turn_trained_by_flags=1" in line and "truncated: 1 samples" in line


def test_cache_key_and_run_plan_hold_train_turns(tmp_path, tokenizer):
    args = ("h", tokenizer, 256, "right", 0, "assistant", "conversations")
    assert sft_data.cache_key(*args, "all") != sft_data.cache_key(*args, "last")
    assert sft_data.cache_key(*args)["train_turns"] == "all"

    from train_hw_parallel import DataArguments, ModelArguments
    from transformers import TrainingArguments
    from smolsft.train.records import run_plan

    out = tmp_path / "run"
    targs = TrainingArguments(output_dir=str(out), report_to="none")
    plans = {t: run_plan(ModelArguments(), DataArguments(train_turns=t), targs, "h") for t in ("all", "last")}
    assert plans["all"]["train_turns"] == "all" and plans["last"]["train_turns"] == "last"
    check_run_plan(str(out), plans["all"], "d.json", False, None, True, log=lambda *a: None)
    check_run_plan(str(out), plans["all"], "d.json", False, None, True, log=lambda *a: None)  # same plan resumes
    (out / "checkpoint-1").mkdir()  # a trained step: another plan would mix two runs
    with pytest.raises(SystemExit, match=r'--train_turns: "all" -> "last"'):
        check_run_plan(str(out), plans["last"], "d.json", False, None, True, log=lambda *a: None)
