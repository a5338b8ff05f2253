"""ifeval/run_ifeval.py: the stop at <|im_end|>, special-token removal, resume, settings
checks, the thin vLLM path (against a stand-in module), and the CPU path end to end.

Most tests use a "chain" model: a one-layer Llama with the real SmolLM2 tokenizer whose
weights are zero except for an embedding/lm_head pattern that makes greedy decoding
follow a fixed token chain whatever the context (the attention and MLP outputs are zero,
so the next token depends only on the current one). Its answers are known in advance,
which is what lets these tests say exactly where generation must stop.
"""
import json
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch

from utils import REPO_ROOT, load_tokenizer

sys.path.insert(0, str(REPO_ROOT))
from ifeval import run_ifeval as ri  # noqa: E402

NL, HELLO, WORLD, IM_START_ID, IM_END_ID, EOT = 198, 19556, 905, 1, 2, 0
PROMPTS = REPO_ROOT / "ifeval" / "data" / "sampled_input_data.jsonl"
# "\n" (the end of "<|im_start|>assistant\n") -> "Hello" -> " world" -> <|im_end|> -> "\n" ...
# Stopped at <|im_end|> the answer is "Hello world"; not stopped, it loops.
LOOP_CHAIN = [(NL, HELLO), (HELLO, WORLD), (WORLD, IM_END_ID), (IM_END_ID, NL)]


def chain_model(pairs, hidden=64):
    """A LlamaForCausalLM (SmolLM2 vocabulary, generation_config eos = <|endoftext|> only,
    like a base-model checkpoint) whose greedy successor of ``cur`` is ``nxt`` for each
    pair; any other token is followed by <|endoftext|> (all-zero logits, argmax id 0)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=49152, hidden_size=hidden, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False,
                      bos_token_id=EOT, eos_token_id=EOT, pad_token_id=None, max_position_embeddings=1024)
    model = LlamaForCausalLM(cfg)
    assert len({c for c, _ in pairs}) == len(pairs) <= hidden
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for n in [model.model.norm] + [m for layer in model.model.layers
                                       for m in (layer.input_layernorm, layer.post_attention_layernorm)]:
            n.weight.fill_(1.0)
        for slot, (cur, nxt) in enumerate(pairs):
            model.model.embed_tokens.weight[cur, slot] = 1.0
            model.lm_head.weight[nxt, slot] = 10.0
    return model.eval()


def save_chain_checkpoint(model_dir: Path, dest: Path, pairs=LOOP_CHAIN) -> Path:
    """The chain model as a checkpoint folder with the real tokenizer files."""
    chain_model(pairs).save_pretrained(dest)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if f != "special_tokens_map.json" or (model_dir / f).is_file():  # transformers 5 no longer writes it
            shutil.copy(model_dir / f, dest / f)
    assert json.loads((dest / "generation_config.json").read_text())["eos_token_id"] == EOT
    return dest


@pytest.fixture(scope="module")
def chain_ckpt(model_dir, tmp_path_factory):
    return save_chain_checkpoint(model_dir, tmp_path_factory.mktemp("chain") / "chain-model")


@pytest.fixture
def one_thread():
    """Real-model tests run on one CPU thread: on a busy 2-core machine (CI, other jobs)
    two OpenMP threads can be several times slower than one. Behaviour is unchanged."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def read_jsonl(p: Path):
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def first_prompts(n):
    return read_jsonl(PROMPTS)[:n]


# ------------------------------------------------------------------------ stopping
def test_stop_ids_cover_im_end_and_eos(tokenizer):
    assert ri.stop_token_ids(tokenizer) == [IM_END_ID, EOT]
    assert ri.stop_token_ids(tokenizer, [EOT, 7]) == [IM_END_ID, EOT, 7]


