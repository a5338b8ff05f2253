"""smolsft/chat/tokenization.py: the fast way to load SmolLM2's tokenizer gives what AutoTokenizer
gives; its configuration, ChatML rendering, end-of-turn ids and fingerprint."""
import json
import shutil

import pytest

from smolsft.chat import tokenization as tokenization
from smolsft.chat.format import CHATML_TEMPLATE
from smolsft.chat.tokenization import _tokenizer_class, end_of_turn_ids, load_tokenizer, tokenizer_fingerprint

U = lambda c: {"role": "user", "content": c}  # noqa: E731
A = lambda c: {"role": "assistant", "content": c}  # noqa: E731
S = lambda c: {"role": "system", "content": c}  # noqa: E731

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


def test_tokenizer_configuration(tokenizer):
    assert len(tokenizer) == 49152
    assert tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [0, 1, 2]
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token) == ("<|endoftext|>",) * 3
    assert tokenizer.pad_token_id == 0 and tokenizer.padding_side == "right"
    assert tokenizer.model_max_length == 2048
    assert tokenizer.chat_template == CHATML_TEMPLATE
    # nothing is added around plain text (no BOS/EOS)
    assert tokenizer("hello world")["input_ids"] == tokenizer.convert_tokens_to_ids(["hello", "Ġworld"])


def test_saved_folder_has_no_pad_token(model_dir):
    cfg = json.loads((model_dir / "tokenizer_config.json").read_text())
    assert cfg.get("pad_token") in (None, "")
    assert cfg["bos_token"] == cfg["eos_token"] == cfg["unk_token"] == "<|endoftext|>"


def test_chatml_rendering(tokenizer):
    msgs = [S("sys"), U("hi"), A("hello")]
    text = tokenizer.apply_chat_template(msgs, tokenize=False)
    assert text == "\n<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n"
    gen = tokenizer.apply_chat_template(msgs[:2], tokenize=False, add_generation_prompt=True)
    assert gen.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


def test_official_sample_ids_match(tokenizer, course_ref):
    """The unpadded ids of all 10 official conversations equal the course's golden ids."""
    samples = json.loads((course_ref / "exercise_samples.json").read_text())
    gold = json.loads((course_ref / "exercise_solutions.json").read_text())
    n = 0
    for split in ("single_turn", "multi_turn"):
        for s, g in zip(samples[split], gold[split], strict=True):
            assert s["id"] == g["id"]
            f = g["features"]
            expected = [i for i, m in zip(f["input_ids"], f["attention_mask"]) if m]
            got = tokenizer.apply_chat_template(s["messages"], tokenize=True, return_dict=False)
            assert len(got) <= 2048, "official samples fit in 2048 tokens"
            assert got == expected, f"{split} id {s['id']}"
            n += 1
    assert n == 10


def test_left_padding_option_and_fingerprint(model_dir, tokenizer):
    left = load_tokenizer(str(model_dir), 512, padding_side="left")
    assert left.padding_side == "left" and left.model_max_length == 512
    assert tokenizer_fingerprint(left) != tokenizer_fingerprint(tokenizer)
    assert tokenizer_fingerprint(tokenizer) == tokenizer_fingerprint(load_tokenizer(str(model_dir), 2048))


def test_end_of_turn_ids(tokenizer):
    """<|im_end|> (2) then eos <|endoftext|> (0), whatever shape the extra eos has (an
    int, a list as in this project's checkpoints, None), without duplicates."""
    assert end_of_turn_ids(tokenizer) == [2, 0]
    assert end_of_turn_ids(tokenizer, 0) == [2, 0]
    assert end_of_turn_ids(tokenizer, None) == [2, 0]
    assert end_of_turn_ids(tokenizer, [0, 7]) == [2, 0, 7]
    assert end_of_turn_ids(tokenizer, [[2, 0], 9, None]) == [2, 0, 9]


def test_end_of_turn_ids_without_im_end():
    """A tokenizer without <|im_end|> in its vocabulary gives its eos only."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<eos>": 0, "a": 1}, unk_token="a")),
                                  eos_token="<eos>")
    assert end_of_turn_ids(tok) == [0]
