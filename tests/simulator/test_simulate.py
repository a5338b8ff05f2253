"""scripts/simulate.py: dialogues alternate assistant and simulator turns from the
openings; a killed run resumes to the same dialogues; a finished one generates nothing
again; a rerun with other settings is refused (tiny random model, transformers backend,
greedy, so the turns are deterministic)."""
import json

import pytest

from conftest import load_script
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


def test_read_openings_keeps_system_and_first_user(setup):
    _, _, data = setup
    got = sim.read_openings(str(data))
    assert got[1] == ("b", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why?"}])
    assert len(sim.read_openings(str(data), limit=2)) == 2