def test_generation_stops_at_im_end_not_only_config_eos(tokenizer):
    model = chain_model(LOOP_CHAIN)
    prompts = ri.render_prompts(tokenizer, first_prompts(2), None)
    got = ri.generate_hf(model, tokenizer, prompts, max_new_tokens=12, batch_size=2,
                         stop_ids=ri.stop_token_ids(tokenizer, [EOT]), show_progress=False)
    assert [a["response"] for a in got] == ["Hello world", "Hello world"]
    assert all(a["finish_reason"] == "stop" and a["num_tokens"] == 3 for a in got)
    # Control: with only the checkpoint's eos the same model runs on to the limit,
    # so the stop above is our doing, not the model's.
    ctrl = ri.generate_hf(model, tokenizer, prompts[:1], max_new_tokens=12, stop_ids=[EOT], show_progress=False)
    assert ctrl[0]["finish_reason"] == "length" and ctrl[0]["num_tokens"] == 12
    assert ctrl[0]["response"].startswith("Hello world\nHello world")


def test_special_tokens_removed_from_answer(tokenizer):
    # "\n" -> "Hello" -> <|im_start|> -> " world" -> <|endoftext|>
    model = chain_model([(NL, HELLO), (HELLO, IM_START_ID), (IM_START_ID, WORLD), (WORLD, EOT)])
    prompts = ri.render_prompts(tokenizer, first_prompts(1), None)
    (a,) = ri.generate_hf(model, tokenizer, prompts, max_new_tokens=10, show_progress=False)
    assert a == {"response": "Hello world", "num_tokens": 4, "finish_reason": "stop"}


def test_finish_answer_cuts_at_first_stop(tokenizer):
    stops = [IM_END_ID, EOT]
    assert ri.finish_answer(tokenizer, [HELLO, WORLD, IM_END_ID, NL, HELLO], stops) == \
        {"response": "Hello world", "num_tokens": 3, "finish_reason": "stop"}
    assert ri.finish_answer(tokenizer, [NL, HELLO, WORLD, NL], stops) == \
        {"response": "Hello world", "num_tokens": 4, "finish_reason": "length"}
    assert ri.finish_answer(tokenizer, [IM_END_ID], stops)["response"] == ""


def test_render_prompts_uses_training_template(tokenizer):
    (with_sys,) = ri.render_prompts(tokenizer, [{"prompt": "Hi there"}], "Be brief.")
    assert with_sys == ("\n<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
                        "<|im_start|>assistant\n")
    (plain,) = ri.render_prompts(tokenizer, [{"prompt": "Hi there"}], None)
    assert plain == "\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"


def test_model_label():
    assert ri.model_label("/x/ckpt/HW2/checkpoint-500") == "HW2_checkpoint-500"
    assert ri.model_label("HuggingFaceTB/SmolLM2-135M") == "SmolLM2-135M"
    assert ri.model_label("/x/my model/") == "my_model"


# ------------------------------------------------------------- end to end and resume
def run_main(ckpt, out, *extra):
    return ri.main(["--model_path", str(ckpt), "--output_dir", str(out), "--backend", "hf", *extra])


def test_end_to_end_tiny_checkpoint(chain_ckpt, tmp_path):
    res = run_main(chain_ckpt, tmp_path, "--limit", "3", "--max_tokens", "20", "--batch_size", "2")
    rfile = tmp_path / "responses_chain-model.jsonl"
    recs = read_jsonl(rfile)
    assert [r["key"] for r in recs] != [] and sorted(r["key"] for r in recs) == sorted(p["key"] for p in first_prompts(3))
    assert {r["response"] for r in recs} == {"Hello world"}
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary == res["summary"]
    for k in ("prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc", "inst_level_loose_acc"):
        assert 0.0 <= summary[k] <= 1.0
    assert summary["num_prompts"] == 3 and summary["prompt_set"] == "sampled_input_data.jsonl"
    assert summary["max_tokens"] == 20 and summary["temperature"] == 0.0 and summary["backend"] == "hf"
    assert summary["limit"] == 3 and summary["model"] == "chain-model"
    assert len(read_jsonl(tmp_path / "eval_results_strict.jsonl")) == 3
    assert len(read_jsonl(tmp_path / "eval_results_loose.jsonl")) == 3


