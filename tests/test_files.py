"""smolsft/files.py: paths resolved against the working folder and the repository, JSONL reading."""
import pytest

from smolsft.files import iter_jsonl, resolve_path


def test_resolve_path(tmp_path, monkeypatch, model_dir):
    monkeypatch.chdir(tmp_path)
    assert resolve_path("SmolLM2-135M") == str(model_dir.resolve())  # repo root fallback
    (tmp_path / "SmolLM2-135M").mkdir()
    assert resolve_path("SmolLM2-135M") == str((tmp_path / "SmolLM2-135M").resolve())  # cwd first
    assert resolve_path("org/some-hub-model") == "org/some-hub-model"


def test_iter_jsonl(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text('{"a": 1}\n\n  \n{"b": 2}\n', encoding="utf-8")
    assert list(iter_jsonl(good, "test")) == [(1, {"a": 1}), (4, {"b": 2})]  # blank lines skipped, numbered

    class MyError(Exception):
        pass

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": 1}\n{"b": \n', encoding="utf-8")
    with pytest.raises(MyError, match=r"bad\.jsonl:2: malformed JSON"):
        list(iter_jsonl(bad, "test", MyError))
    bad.write_text('{"a": 1}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: expected a JSON object, got list"):
        list(iter_jsonl(bad, "test"))
    assert list(iter_jsonl(bad, "test", objects_only=False)) == [(1, {"a": 1}), (2, [1, 2])]
    with pytest.raises(MyError, match=r"test file not found: .*absent\.jsonl"):
        list(iter_jsonl(tmp_path / "absent.jsonl", "test", MyError))
    with pytest.raises(ValueError, match="is a directory"):
        list(iter_jsonl(tmp_path, "test"))
