"""vLLM on the CPU with a `scripts/random_model.py --tiny` checkpoint (2 layers, 1 KV head
of 32: 512 bytes of KV cache a token in fp32), through the CLI: one engine start.

Its config's max_position_embeddings is set to 52 tokens, and the first three prompts of
the course set have 50, 57 and 109 tokens: with --max_tokens 9 the first is clipped to
52 - 50 = 2 new tokens (so the engine runs at exactly the model's length: a rule one token
off would make vLLM refuse it) and the other two, longer than the model, are skipped. The
engine then serves a single prompt, the case where a KV cache of one sequence's tokens
(0.00 GiB) was refused because vLLM also holds back one null block. The transformers
backend on the same command must settle the same prompts the same way.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import load_script
from test_run_ifeval import first_prompts, prompt_tokens, read_jsonl
from smolsft.files import REPO_ROOT

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(__import__("importlib").util.find_spec("vllm") is None, reason="vLLM is not installed")]

MODEL_LEN, MAX_TOKENS = 52, 9


@pytest.fixture(scope="module")
def runs(tmp_path_factory, model_dir):
    root = tmp_path_factory.mktemp("tiny")
    ckpt = load_script("scripts/random_model.py").main([str(root / "tiny"), "--tiny"])
    cfg = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**cfg, "max_position_embeddings": MODEL_LEN}))
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "WARNING"}
    out = {}
    for backend in ("vllm", "hf"):
        cmd = [sys.executable, str(REPO_ROOT / "ifeval" / "run_ifeval.py"), "--model_path", str(ckpt),
               "--output_dir", str(root / backend), "--backend", backend, "--limit", "3",
               "--max_tokens", str(MAX_TOKENS)]
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        out[backend] = (r, root / backend)
    return ckpt, out


def test_tiny_model_runs_on_vllm_with_a_clipped_and_two_skipped_prompts(runs, tokenizer):
    ckpt, out = runs
    r, folder = out["vllm"]
    assert r.returncode == 0, r.stderr[-4000:]
    p = first_prompts(3)
    assert [prompt_tokens(tokenizer, x) for x in p] == [50, 57, 109]
    line = next(x for x in r.stderr.splitlines() if x.startswith("[ifeval] engine: vllm"))
    assert "KV cache 0.1 MiB" in line  # two 128-token blocks of 512 bytes a token
    assert f"prompt key {p[0]['key']}: 50 prompt tokens + --max_tokens 9 > 52 (model length): clipped to 2" in r.stderr
    for x, n in ((p[1], 57), (p[2], 109)):
        assert f"prompt key {x['key']}: {n} prompt tokens + --max_tokens 9 > 52 (model length): skipped" in r.stderr
    recs = {x["key"]: x for x in read_jsonl(folder / f"responses_{ckpt.name}.jsonl")}
    assert recs[p[0]["key"]]["max_new_tokens"] == 2 and recs[p[0]["key"]]["num_tokens"] <= 2
    assert [recs[x["key"]]["finish_reason"] for x in p[1:]] == ["too_long", "too_long"]
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["num_prompts"] == 3 and summary["clipped_too_long_keys"] == [p[0]["key"]]
    assert summary["skipped_too_long_keys"] == sorted([p[1]["key"], p[2]["key"]])

    # The clipped answer is transformers' greedy continuation with 2 new tokens (an independent path).
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(ckpt), dtype=torch.float32).eval()
    ids = torch.tensor([tokenizer.apply_chat_template([{"role": "user", "content": p[0]["prompt"]}], tokenize=True,
                                                      return_dict=False, add_generation_prompt=True)])
    with torch.inference_mode():
        new = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=2, do_sample=False,
                             eos_token_id=[2, 0], pad_token_id=0)[0, ids.shape[1]:].tolist()
    body = new[:-1] if new and new[-1] in (0, 2) else new
    assert recs[p[0]["key"]]["response"] == tokenizer.decode(body, skip_special_tokens=True).strip()


def test_transformers_backend_settles_the_same_prompts(runs):
    ckpt, out = runs
    (rv, fv), (rh, fh) = out["vllm"], out["hf"]
    assert rh.returncode == 0, rh.stderr[-3000:]
    name = f"responses_{ckpt.name}.jsonl"
    fields = ("key", "finish_reason", "max_new_tokens", "response")
    v = sorted(tuple(x.get(f) for f in fields) for x in read_jsonl(fv / name))
    h = sorted(tuple(x.get(f) for f in fields) for x in read_jsonl(fh / name))
    assert v == h
