"""UserLM's six measures (smolsft/simulator/protocol.py, six_measures.py, intervals.py,
baselines.py) on known inputs: the items each measure is computed on, the per-item scores,
the intervals, the prompted-user baseline's prompt, and the table."""
import pytest

from smolsft.simulator import protocol as P
from smolsft.simulator import six_measures
from smolsft.simulator.baselines import KICKOFF, prompted_user_messages, prompted_user_prompt
from smolsft.simulator.intent import END_MARKER, SOURCE_FIELD, SOURCE_STANDIN
from smolsft.simulator.intervals import bootstrap, wilson

SYS = {"role": "system", "content": "Be brief."}
RECORDS = [
    {"id": "a", "intent": "Ask about tides, then about storms.",
     "conversations": [SYS, {"role": "user", "content": "Why are there tides?"},
                       {"role": "assistant", "content": "The moon pulls the oceans."},
                       {"role": "user", "content": "And storms?"},
                       {"role": "assistant", "content": "Warm air rises quickly."}]},
    {"id": "b", "conversations": [{"role": "user", "content": "Name a bread recipe."},
                                  {"role": "assistant", "content": "Flour water yeast salt, baked bread."}]},
    {"id": "c", "intent": "Ask about volcanoes.",
     "conversations": [{"role": "user", "content": "How do volcanoes form?"},
                       {"role": "assistant", "content": "Magma rises through cracks."},
                       {"role": "user", "content": "More."},
                       {"role": "assistant", "content": "Plates move apart."},
                       {"role": "user", "content": "Thanks."},
                       {"role": "assistant", "content": "You are welcome."}]},
]


def test_items_of_each_measure():
    d = P.heldout_dialogues(RECORDS)
    assert [x["intent_source"] for x in d] == [SOURCE_FIELD, SOURCE_STANDIN, SOURCE_FIELD]
    assert d[1]["intent"] == "Name a bread recipe." and [x["multi_turn"] for x in d] == [True, False, True]
    first = P.first_turn_items(d)
    assert [f["real"] for f in first] == ["Why are there tides?", "Name a bread recipe.", "How do volcanoes form?"]
    assert first[0]["history"] == [SYS] and first[2]["history"] == []
    states = P.eoc_states(d)  # multi-turn only: 2 + 3 states, the last of each is an end
    assert [s["end"] for s in states] == [False, True, False, False, True]
    assert states[1]["history"][-1]["content"] == "Warm air rises quickly."
    adv = P.adversarial_items(d, 2)
    assert [a["history"][-1]["content"] for a in adv] == list(P.ADVERSARIAL_TURNS[:2])
    assert adv[0]["history"][:-1] == RECORDS[0]["conversations"][:2]
    assert [len(v) for v in six_measures.build_items(d, 1, 2).values()] == [2, 5, 1, 1]
    assert six_measures.build_items(d, 1, 2, 3)["eoc"] == states[:3]  # the first 3 states
    drift = P.drift_items(d)
    assert len(drift) == 3 and drift[0]["history"][-1]["content"].startswith(P.DRIFT_PREFIX)
    assert drift[0]["drift"] in ("Flour water yeast salt, baked bread.", "Magma rises through cracks.")


def test_per_item_scores():
    assert P.intent_revealed("Ask about tides and storms.", "tides please") == pytest.approx(0.5)  # tides, storms
    assert P.intent_revealed("Ask about it.", "anything") == 0.0  # no content word
    assert P.stays_on_intent("back to the tides", "tides", "magma rises")
    assert not P.stays_on_intent("tell me about magma", "tides", "magma rises")
    assert not P.stays_on_intent("ok", "tides", "magma")  # 0 vs 0
    assert P.distinct_1(["a b", "a c"]) == pytest.approx(3 / 4)
    # tp=1, fp=1, fn=1 -> 2 / (2 + 2)
    assert P.f1([(True, True), (True, False), (False, True), (False, False)]) == pytest.approx(0.5)
    assert P.f1([(False, False)]) == 0.0 and P.f1([(False, True)]) == 0.0
    d = P.dissimilarity_matrix(["a b", "a c", "a b", ""])  # {a,b} vs {a,c}: 1 - 1/3
    assert d[0, 1] == pytest.approx(2 / 3) and d[0, 2] == 0.0 and d[0, 3] == 1.0 and d[3, 3] == 0.0
    assert P.mean_pairwise(d, [0, 1, 2]) == pytest.approx((2 / 3 + 0 + 2 / 3) / 3)
    assert P.mean_pairwise(d, [0, 0, 1]) == pytest.approx(2 / 3)  # the copy of 0 is not paired with itself


def test_first_turn_diversity_lies_in_its_interval():
    """The bootstrap of a set-level count (distinct-1) falls below the count itself; the
    pairwise measure's interval holds its value."""
    texts = [f"tell me about topic{i} and its rules number{i % 3}" for i in range(30)]
    stat = six_measures.first_turn_diversity(texts)
    assert stat["ci"][0] <= stat["value"] <= stat["ci"][1] and stat["n"] == 30
    assert 0 < stat["distinct_1"] < 100


def test_intervals():
    w = wilson(3, 10)  # Wilson score interval for 3/10 at 95%: 0.108 to 0.603 (textbook value)
    assert w["value"] == 0.3 and w["ci"] == pytest.approx([0.1078, 0.6032], abs=1e-3) and w["n"] == 10
    assert wilson(0, 0)["value"] is None
    with pytest.raises(ValueError):
        wilson(4, 3)
    b = bootstrap([1.0, 2.0, 3.0, 4.0, 5.0], lambda v: sum(v) / len(v))
    assert b["value"] == 3.0 and 1.0 <= b["ci"][0] < 3.0 < b["ci"][1] <= 5.0 and b["n"] == 5
    assert bootstrap([2.0, 2.0], lambda v: sum(v) / len(v))["ci"] == [2.0, 2.0]


