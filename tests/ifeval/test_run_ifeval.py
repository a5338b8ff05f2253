"""ifeval/run_ifeval.py (the CLI) with the transformers backend: end to end, resume,
settings checks, scoring a longer response file; and the chain model the generation
tests share (tests/generation/test_engines.py, tests/ifeval/test_run_sh.py). vLLM runs for real in
tests/generation/test_vllm_engine.py.

Most tests use a "chain" model: a one-layer Llama with the real SmolLM2 tokenizer whose
weights are zero except for an embedding/lm_head pattern that makes greedy decoding
follow a fixed token chain whatever the context (the attention and MLP outputs are zero,
so the next token depends only on the current one). Its answers are known in advance,
which is what lets these tests say exactly where generation must stop.
"""
import json
import shutil
from pathlib import Path

import pytest
import torch

from smolsft.generation import responses as rs
from smolsft.lock import folder_lock
from ifeval import run_ifeval as ri
from smolsft.files import REPO_ROOT

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
        if (model_dir / f).exists():  # transformers 5 writes no special_tokens_map.json
            shutil.copy(model_dir / f, dest / f)
    assert json.loads((dest / "generation_config.json").read_text())["eos_token_id"] == EOT
    return dest


def read_jsonl(p: Path):
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def first_prompts(n):
    return read_jsonl(PROMPTS)[:n]


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
    # how it generated, for scripts/gpu_check_summary.py (no log line to parse)
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert {k: info[k] for k in ("device", "backend", "generated", "max_tokens", "resumed")} == {
        "device": "cpu", "backend": "hf", "generated": 3, "max_tokens": 20, "resumed": 0}
    assert info["precision"] in ("fp32", "bf16") and info["dtype"] == {"fp32": "float32", "bf16": "bfloat16"}[info["precision"]]
    assert info["engine_version"].startswith("transformers ") and info["tokens"] > 0 and info["tokens_per_s"] > 0


def test_checkpoint_generation_config_does_not_leak(chain_ckpt, tmp_path):
    """A checkpoint whose generation_config asks for sampling at a huge temperature,
    2 new tokens and both stop ids suppressed: greedy with --max_tokens 20 must still give
    the chain's answer (transformers' generate() fills what a config leaves unset from
    the model's)."""
    ckpt = tmp_path / "sampling-ckpt"
    shutil.copytree(chain_ckpt, ckpt)
    gc = json.loads((ckpt / "generation_config.json").read_text())
    gc.update(do_sample=True, temperature=50.0, top_k=0, max_new_tokens=2, suppress_tokens=[IM_END_ID, EOT])
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
    device = "cuda" if torch.cuda.is_available() else "cpu"  # what the run below uses (its dtype follows)
    rs.settings_path(rfile).write_text(json.dumps(ri.generation_settings(
        ri.build_parser().parse_args(["--output_dir", "x", "--max_tokens", "20"]), str(chain_ckpt), "hf", device)))
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


