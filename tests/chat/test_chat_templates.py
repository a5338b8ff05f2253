"""Masking and stopping with other models' chat templates (Llama-3, Gemma, Qwen3 styles),
written here after the public formats and put on a copy of the SmolLM2 tokenizer with
the templates' special tokens added.

- The prefix method masks Llama-3 and Gemma templates exactly: the expected ids and
  labels are built here from each message's own rendering, tokenized piece by piece
  (every boundary is a special token, so the pieces' tokens concatenate to the whole).
- A Qwen3-style template drops the <think> block of assistant turns before the last user
  turn, so a prefix's rendering is not a prefix of the whole one: the masking refuses it,
  naming the message index and the template, instead of training the wrong tokens.
- End-of-turn ids come from each template's own turn terminator.
"""
import numpy as np
import pytest
from transformers import AutoTokenizer

import conversation_func as cf
from smolsft.chat.format import IGNORE_TOKEN_ID
from smolsft.chat.tokenization import end_of_turn_ids, load_tokenizer, template_turn_terminator

LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
GEMMA = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
# Qwen3's rule: an assistant turn after the last user turn keeps its reasoning as
# "<think>\n...\n</think>\n\n"; earlier assistant turns lose it.
QWEN3 = (
    "{%- set ns = namespace(last_user=-1) %}"
    "{%- for m in messages %}{%- if m['role'] == 'user' %}{%- set ns.last_user = loop.index0 %}{%- endif %}{%- endfor %}"
    "{%- for m in messages %}"
    "{%- if m['role'] == 'assistant' %}"
    "{%- set content = m['content'] %}{%- set reasoning = '' %}"
    "{%- if '</think>' in content %}"
    "{%- set reasoning = content.split('</think>')[0].split('<think>')[-1].strip('\n') %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\n') %}{%- endif %}"
    "{%- if loop.index0 > ns.last_user and (loop.last or reasoning) %}"
    "{{- '<|im_start|>assistant\n<think>\n' + reasoning + '\n</think>\n\n' + content + '<|im_end|>\n' }}"
    "{%- else %}{{- '<|im_start|>assistant\n' + content + '<|im_end|>\n' }}{%- endif %}"
    "{%- else %}{{- '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{%- endif %}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)
STYLES = {
    "llama3": (LLAMA3, ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
               "<|begin_of_text|>", "<|eot_id|>"),
    "gemma": (GEMMA, ["<bos>", "<start_of_turn>", "<end_of_turn>"], "<bos>", "<end_of_turn>"),
    "qwen3": (QWEN3, ["<think>", "</think>"], None, "<|im_end|>"),
}
CHAT = [{"role": "user", "content": "Count to 3."}, {"role": "assistant", "content": "1, 2, 3"},
        {"role": "user", "content": "Now to 4."}, {"role": "assistant", "content": "1, 2, 3, 4"}]


@pytest.fixture(scope="module")
def styled(model_dir, tmp_path_factory):
    """style -> the SmolLM2 tokenizer with that template and its special tokens, saved and
    loaded back through load_tokenizer (which keeps a foreign template)."""
    out = {}
    for style, (template, tokens, bos, _) in STYLES.items():
        tok = AutoTokenizer.from_pretrained(str(model_dir))
        tok.add_special_tokens({"additional_special_tokens": tokens})
        if bos:
            tok.bos_token = bos
        tok.chat_template = template
        folder = tmp_path_factory.mktemp(style)
        tok.save_pretrained(folder)
        out[style] = load_tokenizer(str(folder))
        assert out[style].chat_template == template
    return out


def expected_by_pieces(tok, pieces: list[str], trained: list[bool]):
    """ids and labels from each message's rendered text tokenized on its own."""
    ids, labels = [], []
    for text, train in zip(pieces, trained):
        t = tok(text, add_special_tokens=False)["input_ids"]
        ids += t
        labels += t if train else [IGNORE_TOKEN_ID] * len(t)
    return ids, labels


@pytest.mark.parametrize("style", ["llama3", "gemma"])
def test_prefix_method_masks_llama3_and_gemma_exactly(styled, style):
    tok = styled[style]
    if style == "llama3":
        head = lambda m: f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n"  # noqa: E731
        pieces = [head(m) + m["content"] + "<|eot_id|>" for m in CHAT]
        pieces[0] = "<|begin_of_text|>" + pieces[0]
    else:
        role = lambda m: "model" if m["role"] == "assistant" else m["role"]  # noqa: E731
        pieces = [f"<start_of_turn>{role(m)}\n{m['content']}<end_of_turn>\n" for m in CHAT]
        pieces[0] = "<bos>" + pieces[0]
    want_ids, want_labels = expected_by_pieces(tok, pieces, [m["role"] == "assistant" for m in CHAT])
    ids, labels = cf.mask_conversation(CHAT, tok, cf.ASSISTANT_ROLES)
    assert ids.tolist() == want_ids and labels.tolist() == want_labels
    cf.check_prefix_masking(tok)  # the set-up probe passes too


def test_qwen3_style_template_is_refused_naming_message_and_template(styled):
    tok = styled["qwen3"]
    chat = [dict(m) for m in CHAT]
    chat[1]["content"] = "<think>\nEasy.\n</think>\n\n1, 2, 3"
    # The reason: rendered alone, the first answer keeps its reasoning; followed by another round it loses it.
    alone = tok.apply_chat_template(chat[:2], tokenize=False)
    whole = tok.apply_chat_template(chat, tokenize=False)
    assert "Easy." in alone and "Easy." not in whole
    with pytest.raises(cf.TemplateMaskingError, match=r"^message 1 \(assistant\): .* the chat template of .*sha256"):
        cf.mask_conversation(chat, tok, cf.ASSISTANT_ROLES)
    with pytest.raises(cf.TemplateMaskingError):
        cf.conversation_to_features(chat, tok, 256)
    with pytest.raises(cf.TemplateMaskingError, match=r"^message 2 \(assistant\)"):  # the probe has a system message
        cf.check_prefix_masking(tok)
    # A single round renders the same either way: masked, only the answer trained.
    ids, labels = cf.mask_conversation(chat[:2], tok, cf.ASSISTANT_ROLES)
    trained = tok.decode(ids[labels != IGNORE_TOKEN_ID])
    assert trained == "<|im_start|>assistant\n<think>\nEasy.\n</think>\n\n1, 2, 3<|im_end|>\n"


def test_end_of_turn_ids_follow_the_template(styled, tokenizer):
    for style, (_, _, _, terminator) in STYLES.items():
        tok = styled[style]
        tid = tok.convert_tokens_to_ids(terminator)
        assert template_turn_terminator(tok) == tid, style
        assert end_of_turn_ids(tok) == [tid, tok.eos_token_id], style  # eos stays <|endoftext|>
    assert end_of_turn_ids(tokenizer) == [2, 0]  # the project's ChatML on SmolLM2: <|im_end|>, <|endoftext|>
    assert end_of_turn_ids(styled["llama3"], [7]) == [styled["llama3"].convert_tokens_to_ids("<|eot_id|>"), 0, 7]