def test_checkpoint_generation_config_does_not_leak(chain_ckpt, tmp_path):
    """A checkpoint whose generation_config asks for sampling at a huge temperature and
    2 new tokens: greedy with --max_tokens 20 must still give the chain's answer."""
    ckpt = tmp_path / "sampling-ckpt"
    shutil.copytree(chain_ckpt, ckpt)
    gc = json.loads((ckpt / "generation_config.json").read_text())
    gc.update(do_sample=True, temperature=50.0, top_k=0, max_new_tokens=2)
    (ckpt / "generation_config.json").write_text(json.dumps(gc))
    run_main(ckpt, tmp_path / "out", "--limit", "4", "--max_tokens", "20", "--mode", "inference")
    recs = read_jsonl(tmp_path / "out" / "responses_sampling-ckpt.jsonl")
    assert [r["response"] for r in recs] == ["Hello world"] * 4 and {r["num_tokens"] for r in recs} == {3}


def test_resume_after_kill_answers_only_missing(chain_ckpt, tmp_path):
    prompts = first_prompts(4)
    rfile = tmp_path / "responses_chain-model.jsonl"
    # What a run killed during its second batch leaves: two complete records (made by
    # "earlier" generation: their text is a sentinel the chain model cannot produce) and
    # a half-written third line without its newline.
    done = [{"key": p["key"], "prompt": p["prompt"], "response": f"SENTINEL {p['key']}"} for p in prompts[:2]]
    rfile.write_text("".join(json.dumps(r) + "\n" for r in done) + '{"key": %d, "prompt": "Wri' % prompts[2]["key"])
    ri.settings_path(rfile).write_text(json.dumps(ri.generation_settings(
        ri.build_parser().parse_args(["--output_dir", "x", "--max_tokens", "20"]), str(chain_ckpt))))
    res = run_main(chain_ckpt, tmp_path, "--limit", "4", "--max_tokens", "20", "--mode", "inference")
    assert res["stats"]["resumed"] == 2 and res["stats"]["generated"] == 2
    recs = read_jsonl(rfile)  # the half line is gone: every line parses
    assert recs[:2] == done
    assert [r["key"] for r in recs[2:]] == [p["key"] for p in prompts[2:]]
    assert {r["response"] for r in recs[2:]} == {"Hello world"}
    # Rerunning once more generates nothing and leaves the file as it is.
    before = rfile.read_bytes()
    res = run_main(chain_ckpt, tmp_path, "--limit", "4", "--max_tokens", "20")
    assert res["stats"]["generated"] == 0 and rfile.read_bytes() == before
    assert res["summary"]["num_prompts"] == 4


def test_resume_refuses_other_settings(chain_ckpt, tmp_path):
    run_main(chain_ckpt, tmp_path, "--limit", "1", "--max_tokens", "20", "--mode", "inference")
    with pytest.raises(SystemExit, match="max_tokens: file 20 vs now 30"):
        run_main(chain_ckpt, tmp_path, "--limit", "2", "--max_tokens", "30", "--mode", "inference")


def test_eval_limit_scores_first_n_of_longer_file(chain_ckpt, tmp_path):
    run_main(chain_ckpt, tmp_path, "--limit", "4", "--max_tokens", "20", "--mode", "inference")
    res = ri.main(["--mode", "eval", "--input_response_data", str(tmp_path / "responses_chain-model.jsonl"),
                   "--output_dir", str(tmp_path / "ev"), "--limit", "2"])
    assert res["summary"]["num_prompts"] == 2 and res["summary"]["num_missing"] == 0
    assert res["summary"]["max_tokens"] == 20  # settings come from the sidecar


