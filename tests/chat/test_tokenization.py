"""smolsft/chat/tokenization.py: the fast way to load SmolLM2's tokenizer gives what AutoTokenizer gives."""
import json
import shutil

import pytest

from smolsft.chat import tokenization as tokenization
from smolsft.chat.tokenization import _tokenizer_class, load_tokenizer

TEXTS = ["<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\n", "  two spaces\t\ttabs ünïcödé 日本語 🙂",
         "<|endoftext|>x<repo_name>y<|im_end|>", ""]


@pytest.mark.parametrize("which", ["smollm2", "tiny"])
def test_fast_class_equals_autotokenizer(which, model_dir, tiny_llama_dir):
    from transformers import AutoTokenizer

    path = str(model_dir if which == "smollm2" else tiny_llama_dir)
    assert _tokenizer_class(path).__name__ == "TokenizersBackend"
    ours, auto = _tokenizer_class(path).from_pretrained(path), AutoTokenizer.from_pretrained(path)
    assert type(ours) is type(auto)
    assert len(ours) == len(auto) and ours.special_tokens_map == auto.special_tokens_map
    assert ours.chat_template == auto.chat_template and ours.init_kwargs == auto.init_kwargs
    for text in TEXTS:
        assert ours(text, add_special_tokens=False)["input_ids"] == auto(text, add_special_tokens=False)["input_ids"]


def test_other_folders_go_through_autotokenizer(model_dir, tmp_path):
    from transformers import AutoTokenizer

    assert _tokenizer_class(str(tmp_path / "missing")) is AutoTokenizer
    assert _tokenizer_class("HuggingFaceTB/SmolLM2-135M") is AutoTokenizer  # a hub id
    for field, value in (("tokenizer_class", "GPT2Tokenizer"), ("auto_map", {"AutoTokenizer": "x.Y"})):
        other = tmp_path / field
        shutil.copytree(model_dir, other, ignore=shutil.ignore_patterns("*.safetensors"))
        cfg = json.loads((other / "tokenizer_config.json").read_text())
        cfg[field] = value
        (other / "tokenizer_config.json").write_text(json.dumps(cfg))
        assert _tokenizer_class(str(other)) is AutoTokenizer, field
    qwen = tmp_path / "qwen"
    shutil.copytree(model_dir, qwen, ignore=shutil.ignore_patterns("*.safetensors"))
    cfg = json.loads((qwen / "config.json").read_text())
    (qwen / "config.json").write_text(json.dumps({**cfg, "model_type": "qwen2"}))
    assert _tokenizer_class(str(qwen)) is AutoTokenizer


def test_load_tokenizer_configures_the_same_either_way(model_dir, monkeypatch):
    from transformers import AutoTokenizer

    fast = load_tokenizer(str(model_dir), 512, padding_side="left")
    monkeypatch.setattr(tokenization, "_tokenizer_class", lambda path: AutoTokenizer)
    auto = load_tokenizer(str(model_dir), 512, padding_side="left")
    for attr in ("chat_template", "pad_token", "padding_side", "model_max_length"):
        assert getattr(fast, attr) == getattr(auto, attr), attr
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    assert fast.apply_chat_template(chat, tokenize=False) == auto.apply_chat_template(chat, tokenize=False)
