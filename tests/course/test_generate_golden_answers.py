"""generate_golden_answers.py: the independent prefix-method reference reproduces the
course's official golden files, regenerates the repo's committed golden files exactly,
names bad samples, and shares no code with the fast masking it checks."""
import ast
import json
from pathlib import Path

import pytest

import generate_golden_answers as gga
from smolsft.chat.tokenization import load_tokenizer

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("golden_name, fn", [("exercise_solutions.json", gga.forward_reference),
                                             ("reverse_exercise_solutions.json", gga.reverse_reference)])
def test_reference_reproduces_official_golden(course_ref, tokenizer, golden_name, fn):
    samples = json.loads((course_ref / "exercise_samples.json").read_text())
    golden = json.loads((course_ref / golden_name).read_text())
    for split in gga.SPLITS:
        for sample, want in zip(samples[split], golden[split], strict=True):
            assert fn(sample["messages"], tokenizer, 2048, "left") == want["features"], (golden_name, split, sample["id"])


def test_regenerates_committed_golden_files(tmp_path, model_dir):
    fwd, rev = tmp_path / "f.json", tmp_path / "r.json"
    assert gga.main(["--forward_out", str(fwd), "--reverse_out", str(rev), "--model_name", "SmolLM2-135M"]) == 0
    assert fwd.read_bytes() == (REPO / "exercise_solutions.json").read_bytes()
    assert rev.read_bytes() == (REPO / "reverse_exercise_solutions.json").read_bytes()
    doc = json.loads(fwd.read_text())
    assert doc["meta"] == {"samples_path": "exercise_samples.json", "model_name": "SmolLM2-135M",
                           "model_max_length": 2048, "truncation": "left"}
    entry = doc["multi_turn"][0]
    assert set(entry) == {"id", "features"} and all(len(v) == 2048 for v in entry["features"].values())


def test_prefix_lengths_and_truncation(tokenizer):
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "u " * 40},
            {"role": "assistant", "content": "a " * 40}]
    lengths = gga.prefix_token_lengths(msgs, tokenizer)
    full = tokenizer.apply_chat_template(msgs, tokenize=True, return_dict=False)
    assert lengths[0] == 0 and lengths[-1] == len(full) and lengths == sorted(lengths)
    left = gga.forward_reference(msgs, tokenizer, 30, "left")
    right = gga.forward_reference(msgs, tokenizer, 30, "right")
    assert left["input_ids"] == list(full[-30:]) and right["input_ids"] == list(full[:30])
    assert right["labels"] == [-100] * 30  # the assistant turn is beyond the first 30 tokens
    assert left["labels"] == list(full[-30:])  # ... and the last 30 are all assistant
    assert gga.forward_reference([], tokenizer, 8, "left") is None


def test_bad_sample_is_named(tmp_path, model_dir):
    bad = tmp_path / "samples.json"
    bad.write_text(json.dumps({"single_turn": [{"id": "ok", "messages": [{"role": "user", "content": "a"}]},
                                               {"id": "broken", "messages": [{"role": "user", "content": None}]}],
                               "multi_turn": []}))
    with pytest.raises(SystemExit) as e:
        gga.main(["--samples", str(bad), "--forward_out", str(tmp_path / "f"), "--reverse_out", str(tmp_path / "r")])
    assert "single_turn[1] (id 'broken')" in str(e.value) and "content must be a string" in str(e.value)


def test_reference_does_not_use_the_fast_code():
    tree = ast.parse((REPO / "generate_golden_answers.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not imported & {"conversation_func", "reverse_conversation_func"}


def test_reference_with_another_tokenizer_template(model_dir):
    """The reference follows whatever template the tokenizer has (no ChatML assumption)."""
    tok = load_tokenizer(str(model_dir), 2048)
    tok.chat_template = "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>' }}{% endfor %}"
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    feats = gga.forward_reference(msgs, tok, 16, "left")
    n_user = len(tok.apply_chat_template(msgs[:1], tokenize=True, return_dict=False))
    n = sum(feats["attention_mask"])
    assert feats["labels"][:n_user] == [-100] * n_user
    assert feats["labels"][n_user:n] == feats["input_ids"][n_user:n] and n > n_user