def test_read_answered_rejects_bad_line_mid_file(tmp_path):
    f = tmp_path / "r.jsonl"
    f.write_text('{"key": 1, "response": "a"}\nnot json\n{"key": 2, "response": "b"}\n')
    with pytest.raises(ValueError, match=r"r\.jsonl:2: not a response record"):
        ri.read_answered(f)
    f.write_text('{"key": 1, "response": "a"}\n{"key": 1, "response": "b"}\n')
    with pytest.raises(ValueError, match=r"r\.jsonl:2: key 1 answered twice"):
        ri.read_answered(f)


def test_eval_errors_are_clear(tmp_path):
    with pytest.raises(SystemExit, match="response file not found"):
        ri.main(["--mode", "eval", "--input_response_data", str(tmp_path / "nope.jsonl"), "--output_dir", str(tmp_path)])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"key": 123456789, "response": "x"}\n')
    with pytest.raises(SystemExit, match=r"bad\.jsonl: 1 response\(s\) answer prompts that are not in the input set"):
        ri.main(["--mode", "eval", "--input_response_data", str(bad), "--output_dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="--model_path is required"):
        ri.main(["--output_dir", str(tmp_path)])


# ---------------------------------------------------------------------- backends
def test_pick_backend(monkeypatch):
    import importlib.util

    assert ri.pick_backend("hf") == "hf" and ri.pick_backend("vllm") == "vllm"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert ri.pick_backend("auto") == "hf"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real_find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "vllm" else real_find(n, *a))
    assert ri.pick_backend("auto") == "hf"
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: object() if n == "vllm" else real_find(n, *a))
    assert ri.pick_backend("auto") == "vllm"


def test_vllm_path_with_stand_in_module(tokenizer, monkeypatch):
    """vLLM cannot run here; a stand-in module records what generate_vllm asks of the
    documented LLM / SamplingParams API and returns canned token ids."""
    calls = {}

    class SamplingParams:
        def __init__(self, **kw):
            calls["params"] = kw

    class LLM:
        def __init__(self, **kw):
            calls["llm"] = kw

        def generate(self, prompts, params, use_tqdm=True):
            calls.setdefault("prompts", []).append(prompts)
            out = types.SimpleNamespace(token_ids=[HELLO, WORLD, IM_END_ID, NL, HELLO])
            return [types.SimpleNamespace(outputs=[out]) for _ in prompts]

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams))
    prompts = ri.render_prompts(tokenizer, first_prompts(3), None)
    seen = []
    got = ri.generate_vllm("/m", tokenizer, prompts, max_new_tokens=64, temperature=0.0, top_p=0.9,
                           stop_ids=[IM_END_ID, EOT], tensor_parallel_size=2, gpu_memory_utilization=0.5, seed=0,
                           chunk_size=2, on_batch=lambda idx, ans: seen.append(idx))
    assert [a["response"] for a in got] == ["Hello world"] * 3
    assert seen == [[0, 1], [2]]
    assert calls["llm"] == {"model": "/m", "tensor_parallel_size": 2, "gpu_memory_utilization": 0.5, "seed": 0}
    assert calls["params"]["stop_token_ids"] == [IM_END_ID, EOT] and calls["params"]["temperature"] == 0.0
    assert calls["params"]["max_tokens"] == 64 and calls["params"]["top_p"] == 1.0  # greedy ignores top_p
    assert calls["prompts"][0][0]["prompt_token_ids"] == tokenizer(prompts[0], add_special_tokens=False)["input_ids"]


# --------------------------------------------------------------- the real model
def test_real_model_cpu_end_to_end(model_dir, tmp_path, one_thread):
    res = ri.main(["--model_path", str(model_dir), "--output_dir", str(tmp_path), "--limit", "2",
                   "--max_tokens", "8", "--backend", "hf"])
    recs = read_jsonl(tmp_path / "responses_SmolLM2-135M.jsonl")
    assert len(recs) == 2 and all(r["response"] for r in recs)
    assert all(1 <= r["num_tokens"] <= 8 for r in recs)
    assert not any("<|" in r["response"] for r in recs)
    assert res["summary"]["num_prompts"] == 2 and (tmp_path / "summary.json").is_file()