def test_eval_errors_are_clear(tmp_path):
    with pytest.raises(SystemExit, match="response file not found"):
        ri.main(["--mode", "eval", "--input_response_data", str(tmp_path / "nope.jsonl"), "--output_dir", str(tmp_path)])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"key": 123456789, "response": "x"}\n')
    with pytest.raises(SystemExit, match=r"bad\.jsonl: 1 response\(s\) answer prompts that are not in the input set"):
        ri.main(["--mode", "eval", "--input_response_data", str(bad), "--output_dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="--model_path is required"):
        ri.main(["--output_dir", str(tmp_path)])




def test_backend_default_from_environment(monkeypatch):
    """IFEVAL_BACKEND sets --backend's default (the flag still wins); a bad value is refused."""
    monkeypatch.delenv("IFEVAL_BACKEND", raising=False)
    assert ri.build_parser().parse_args(["--output_dir", "x"]).backend == "auto"
    monkeypatch.setenv("IFEVAL_BACKEND", "hf")
    assert ri.build_parser().parse_args(["--output_dir", "x"]).backend == "hf"
    assert ri.build_parser().parse_args(["--output_dir", "x", "--backend", "vllm"]).backend == "vllm"
    monkeypatch.setenv("IFEVAL_BACKEND", "tpu")
    with pytest.raises(SystemExit, match="IFEVAL_BACKEND='tpu': choose auto, vllm or hf"):
        ri.main(["--output_dir", "x"])


# ------------------------------------------------------------ prompts that do not fit
def chain_with_length(chain_ckpt, dest: Path, max_positions: int) -> Path:
    """The chain checkpoint with its config's max_position_embeddings set (the model's length)."""
    shutil.copytree(chain_ckpt, dest)
    cfg = json.loads((dest / "config.json").read_text())
    (dest / "config.json").write_text(json.dumps({**cfg, "max_position_embeddings": max_positions}))
    return dest


def prompt_tokens(tokenizer, rec) -> int:
    """A prompt's length as the chat template renders it (transformers' own call)."""
    return len(tokenizer.apply_chat_template([{"role": "user", "content": rec["prompt"]}], tokenize=True,
                                             return_dict=False, add_generation_prompt=True))


def test_too_long_prompts_clipped_or_skipped_and_counted(chain_ckpt, tokenizer, tmp_path, capsys):
    """The first three prompts have 50, 57 and 109 tokens. With a model length of 59 and
    --max_tokens 9: the first fits; the second is clipped to 59 - 57 = 2 new tokens (the
    chain's answer stops short: "Hello world" without its <|im_end|>); the third has no
    room at all and is skipped: named, recorded with an empty answer, scored as failed,
    counted in summary.json. With --too_long skip the second is skipped as well."""
    p = first_prompts(3)
    assert [prompt_tokens(tokenizer, r) for r in p] == [50, 57, 109]
    ckpt = chain_with_length(chain_ckpt, tmp_path / "short-model", 59)
    res = run_main(ckpt, tmp_path / "clip", "--limit", "3", "--max_tokens", "9")
    err = capsys.readouterr().err
    assert f"prompt key {p[1]['key']}: 57 prompt tokens + --max_tokens 9 > 59 (model length): clipped to 2" in err
    assert f"prompt key {p[2]['key']}: 109 prompt tokens + --max_tokens 9 > 59 (model length): skipped" in err
    recs = {r["key"]: r for r in read_jsonl(tmp_path / "clip" / "responses_short-model.jsonl")}
    assert recs[p[0]["key"]]["response"] == "Hello world" and "max_new_tokens" not in recs[p[0]["key"]]
    assert (recs[p[1]["key"]]["response"], recs[p[1]["key"]]["num_tokens"], recs[p[1]["key"]]["finish_reason"],
            recs[p[1]["key"]]["max_new_tokens"]) == ("Hello world", 2, "length", 2)
    assert (recs[p[2]["key"]]["response"], recs[p[2]["key"]]["finish_reason"]) == ("", "too_long")
    s = res["summary"]
    assert s["num_prompts"] == 3 and s["too_long"] == "clip"
    assert (s["clipped_too_long_keys"], s["skipped_too_long_keys"]) == ([p[1]["key"]], [p[2]["key"]])
    strict = {r["key"]: r for r in read_jsonl(tmp_path / "clip" / "eval_results_strict.jsonl")}
    assert strict[p[2]["key"]]["follow_instruction_list"] == [False] * len(p[2]["instruction_id_list"])
    # A rerun resumes the skipped prompt as settled (nothing to generate) ...
    assert run_main(ckpt, tmp_path / "clip", "--limit", "3", "--max_tokens", "9")["stats"]["generated"] == 0
    # ... and another policy on the same file is another setting.
    with pytest.raises(SystemExit, match="too_long: file 'clip' vs now 'skip'"):
        run_main(ckpt, tmp_path / "clip", "--limit", "3", "--max_tokens", "9", "--too_long", "skip")

    res = run_main(ckpt, tmp_path / "skip", "--limit", "3", "--max_tokens", "9", "--too_long", "skip")
    assert res["stats"]["generated"] == 1
    assert res["summary"]["skipped_too_long_keys"] == sorted([p[1]["key"], p[2]["key"]])
    assert res["summary"]["num_clipped_too_long"] == 0


# ------------------------------------------------------------ one run per folder, clear errors
def test_second_run_in_a_results_folder_is_refused(chain_ckpt, tmp_path):
    """While a run holds the results folder, another is refused before it reads or writes
    anything there, with a one-line error naming the first."""
    out = tmp_path / "res"
    with folder_lock(out, "IFEval run"):
        with pytest.raises(SystemExit, match=rf"^\[ifeval\] error: IFEval run {out} is in use by pid "):
            run_main(chain_ckpt, out, "--limit", "2", "--max_tokens", "20")
    assert sorted(f.name for f in out.iterdir()) == [".writer.lock"]
    run_main(chain_ckpt, out, "--limit", "2", "--max_tokens", "20")  # free again


def test_answered_twice_is_a_one_line_error(chain_ckpt, tmp_path):
    """What two runs writing one file at once left behind (before the lock): every rerun
    stops with one line naming the file, the line and the key, and what to do."""
    p = first_prompts(2)
    run_main(chain_ckpt, tmp_path, "--limit", "2", "--max_tokens", "20", "--mode", "inference")
    rfile = tmp_path / "responses_chain-model.jsonl"
    rfile.write_text(rfile.read_text() + json.dumps({"key": p[1]["key"], "prompt": p[1]["prompt"],
                                                     "response": "again"}) + "\n")
    for mode in ("all", "eval"):
        with pytest.raises(SystemExit) as e:
            run_main(chain_ckpt, tmp_path, "--limit", "2", "--max_tokens", "20", "--mode", mode)
        msg = str(e.value)
        assert msg.startswith("[ifeval] error: ") and "\n" not in msg
        assert f"{rfile}:3" in msg and f"key {p[1]['key']}" in msg


def test_failed_engine_start_writes_nothing(chain_ckpt, tmp_path, monkeypatch):
    """An engine that does not start: a one-line error, and no response file or sidecar."""
    from smolsft.generation.engines import EngineStartError

    def no_engine(*a, **k):
        raise EngineStartError("the vLLM engine did not start (ValueError: To serve at least one request ...)")

    from smolsft.generation import answering

    monkeypatch.setattr(answering, "generate_vllm", no_engine)
    monkeypatch.setattr(ri, "engine_version", lambda backend: "vllm 0.32.0")
    with pytest.raises(SystemExit, match=r"^\[ifeval\] error: the vLLM engine did not start"):
        ri.main(["--model_path", str(chain_ckpt), "--output_dir", str(tmp_path / "o"), "--backend", "vllm",
                 "--limit", "2", "--max_tokens", "20"])
    assert sorted(f.name for f in (tmp_path / "o").iterdir()) == [".writer.lock"]
