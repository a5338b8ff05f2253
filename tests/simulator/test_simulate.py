"""scripts/simulate.py: dialogues alternate assistant and simulator turns from the
openings; a killed run resumes to the same dialogues; a finished one generates nothing
again; a rerun with other settings is refused (tiny random model, transformers backend,
greedy, so the turns are deterministic)."""
import json

import pytest

from conftest import load_script
from smolsft.simulator.intent import END_MARKER, INTENT_PREFIX, SOURCE_FIELD, SOURCE_STANDIN
from test_train_hw_parallel import tiny_llama

sim = load_script("scripts/simulate.py")

OPENINGS = [
    {"id": "a", "conversations": [{"role": "user", "content": "Hello there."}, {"role": "assistant", "content": "Hi."}]},
    {"id": "b", "conversations": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why?"},
                                  {"role": "assistant", "content": "Because."}, {"role": "user", "content": "Ok."},
                                  {"role": "assistant", "content": "Fine."}]},
    {"id": "c", "conversations": [{"role": "user", "content": "Name a fruit."}, {"role": "assistant", "content": "Pear."}]},
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("simulate")
    model = tiny_llama(root / "tiny", tokenizer)
    data = root / "openings.json"
    data.write_text(json.dumps(OPENINGS))
    return root, model, data


def run(setup, out, *extra):
    root, model, data = setup
    return sim.main(["--assistant", str(model), "--simulator", str(model), "--openings", str(data),
                     "--output_dir", str(out), "--rounds", "2", "--limit", "0", "--max_tokens", "6",
                     "--simulator_temperature", "0", "--backend", "hf", *extra])


