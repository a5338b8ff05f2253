"""tools/make_demo_data.py: deterministic, every committed answer passes its IFEval
instructions (strict, through the project's scorer), no IFEval wording, sane mix."""
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from conftest import load_script

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "data" / "demo_sft.json"
CHECKS = REPO / "data" / "demo_sft_checks.jsonl"
IFEVAL_PROMPTS = REPO / "ifeval" / "data" / "input_data.jsonl"


def _gen(tmp_path, seed, num, tag):
    out, chk = tmp_path / f"{tag}.json", tmp_path / f"{tag}.jsonl"
    r = subprocess.run([sys.executable, "tools/make_demo_data.py", "--seed", str(seed), "--num", str(num),
                        "--out", str(out), "--checks_out", str(chk)], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    return out.read_bytes(), chk.read_bytes(), r.stdout


@pytest.mark.slow
def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a, ca, log = _gen(tmp_path, 7, 40, "a")
    b, cb, _ = _gen(tmp_path, 7, 40, "b")
    c, _, _ = _gen(tmp_path, 8, 40, "c")
    assert a == b and ca == cb
    assert a != c
    assert "wrote 40 conversations" in log and "rebuilt" in log


@pytest.mark.slow
def test_committed_file_is_the_generators_output(tmp_path):
    """data/demo_sft.json is exactly what the default command writes (nobody hand-edited it)."""
    out, chk, _ = _gen(tmp_path, 1234, 360, "default")
    assert out == DATA.read_bytes()
    assert chk == CHECKS.read_bytes()


def test_every_answer_passes_its_instructions_strict():
    load_checker = load_script("tools/make_demo_data.py").load_checker
    check = load_checker()  # the verdicts the generator itself checks with
    records = {r["id"]: r for r in json.loads(DATA.read_text())}
    checks = [json.loads(line) for line in CHECKS.read_text().splitlines()]
    # one check line per assistant turn, in order
    n_assistant = sum(1 for r in records.values() for m in r["conversations"] if m["role"] == "assistant")
    assert len(checks) == n_assistant
    failures = []
    for c in checks:
        msgs = [m for m in records[c["id"]]["conversations"] if m["role"] != "system"]
        user, answer = msgs[2 * c["turn"]], msgs[2 * c["turn"] + 1]
        assert user["role"] == "user" and answer["role"] == "assistant"
        strict = check(c["instruction_id_list"], c["kwargs"], user["content"], answer["content"])
        failures += [(c["id"], c["turn"], i) for i, ok in zip(c["instruction_id_list"], strict) if not ok]
    assert failures == []


def test_the_scorer_does_reject_a_broken_answer():
    """Guard against a verification that cannot fail: breaking answers makes the scorer say so."""
    load_checker = load_script("tools/make_demo_data.py").load_checker
    check = load_checker()  # the verdicts the generator itself checks with
    records = {r["id"]: r for r in json.loads(DATA.read_text())}
    broken = 0
    for c in (json.loads(line) for line in CHECKS.read_text().splitlines()):
        if "punctuation:no_comma" in c["instruction_id_list"] or "change_case:english_lowercase" in c["instruction_id_list"]:
            msgs = [m for m in records[c["id"]]["conversations"] if m["role"] != "system"]
            bad = "Well, " + msgs[2 * c["turn"] + 1]["content"] + " And, Finally."
            strict = check(c["instruction_id_list"], c["kwargs"], msgs[2 * c["turn"]]["content"], bad)
            assert not all(strict)
            broken += 1
    assert broken >= 20


def test_mix_and_size():
    records = json.loads(DATA.read_text())
    assert 300 <= len(records) <= 400
    assert DATA.stat().st_size < 1_000_000
    turns = Counter(sum(m["role"] == "user" for m in r["conversations"]) for r in records)
    assert turns[1] > 100 and turns[2] + turns[3] > 80
    assert sum(r["conversations"][0]["role"] == "system" for r in records) > 50
    kinds = Counter(i for line in CHECKS.read_text().splitlines() for i in json.loads(line)["instruction_id_list"])
    for needed in ["change_case:english_capital", "change_case:english_lowercase", "length_constraints:number_words",
                   "length_constraints:number_sentences", "detectable_format:number_bullet_lists",
                   "detectable_format:title", "detectable_content:postscript", "startend:end_checker",
                   "punctuation:no_comma", "detectable_format:json_format", "detectable_content:number_placeholders",
                   "detectable_format:multiple_sections", "detectable_format:number_highlighted_sections",
                   "length_constraints:number_paragraphs"]:
        assert kinds[needed] >= 15, needed
    # the course format, and the project's own normalizer accepts every record
    from smolsft.chat.format import normalize_conversation
    for r in records:
        assert set(r) == {"id", "intent", "conversations"}
        normalize_conversation(r["conversations"])


def test_no_ifeval_sentence_is_reused():
    """Independent of the generator's own n-gram check: no IFEval prompt sentence of six or
    more words appears inside any user or system message."""
    if not IFEVAL_PROMPTS.exists():
        pytest.fail(f"{IFEVAL_PROMPTS} missing: run bash setup.sh")
    sentences = set()
    for line in IFEVAL_PROMPTS.read_text().splitlines():
        for s in re.split(r"(?<=[.!?])\s+|\n", json.loads(line)["prompt"]):
            s = " ".join(s.lower().split())
            if len(s.split()) >= 6:
                sentences.add(s)
    texts = [" ".join(m["content"].lower().split()) for r in json.loads(DATA.read_text())
             for m in r["conversations"] if m["role"] != "assistant"]
    reused = [s for s in sentences if any(s in t for t in texts)]
    assert reused == []


def test_generator_fails_loudly_when_answers_cannot_pass():
    make_demo_data = load_script("tools/make_demo_data.py")
    always_fail = lambda ids, kwargs, prompt, response: [False] * len(ids)  # noqa: E731
    with pytest.raises(make_demo_data.DemoDataError, match="fails"):
        make_demo_data.make_conversations(3, 2, always_fail, progress=False)


def test_content_bank_errors_name_the_file(tmp_path):
    make_demo_data = load_script("tools/make_demo_data.py")
    bad = tmp_path / "bank.json"
    bad.write_text('{"topics": [{"name": "x"}]}')
    with pytest.raises(make_demo_data.DemoDataError, match=r"bank\.json: missing or empty .*system_prompts.*\[0\]"):
        make_demo_data.load_bank(bad)
    bad.write_text("{")
    with pytest.raises(make_demo_data.DemoDataError, match=r"bank\.json: cannot read"):
        make_demo_data.load_bank(bad)


def test_every_record_carries_its_intent():
    """The intent names each request's topic (the first request's own words) and one part per
    user turn; a follow-up on the same topic says so."""
    make_demo_data = load_script("tools/make_demo_data.py")
    assert make_demo_data.conversation_intent([("tea", False, ["punctuation:no_comma"]), ("tea", True, [])]) == \
        "Ask about tea (rules: no comma), then more about the same topic."
    for r in json.loads(DATA.read_text()):
        users = [m["content"] for m in r["conversations"] if m["role"] == "user"]
        assert r["intent"].startswith("Ask about ") and r["intent"].count("then ") == len(users) - 1, r["id"]
        first_topic = r["intent"][len("Ask about "):].split(" (rules:")[0].split(", then")[0].rstrip(".")
        assert first_topic.lower() in users[0].lower(), (r["id"], first_topic)