def test_batched_equals_one_at_a_time_greedy(model_dir, one_thread):
    """Left padding must not change greedy answers: the padded positions are masked and
    position ids start at each row's first real token. (fp32 sums over different
    shapes can differ in the last bits; on these prompts the argmax does not move.)"""
    from ifeval.run_ifeval import load_hf_model

    tok = load_tokenizer(str(model_dir), padding_side="left")
    model = load_hf_model(str(model_dir), "cpu")
    recs = read_jsonl(PROMPTS)
    pick = [recs[i] for i in (0, 5, 11)]  # prompt lengths differ, so the batch is padded
    prompts = ri.render_prompts(tok, pick, None)
    lens = {len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts}
    assert len(lens) == 3
    batched = ri.generate_hf(model, tok, prompts, max_new_tokens=12, batch_size=3, show_progress=False)
    single = ri.generate_hf(model, tok, prompts, max_new_tokens=12, batch_size=1, show_progress=False)
    assert batched == single


def test_decode_loop_matches_transformers_generate(model_dir, one_thread):
    """decode_batch (rows leave the batch when they stop) gives the same greedy answers
    as transformers' own generate, run one prompt at a time with the same stop ids."""
    from transformers import GenerationConfig

    tok = load_tokenizer(str(model_dir), padding_side="left")
    model = ri.load_hf_model(str(model_dir), "cpu")
    prompts = ri.render_prompts(tok, [read_jsonl(PROMPTS)[i] for i in (0, 3, 9, 15)], None)
    stops = ri.stop_token_ids(tok, [EOT])
    cfg = GenerationConfig(max_new_tokens=16, do_sample=False, eos_token_id=stops, pad_token_id=EOT)
    ref = []
    for p in prompts:
        ids = torch.tensor([tok(p, add_special_tokens=False)["input_ids"]])
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=cfg,
                             use_model_defaults=False)
        ref.append(ri.finish_answer(tok, out[0, ids.shape[1]:].tolist(), stops))
    assert len({a["num_tokens"] for a in ref}) > 1  # rows stop at different steps
    assert ri.generate_hf(model, tok, prompts, max_new_tokens=16, batch_size=4, show_progress=False) == ref


def test_sampling_is_seeded(model_dir, one_thread):
    tok = load_tokenizer(str(model_dir), padding_side="left")
    model = ri.load_hf_model(str(model_dir), "cpu")
    prompts = ri.render_prompts(tok, first_prompts(2), None)
    runs = [ri.generate_hf(model, tok, prompts, max_new_tokens=8, temperature=1.0, top_p=0.9, seed=s,
                           show_progress=False) for s in (1, 1, 2)]
    assert runs[0] == runs[1]
    greedy = ri.generate_hf(model, tok, prompts, max_new_tokens=8, show_progress=False)
    assert runs[0] != greedy or runs[2] != greedy  # sampling does sample


