"""smolsft/chat/format.py, smolsft/chat/tokenization.py, smolsft/files.py: conversation normalization (course semantics), tokenizer configuration, JSONL reading."""
from collections import Counter

import pytest

from smolsft.chat.format import ConversationFormatError, is_single_turn_conversation, normalize_conversation, validate_messages

U = lambda c: {"role": "user", "content": c}  # noqa: E731
A = lambda c: {"role": "assistant", "content": c}  # noqa: E731
S = lambda c: {"role": "system", "content": c}  # noqa: E731


# ----------------------------------------------------------------- normalization
def test_aliases_are_mapped():
    turns = [{"role": "human", "content": "q1"}, {"role": "gpt", "content": "a1"},
             {"role": "USER", "content": "q2"}, {"role": "bot", "content": "a2"},
             {"role": "user", "content": "q3"}, {"role": "function_call", "content": "a3"}]
    assert normalize_conversation(turns) == [U("q1"), A("a1"), U("q2"), A("a2"), U("q3"), A("a3")]


def test_sharegpt_keys():
    turns = [{"from": "system", "value": "s"}, {"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]
    assert normalize_conversation(turns) == [S("s"), U("q"), A("a")]


def test_unknown_roles_dropped_and_counted():
    stats = Counter()
    turns = [U("q"), {"role": "narrator", "content": "x"}, A("a")]
    assert normalize_conversation(turns, stats=stats) == [U("q"), A("a")]
    assert stats["turn_unknown_role"] == 1


def test_leading_assistant_dropped_system_prefix_kept():
    stats = Counter()
    turns = [A("orphan"), S("sys"), U("q"), A("a")]
    assert normalize_conversation(turns, stats=stats) == [S("sys"), U("q"), A("a")]
    assert stats["turn_leading_non_user"] == 1


def test_dangling_user_dropped():
    stats = Counter()
    assert normalize_conversation([U("q1"), A("a1"), U("q2")], stats=stats) == [U("q1"), A("a1")]
    assert stats["turn_unpaired_user"] == 1
    # a user followed by another user: the first has no answer
    assert normalize_conversation([U("q1"), U("q2"), A("a2")]) == [U("q2"), A("a2")]


def test_max_rounds_keeps_first_rounds():
    turns = [S("s")] + [m for i in range(4) for m in (U(f"q{i}"), A(f"a{i}"))]
    assert normalize_conversation(turns, max_rounds=2) == [S("s"), U("q0"), A("a0"), U("q1"), A("a1")]
    assert normalize_conversation(turns, max_rounds=0) == turns


def test_no_complete_round_is_empty():
    assert normalize_conversation([S("only a system prompt")]) == []
    assert normalize_conversation([U("question without answer")]) == []
    assert normalize_conversation([]) == []


@pytest.mark.parametrize(
    "turns, fragment",
    [
        ([U("q"), {"role": "assistant"}], "turn 1: 'content' must be a string"),
        ([U("q"), {"role": "assistant", "content": None}], "turn 1"),
        ([{"text": "hi"}], "neither role/content nor from/value"),
        (["just a string"], "turn 0: expected an object"),
        ({"role": "user"}, "must be a list"),
    ],
)
def test_malformed_turns_raise_clear_errors(turns, fragment):
    with pytest.raises(ConversationFormatError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        normalize_conversation(turns)


T = lambda c: {"role": "tool", "content": c}  # noqa: E731
CALL = '{"name": "get_weather", "arguments": {"city": "Paris"}}'


@pytest.mark.parametrize("result_role", ["observation", "tool", "function_response", "ipython", "function"])
def test_sharegpt_tool_use_keeps_call_result_and_answer(result_role):
    """human -> function_call -> <result> -> gpt: the call and the final answer are the
    assistant's, the result is a tool turn (context), nothing is dropped."""
    stats = Counter()
    turns = [{"from": "human", "value": "Weather in Paris?"}, {"from": "function_call", "value": CALL},
             {"from": result_role, "value": '{"temp_c": 18}'}, {"from": "gpt", "value": "18 C."}]
    assert normalize_conversation(turns, stats=stats) == [U("Weather in Paris?"), A(CALL), T('{"temp_c": 18}'), A("18 C.")]
    assert sum(stats.values()) == 0


def test_openai_tool_calls_become_assistant_text():
    stats = Counter()
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    call2 = {"id": "c2", "type": "function", "function": {"name": "get_time", "arguments": "not json"}}
    turns = [U("Weather and time in Paris?"), {"role": "assistant", "content": None, "tool_calls": [call, call2]},
             {"role": "tool", "tool_call_id": "c1", "content": "18"}, {"role": "tool", "tool_call_id": "c2", "content": "9:00"},
             A("18 C at 9:00."), U("Thanks."), A("You are welcome.")]
    two_calls = CALL + '\n{"name": "get_time", "arguments": "not json"}'
    assert normalize_conversation(turns, stats=stats) == [
        U("Weather and time in Paris?"), A(two_calls), T("18"), T("9:00"), A("18 C at 9:00."),
        U("Thanks."), A("You are welcome.")]
    assert sum(stats.values()) == 0
    # The legacy function_call object, with text content before it; the legacy "function" result role.
    legacy = [U("q"), {"role": "assistant", "content": "Checking.", "function_call": {"name": "f", "arguments": "{}"}},
              {"role": "function", "name": "f", "content": "ok"}, A("Done.")]
    assert normalize_conversation(legacy) == [U("q"), A('Checking.\n{"name": "f", "arguments": {}}'), T("ok"), A("Done.")]
    with pytest.raises(ConversationFormatError, match="turn 1: a tool call needs a function name"):
        normalize_conversation([U("q"), {"role": "assistant", "content": None, "tool_calls": [{"id": "x"}]}])


def test_rounds_hold_their_tool_turns_and_drops_are_counted():
    stats = Counter()
    turns = [U("q1"), A("call"), T("r1"), A("a1"),  # round 1: call, result, answer
             U("q2"), T("result without a call"), A("a2"), A("second answer"),  # two drops
             U("q3"), A("call"), T("r3")]  # ends on a tool result
    assert normalize_conversation(turns, stats=stats) == [U("q1"), A("call"), T("r1"), A("a1"), U("q2"), A("a2"),
                                                          U("q3"), A("call")]
    assert stats == Counter(turn_unpaired_tool=1, turn_unpaired_assistant=1, turn_trailing_tool=1)
    # max_rounds counts user turns; a round's tool turns stay with it.
    stats = Counter()
    assert normalize_conversation(turns, max_rounds=1, stats=stats) == [U("q1"), A("call"), T("r1"), A("a1")]
    assert stats["round_beyond_max_rounds"] == 2
    # A round whose only reply is a tool result has no answer: dropped with its user.
    stats = Counter()
    assert normalize_conversation([U("q"), T("r"), U("q2"), A("a2")], stats=stats) == [U("q2"), A("a2")]
    assert stats == Counter(turn_unpaired_tool=1, turn_unpaired_user=1)
    # A leading tool turn cannot open a conversation.
    stats = Counter()
    assert normalize_conversation([T("r"), U("q"), A("a")], stats=stats) == [U("q"), A("a")]
    assert stats["turn_leading_non_user"] == 1


def test_is_single_turn_conversation():
    assert is_single_turn_conversation([U("q"), A("a")])
    assert is_single_turn_conversation([S("s"), U("q"), A("a")])
    assert not is_single_turn_conversation([U("q"), A("a"), U("q2"), A("a2")])
    assert not is_single_turn_conversation([S("s"), S("s2"), U("q"), A("a")])
    assert not is_single_turn_conversation([U("q")])
    assert not is_single_turn_conversation([U("q"), A("a"), {"role": "tool", "content": "x"}])


def test_validate_messages_names_the_problem():
    validate_messages([S("s"), U("q"), A("a")])
    validate_messages([U("q"), A("call"), {"role": "tool", "content": "r"}, A("a")])
    with pytest.raises(ConversationFormatError, match="message 1: unknown role 'human'"):
        validate_messages([S("s"), {"role": "human", "content": "q"}])
    with pytest.raises(ConversationFormatError, match=r"message 0 \(user\): content must be a string"):
        validate_messages([{"role": "user", "content": 3}])


# --------------------------------------------------------------------- tokenizer