def read(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.mark.slow
def test_dialogues_resume_and_settings(setup, tmp_path):
    full = tmp_path / "full"
    summary = run(setup, full)
    dialogues = read(full / "dialogues.jsonl")
    assert summary["generated_turns"] == 3 * 3 and summary["resumed_turns"] == 0
    for d, src in zip(dialogues, OPENINGS):
        first_user = next(m for m in src["conversations"] if m["role"] == "user")
        opening = [m for m in d["messages"] if m["author"] == "data"]
        assert opening[-1]["content"] == first_user["content"]
        gen = d["messages"][len(opening):]
        assert [(m["role"], m["author"]) for m in gen] == [("assistant", "assistant"), ("user", "simulator"),
                                                           ("assistant", "assistant")]
    assert "## Dialogue 2 (from c)" in (full / "dialogues.md").read_text()

    # A run killed after 4 turns, mid-write of the fifth: it resumes to the same dialogues.
    part = tmp_path / "part"
    part.mkdir()
    lines = (full / "turns.jsonl").read_text().splitlines(keepends=True)
    (part / "turns.jsonl").write_text("".join(lines[:4]) + lines[4][:10])
    (part / "turns.settings.json").write_text((full / "turns.settings.json").read_text())
    summary = run(setup, part)
    assert summary["resumed_turns"] == 4 and summary["generated_turns"] == 9
    assert read(part / "dialogues.jsonl") == dialogues

    # Finished: nothing generated again; other settings: refused, nothing touched.
    before = (full / "turns.jsonl").read_bytes()
    assert run(setup, full)["resumed_turns"] == 9
    with pytest.raises(SystemExit, match=r"max_tokens: file 6 vs now 7"):
        run(setup, full, "--max_tokens", "7")
    assert (full / "turns.jsonl").read_bytes() == before


def test_read_openings_keeps_system_and_first_user(tmp_path):
    data = tmp_path / "openings.json"
    data.write_text(json.dumps(OPENINGS[:2] + [dict(OPENINGS[2], intent="Learn fruit names.")]))
    got = sim.read_openings(str(data))
    assert got[1] == {"source": "b", "opening": [{"role": "system", "content": "Be brief."},
                                                 {"role": "user", "content": "Why?"}],
                      "intent": "Why?", "intent_source": SOURCE_STANDIN}
    assert (got[2]["intent"], got[2]["intent_source"]) == ("Learn fruit names.", SOURCE_FIELD)
    assert len(sim.read_openings(str(data), limit=2)) == 2
    data.write_text(json.dumps([dict(OPENINGS[0], intent=7)]))
    with pytest.raises(SystemExit, match=r"record 0: 'intent' must be a non-empty string"):
        sim.read_openings(str(data))


class FakeEngine:
    """Stands in for a loaded checkpoint: records its prompts; the simulator ends dialogue 0
    at its first turn and asks "More?" elsewhere; the assistant says "Sure."."""
    prompts: dict = {}

    def __init__(self, model_path, backend, device, max_model_len, n_seqs, name):
        from smolsft.chat.tokenization import DEFAULT_MODEL, load_tokenizer

        self.name, self.tokenizer = name, load_tokenizer(str(DEFAULT_MODEL), 512)
        FakeEngine.prompts[name] = []

    def generate(self, prompts, max_tokens, temperature, top_p, seeds):
        FakeEngine.prompts[self.name] += prompts
        if self.name == "assistant":
            return [{"response": "Sure.", "num_tokens": 2, "finish_reason": "stop"} for _ in prompts]
        return [{"response": (END_MARKER if s % 1000 == 1 and s < 1000 else "More?"), "num_tokens": 2,
                 "finish_reason": "stop"} for s in seeds]


def fake_run(monkeypatch, tmp_path, simulator, *extra):
    monkeypatch.setattr(sim, "Engine", FakeEngine)
    data = tmp_path / "openings.json"
    data.write_text(json.dumps([dict(OPENINGS[0], intent="Say hello."), OPENINGS[2]]))
    return sim.main(["--assistant", str(simulator), "--simulator", str(simulator), "--openings", str(data),
                     "--output_dir", str(tmp_path / "out"), "--rounds", "3", "--limit", "0", "--backend", "hf",
                     *extra])


def test_the_simulator_ends_a_dialogue_and_is_told_the_intent(monkeypatch, tmp_path):
    summary = fake_run(monkeypatch, tmp_path, tmp_path)
    dialogues = read(tmp_path / "out" / "dialogues.jsonl")
    assert [d["ended_by"] for d in dialogues] == ["simulator", "limit"] and summary["ended_by_simulator"] == 1
    # Dialogue 0: the first answer, then the end marker (in turns.jsonl, not a message); 1: all 5 turns.
    assert [m["author"] for m in dialogues[0]["messages"]] == ["data", "assistant"]
    assert sum(m["author"] != "data" for m in dialogues[1]["messages"]) == 5
    assert summary["generated_turns"] == 2 + 5
    assert (dialogues[0]["intent_source"], dialogues[1]["intent_source"]) == (SOURCE_FIELD, SOURCE_STANDIN)
    first = FakeEngine.prompts["simulator"]
    assert f"{INTENT_PREFIX}Say hello." in first[0] and f"{INTENT_PREFIX}Name a fruit." in first[1]
    assert "Ended by: simulator" in (tmp_path / "out" / "dialogues.md").read_text()


def test_no_intent_gives_the_course_system_message(monkeypatch, tmp_path):
    fake_run(monkeypatch, tmp_path, tmp_path, "--no_intent")
    assert all(INTENT_PREFIX not in p for p in FakeEngine.prompts["simulator"])


def test_an_assistant_checkpoint_is_refused_as_simulator(monkeypatch, tmp_path, capsys):
    """Issue 40 row 8: run_manifest.json says mask_mode: assistant -> refused, naming the
    flag that insists; with it, a warning; no manifest, a warning."""
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "run_manifest.json").write_text(json.dumps({"data_args": {"mask_mode": "assistant"}}))
    with pytest.raises(SystemExit, match=r"mask_mode: assistant.*--any_simulator"):
        fake_run(monkeypatch, tmp_path, ckpt)
    assert not (tmp_path / "out" / "turns.jsonl").exists()
    fake_run(monkeypatch, tmp_path, ckpt, "--any_simulator")
    assert "warning: " in capsys.readouterr().err
    (ckpt / "run_manifest.json").unlink()
    fake_run(monkeypatch, tmp_path, ckpt, "--any_simulator")
    assert "has no run_manifest.json" in capsys.readouterr().err
    (ckpt / "run_manifest.json").write_text(json.dumps({"data_args": {"mask_mode": "reverse"}}))
    fake_run(monkeypatch, tmp_path, ckpt)
    assert "warning" not in capsys.readouterr().err