def test_row_prefill_matches_batched_prefill(model_dir, one_thread, monkeypatch):
    """The prompt pass run in groups of rows and merged into one left-padded cache gives
    the batched pass's next-token logits and the same greedy answers as one prompt at a
    time, whatever the group size (groups of 1, of 2, of 3 with a short last group)."""
    tok = load_tokenizer(str(model_dir), padding_side="left")
    model = ri.load_hf_model(str(model_dir), "cpu")
    prompts = ri.render_prompts(tok, [read_jsonl(PROMPTS)[i] for i in (0, 3, 9, 15)], None)
    enc = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    lens = [len(e) for e in enc]
    assert lens != sorted(lens, reverse=True)  # groups take rows out of order: the merge must undo it
    width = max(lens)
    ids = torch.tensor([[EOT] * (width - len(e)) + e for e in enc])
    attn = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in enc])
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    calls = []
    hook = model.register_forward_pre_hook(lambda mod, args: calls.append(1))
    got = {}
    with torch.inference_mode():
        for name, threshold, group, n_calls in (("batched", 1.0, 4, 1), (1, -1.0, 1, 4), (3, -1.0, 3, 2),
                                                 (2, -1.0, 2, 2)):
            monkeypatch.setattr(ri, "ROW_PREFILL_PADDING", threshold)
            monkeypatch.setattr(ri, "PREFILL_GROUP", group)
            calls.clear()
            cache, logits = ri._prefill(model, ids, attn, pos)
            assert len(calls) == n_calls  # the path under test was the one taken
            assert cache.get_seq_length() == width
            got[name] = logits
    hook.remove()
    for name in (1, 2, 3):
        assert torch.allclose(got[name], got["batched"], atol=1e-4, rtol=1e-4), name
    monkeypatch.setattr(ri, "ROW_PREFILL_PADDING", -1.0)  # every padded batch goes in groups
    single = ri.generate_hf(model, tok, prompts, max_new_tokens=16, batch_size=1, show_progress=False)
    for group in (1, 3):
        monkeypatch.setattr(ri, "PREFILL_GROUP", group)
        rows = ri.generate_hf(model, tok, prompts, max_new_tokens=16, batch_size=4, show_progress=False)
        assert rows == single, group


def test_growing_cache_matches_dynamic_cache(model_dir, one_thread):
    """The doubling-buffer cache gives the same keys, values and logits as transformers'
    DynamicCache across several buffer regrowths (64 -> 128 -> 256 positions) and after a
    batch selection replaced its tensors."""
    from transformers import DynamicCache

    model = ri.load_hf_model(str(model_dir), "cpu")
    torch.manual_seed(0)
    ids = torch.randint(100, 1000, (3, 40))
    caches = {"dynamic": DynamicCache(), "growing": ri.growing_cache()}
    with torch.inference_mode():
        logits = {k: model(input_ids=ids, past_key_values=c, use_cache=True).logits[:, -1] for k, c in caches.items()}
        for step in range(150):
            if step == 100:  # drop row 1, as beam search or row compaction would
                for c in caches.values():
                    c.batch_select_indices(torch.tensor([0, 2]))
                logits = {k: v[[0, 2]] for k, v in logits.items()}
            assert torch.allclose(logits["growing"], logits["dynamic"], atol=1e-4, rtol=1e-4), step
            assert torch.equal(logits["growing"].argmax(-1), logits["dynamic"].argmax(-1)), step
            nxt = logits["dynamic"].argmax(-1, keepdim=True)
            logits = {k: model(input_ids=nxt, past_key_values=c, use_cache=True).logits[:, -1]
                      for k, c in caches.items()}
    grow, dyn = caches["growing"], caches["dynamic"]
    assert grow.get_seq_length() == dyn.get_seq_length() == 190
    layer = grow.layers[0]
    assert layer._buffers[0].shape[-2] > 190  # the buffer really grew beyond the filled part
    for lg, ld in zip(grow.layers, dyn.layers):
        assert lg.keys.shape == ld.keys.shape and torch.allclose(lg.keys, ld.keys, atol=1e-4)
        assert torch.allclose(lg.values, ld.values, atol=1e-4)


def test_model_stop_ids_take_int_or_list_eos(tokenizer):
    """A base checkpoint's generation_config has one eos id; this project's SFT
    checkpoints have a list ([<|im_end|>, <|endoftext|>]): both are accepted."""
    from types import SimpleNamespace

    model = lambda eos: SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=eos))  # noqa: E731
    assert ri.model_stop_ids(tokenizer, model(EOT)) == [IM_END_ID, EOT]
    assert ri.model_stop_ids(tokenizer, model([IM_END_ID, EOT, 7])) == [IM_END_ID, EOT, 7]
    assert ri.model_stop_ids(tokenizer, model(None)) == [IM_END_ID, EOT]