def test_prompted_user_sees_the_dialogue_with_roles_swapped(tokenizer):
    history = RECORDS[0]["conversations"][:3]
    msgs = prompted_user_messages(history, "Ask about tides.")
    assert msgs[0]["role"] == "system" and "Ask about tides." in msgs[0]["content"] and END_MARKER in msgs[0]["content"]
    assert msgs[1:] == [{"role": "user", "content": KICKOFF}, {"role": "assistant", "content": "Why are there tides?"},
                        {"role": "user", "content": "The moon pulls the oceans."}]
    assert prompted_user_prompt(history, "x", tokenizer).endswith("<|im_start|>assistant\n")


def test_score_and_table_with_a_stub_judge(monkeypatch, tokenizer):
    """The measures from fixed turns: the judge's scores are stubbed (role: every text reads
    as the user's; loss: a text's length), so only the counting is under test."""
    monkeypatch.setattr("smolsft.simulator.measures.role_scores", lambda j, t, items, b=8: [-1.0] * len(items))
    monkeypatch.setattr(six_measures, "user_slot_losses", lambda j, t, texts, b=8: [float(len(x)) for x in texts])
    items = six_measures.build_items(P.heldout_dialogues(RECORDS))
    gens = {"simulator": {"first": ["tides?", "bread?", "volcanoes?"],
                          "eoc": ["more", END_MARKER, "more", END_MARKER, END_MARKER],
                          "adversarial": ["How can I help you?", END_MARKER, "what are tides"],
                          "drift": ["tides again", "bread", "magma plates"]}}
    out = six_measures.score(gens, items, None, tokenizer, ["x" * 5] * 20, ["a much longer real turn"])
    m = out["measures"]
    eoc = m["end_of_conversation_f1"]["simulator"]  # tp 2, fp 1, fn 0 -> 4/5
    assert eoc["value"] == pytest.approx(80.0) and eoc["n"] == 5 and eoc["n_end"] == 2
    assert m["role_adherence"]["simulator"]["k"] == 2  # an echo of the probe is not adherent
    assert out["turns"] == gens
    assert m["intent_adherence"]["simulator"]["n"] == 3
    assert m["first_turn_diversity"]["human"]["n"] == 3 and "human" not in m["end_of_conversation_f1"]
    assert m["naturalness"]["human"]["value"] == 100.0  # longer than the calibration texts
    six = {"users": ["simulator", "human"], **out}
    table = six_measures.table_lines(six)
    assert table[0] == "| measure (%) | simulator | human |" and len(table) == 8
    assert "| end-of-conversation F1 | 80.0 [" in table[4] and table[4].endswith("| n/a |")


def test_report_section_says_where_intents_came_from():
    stat = {"value": 50.0, "ci": [10.0, 90.0], "n": 4}
    six = {"users": ["base", "human"], "intent_source": {SOURCE_FIELD: 3, SOURCE_STANDIN: 1},
           "measures": {k: {"base": stat} for k in six_measures.NAMES}, "counts": {"eoc": 5},
           "naturalness_detector": {"kind": "zero-shot", "threshold_nats": 2.5, "calibration_turns": 64, "quantile": 10}}
    text = "\n".join(six_measures.report_lines(six, {"ended_by": {"simulator": 2, "limit": 4}}))
    assert f"3 from the {SOURCE_FIELD}; 1 from the {SOURCE_STANDIN}" in text
    assert "| role adherence | 50.0 [10.0, 90.0] (n=4) | n/a |" in text
    assert "ended by: simulator: 2, limit: 4" in text and "2.500 nats" in text


def test_simulator_is_paired_against_each_baseline_on_the_same_items(monkeypatch, tokenizer):
    """Per-item verdicts of the simulator and the base user over the same items: fixed
    (base fails, simulator passes) and broken counted per measure, the exact McNemar p."""
    monkeypatch.setattr("smolsft.simulator.measures.role_scores", lambda j, t, items, b=8: [-1.0] * len(items))
    monkeypatch.setattr(six_measures, "user_slot_losses", lambda j, t, texts, b=8: [float(len(x)) for x in texts])
    items = six_measures.build_items(P.heldout_dialogues(RECORDS))
    actual = [it["end"] for it in items["eoc"]]
    sim = {"first": ["tides?", "bread?", "volcanoes?"], "eoc": [END_MARKER if a else "more" for a in actual],
           "adversarial": ["what are tides", END_MARKER, "why bread"], "drift": ["tides again", "bread", "magma plates"]}
    base = {"first": sim["first"], "eoc": ["more"] * len(actual),
            "adversarial": ["How can I help you?", "What would you do in my place? Tell me", "why bread"],
            "drift": sim["drift"]}  # the first two echo their probes: not adherent
    out = six_measures.score({"base": base, "simulator": sim}, items, None, tokenizer, ["x" * 5] * 20, ["real turn"])
    eoc = out["paired"]["end_of_conversation"]["vs_base"]
    assert (eoc["n"], eoc["fixed"], eoc["broken"]) == (len(actual), sum(actual), 0)  # base never ends
    role = out["paired"]["role_adherence"]["vs_base"]
    assert (role["n"], role["fixed"], role["broken"], role["p_value"]) == (3, 2, 0, 0.5)
    same = out["paired"]["intent_adherence"]["vs_base"]
    assert (same["fixed"], same["broken"], same["p_value"], same["ci95"]) == (0, 0, 1.0, [0.0, 0.0])
    text = "\n".join(six_measures.paired_lines(out["paired"]))
    assert "| role adherence | base | 3 | 2 / 0 | no change detectable with 3 items" in text
    assert "prompts" not in text
