"""scripts/simulator_demo.sh end to end in a reduced form (tiny random model, 1 step, 2
dialogues of 2 rounds, transformers backend): every stage runs and the report holds the
measures with their counts; the held-out split is never trained on; the role measure is
not reported for generated turns when it does not separate real ones (a random judge
cannot). Plus the split and the text measures on known inputs."""
import json
import os
import subprocess
from pathlib import Path

import pytest

from smolsft.simulator import measures as sm
from conftest import load_script
from test_train_hw_parallel import tiny_llama

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_reduced_simulator_demo(tmp_path, tokenizer):
    model = tiny_llama(tmp_path / "tiny", tokenizer, heads=1, kv_heads=1)
    out = tmp_path / "out"
    env = {**os.environ, "SIMDEMO_MODEL": str(model), "SIMDEMO_ASSISTANT": str(model), "SIMDEMO_OUT": str(out),
           "SIMDEMO_STEPS": "1", "SIMDEMO_HELDOUT": "30", "SIMDEMO_LIMIT": "2", "SIMDEMO_ROUNDS": "2",
           "SIMDEMO_MAXTOK": "4", "SIMDEMO_BACKEND": "hf", "SIMDEMO_ROLE_ITEMS": "4", "SIMDEMO_CHRF_ITEMS": "3",
           "SIMDEMO_MAXLEN": "128", "CPU_RANKS": "1", "OMP_NUM_THREADS": "1", "SIMDEMO_PROBE_ITEMS": "3", "SIMDEMO_FIRST_ITEMS": "3"}
    r = subprocess.run(["bash", "scripts/simulator_demo.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=1500)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    data = json.loads((REPO / "data" / "demo_sft.json").read_text())
    train = json.loads((out / "split" / "train.json").read_text())
    held = json.loads((out / "split" / "heldout.json").read_text())
    assert len(held) == 30 and len(train) + len(held) == len(data)
    assert not {r["id"] for r in train} & {r["id"] for r in held}
    manifest = json.loads((out / "ckpt" / "simulator" / "run_manifest.json").read_text())
    assert manifest["data_args"]["mask_mode"] == "reverse" and manifest["data_args"]["simulator_end_marker"]
    assert manifest["data_args"]["data_path"].endswith("split/train.json")
    m = json.loads((out / "measures.json").read_text())
    assert m["heldout"]["conversations"] == 30 and m["back_translation"]["pairs"] == 3
    assert m["user_turn_loss"]["base"]["tokens"] == m["user_turn_loss"]["simulator"]["tokens"] > 0
    R = m["role_confusion"]
    assert R["real_user"]["n"] == R["real_assistant"]["n"] == 4
    assert R["validated"] == (R["real_assistant"]["rate"] - R["real_user"]["rate"] >= 0.5)
    assert (R["generated_user"] is None) == (not R["validated"])
    dialogues = [json.loads(x) for x in (out / "dialogues" / "dialogues.jsonl").read_text().splitlines()]
    assert len(dialogues) == 2 and all(sum(x["author"] != "data" for x in d["messages"]) == 3 for d in dialogues)
    assert m["diversity"]["generated_user"]["turns"] == 2
    six = m["six_measures"]
    assert six["users"] == ["base", "prompted_user", "simulator", "human"]
    for name, by_user in six["measures"].items():
        assert {"base", "prompted_user", "simulator"} <= set(by_user), name
        assert ("human" in by_user) == (name in ("first_turn_diversity", "intent_decomposition", "naturalness")), name
    assert six["measures"]["end_of_conversation_f1"]["simulator"]["n"] == six["counts"]["eoc"] >= 20
    assert six["counts"]["adversarial"] == six["counts"]["drift"] == 3
    assert six["intent_source"] == {"record field 'intent'": 30}
    assert all(d["ended_by"] in ("simulator", "limit") for d in dialogues)
    report = (out / "simulator.md").read_text()
    for part in ("## Measures, base vs simulator", "| user-turn perplexity |", "## Role confusion",
                 "## The six measures", "| end-of-conversation F1 |",
                 "## Diversity of user turns", "### Dialogue 1", "| total |"):
        assert part in report, part


def test_heldout_split_depends_on_ids_only():
    recs = [{"id": f"r{i}"} for i in range(50)]
    train, held = sm.heldout_split(recs, 10)
    assert len(held) == 10 and sorted(train + held) == list(range(50))
    shuffled = list(reversed(recs))
    _, held2 = sm.heldout_split(shuffled, 10)
    assert {shuffled[i]["id"] for i in held2} == {recs[i]["id"] for i in held}
    with pytest.raises(ValueError, match="duplicate"):
        sm.heldout_split([{"id": "a"}, {"id": "a"}], 1)


def test_text_measures_on_known_inputs():
    # "a b a b": unigrams a,b,a,b -> 2/4; bigrams ab, ba, ab -> 2/3.
    assert sm.distinct_n(["a b", "a b"], 1) == 0.5
    assert sm.distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    assert sm.repeats_previous("so the cat sat on the mat today", "I saw the cat sat on it")  # "the cat sat on"
    assert not sm.repeats_previous("the cat sat", "the cat sat on")  # shorter than a 4-gram
    assert sm.chrf(["hello world"], ["hello world"]) == pytest.approx(100.0)
    assert sm.chrf(["zzzz"], ["hello world"]) < 5
    assert sm.reads_as_assistant([0.5, -1.0, 2.0, -0.1]) == 0.5


def test_role_judge_sees_the_text_alone_or_a_plain_chatml_history(monkeypatch, tokenizer):
    """The two rows of an item: a newline, the last N history messages as ChatML (none by
    default; no system prompt added, not even the template's default one), the assistant
    or the user header, then the text; only the text and its <|im_end|> are scored."""
    seen = []

    def fake_sums(model, rows, pad_id, batch_size=8, progress=None):
        seen.extend(rows)
        return [(float(i), 1) for i in range(len(rows))]

    monkeypatch.setattr(sm, "_forward_sums", fake_sums)
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    items = [(history, "Tell me more."), ([], "Why?")]
    assert sm.role_scores(None, tokenizer, items) == [1.0, 1.0]  # loss(user row) - loss(assistant row)
    sm.role_scores(None, tokenizer, items, history_messages=1)
    texts = [tokenizer.decode(ids) for ids, _ in seen]
    last = "<|im_start|>assistant\nHello!<|im_end|>\n"
    assert texts == ["\n<|im_start|>assistant\nTell me more.<|im_end|>", "\n<|im_start|>user\nTell me more.<|im_end|>",
                     "\n<|im_start|>assistant\nWhy?<|im_end|>", "\n<|im_start|>user\nWhy?<|im_end|>",
                     "\n" + last + "<|im_start|>assistant\nTell me more.<|im_end|>",
                     "\n" + last + "<|im_start|>user\nTell me more.<|im_end|>",
                     "\n<|im_start|>assistant\nWhy?<|im_end|>", "\n<|im_start|>user\nWhy?<|im_end|>"]
    for ids, labels in seen:
        target = [t for t, y in zip(ids, labels) if y != -100]
        assert tokenizer.decode(target) in ("Tell me more.<|im_end|>", "Why?<|im_end|>")
    with pytest.raises(ValueError, match="history_messages"):
        sm.role_scores(None, tokenizer, items, history_messages=-1)


@pytest.mark.slow
def test_role_measure_separates_real_turns_with_the_base_judge(tokenizer):
    """The validation the measure needs before it is reported for generated turns, on the
    embedded model and data as the measure stage loads them: over the first 32 real (user
    turn, answer) pairs of data/demo_sft.json, real user turns rarely read as assistant
    answers and real answers mostly do (docs/simulator.md gives the rates measured on the
    first 48, in slices of 16: the first two slices are these 32)."""
    from smolsft.chat.format import normalize_conversation
    from conftest import load_script
    from smolsft.chat.tokenization import DEFAULT_MODEL

    model = load_script("scripts/simulator_eval.py").load_model(str(DEFAULT_MODEL))
    data = json.loads((REPO / "data" / "demo_sft.json").read_text())
    users, answers = sm.real_turn_items([normalize_conversation(r["conversations"]) for r in data])
    users, answers = users[:32], answers[:32]
    rate_u = sm.reads_as_assistant(sm.role_scores(model, tokenizer, users))
    rate_a = sm.reads_as_assistant(sm.role_scores(model, tokenizer, answers))
    print(f"real user turns {rate_u:.3f}, real answers {rate_a:.3f} (dtype {next(model.parameters()).dtype})")
    assert rate_u <= 0.15 and rate_a >= 0.65 and rate_a - rate_u >= 0.5, (rate_u, rate_a)


def test_role_judge_benchmark_runs_small(tiny_llama_dir, capsys):
    bench = load_script("benchmarks/role_judge.py")
    assert bench.auc([2.0, 3.0], [1.0, 2.0]) == pytest.approx((1 + 1 + 0.5 + 1) / 4)
    out = bench.main(["--model", str(tiny_llama_dir), "--pairs", "3", "--framings", "newline,nothing"])
    assert set(out) == {"newline", "nothing"}
    for r in out.values():
        assert 0 <= r["real_user"] <= 1 and 0 <= r["real_answers"] <= 1 and 0 <= r["auc"] <= 1
    assert "[role_judge] widest gap: " in capsys.readouterr().out
    with pytest.raises(SystemExit):
        bench.main(["--framings", "bogus"])
