"""smolsft/generation/answering.py: prompts that do not fit are settled before the engine
runs, records reach the response file batch by batch (skipped ones with the first), and an
engine that fails before its first batch leaves no file or settings sidecar."""
import json

import pytest

from smolsft.generation import answering
from smolsft.generation.responses import settings_path

RECORDS = [{"key": 10, "prompt": "Say hi."}, {"key": 11, "prompt": "word " * 40}, {"key": 12, "prompt": "Bye."}]


def _plan(tokenizer, max_len):
    lines = []
    plan = answering.plan_prompts(tokenizer, RECORDS, None, 8, max_len, "clip", log=lines.append)
    return plan, lines


def test_plan_clips_and_skips_by_key(tokenizer):
    lens = _plan(tokenizer, None)[0].prompt_tokens
    plan, lines = _plan(tokenizer, lens[0] + 8)  # prompt 10 just fits; 12 (shorter) too; 11 is longer than the model
    assert plan.budgets[0] == 8 and plan.skipped == [1] and plan.kept == [0, 2]
    assert len(lines) == 1 and lines[0].startswith("[ifeval] prompt key 11: ") and "skipped" in lines[0]
    plan, lines = _plan(tokenizer, lens[1] + 3)  # 11 fits with 3 new tokens: clipped
    assert plan.clipped == [1] and plan.budgets[1] == 3 and "clipped to 3 new tokens" in lines[0]


def test_records_reach_the_file_batch_by_batch(tokenizer, tmp_path):
    lens = _plan(tokenizer, None)[0].prompt_tokens
    plan, _ = _plan(tokenizer, lens[0] + 8)
    responses = tmp_path / "responses_m.jsonl"
    seen = []

    def generate(prompts, new_tokens, on_batch):
        assert new_tokens == [8, 8] and len(prompts) == 2
        answers = [{"response": f"a{i}", "num_tokens": 1, "finish_reason": "stop"} for i in range(2)]
        on_batch([1], answers[1:])
        seen.append([json.loads(x)["key"] for x in responses.read_text().splitlines()])
        on_batch([0], answers[:1])
        return answers

    answers = answering.write_answers(responses, {"engine": "fake"}, plan, generate)
    assert len(answers) == 2 and seen == [[11, 12]]  # the skipped record went with the first batch
    recs = [json.loads(x) for x in responses.read_text().splitlines()]
    assert [r["key"] for r in recs] == [11, 12, 10]
    assert recs[0]["finish_reason"] == "too_long" and recs[0]["response"] == ""
    assert json.loads(settings_path(responses).read_text()) == {"engine": "fake"}


def test_every_prompt_skipped_writes_their_records_without_an_engine(tokenizer, tmp_path):
    plan, _ = _plan(tokenizer, 4)  # no prompt fits a 4-token model
    responses = tmp_path / "responses_m.jsonl"

    def no_engine(prompts, new_tokens, on_batch):
        raise AssertionError("no engine should start")

    assert answering.write_answers(responses, {"engine": "fake"}, plan, no_engine) == []
    assert [json.loads(x)["finish_reason"] for x in responses.read_text().splitlines()] == ["too_long"] * 3


def test_engine_failing_before_its_first_batch_writes_nothing(tokenizer, tmp_path):
    plan, _ = _plan(tokenizer, None)
    responses = tmp_path / "responses_m.jsonl"

    def broken(prompts, new_tokens, on_batch):
        raise RuntimeError("engine did not start")

    with pytest.raises(RuntimeError):
        answering.write_answers(responses, {"engine": "fake"}, plan, broken)
    assert not responses.exists() and not settings_path(responses).exists()
