"""ifeval/run.sh: usage, --help, defaults, later arguments overriding them, and a real
run from the repository root (chain model) and from ifeval/ (the embedded SmolLM2,
found through the repository root)."""
import json
import subprocess

import pytest

from test_run_ifeval import first_prompts, read_jsonl
from conftest import script_env
from smolsft.files import REPO_ROOT

# Every test here runs a shell script or a CLI in a subprocess.
pytestmark = pytest.mark.slow

RUN_SH = REPO_ROOT / "ifeval" / "run.sh"


def run(args, cwd, timeout=300):
    # One CPU thread: on a busy 2-core machine two OpenMP threads can be several times slower.
    env = script_env(OMP_NUM_THREADS="1")
    return subprocess.run(["bash", str(RUN_SH), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=env)


def test_usage_and_help():
    r = run([], REPO_ROOT)
    assert r.returncode == 2 and "usage: bash ifeval/run.sh MODEL_PATH OUTPUT_DIR" in r.stderr
    for cwd in (REPO_ROOT, REPO_ROOT / "ifeval"):
        h = run(["--help"], cwd)
        assert h.returncode == 0, h.stderr
        assert "--max_tokens 1024" in h.stdout and "--input_response_data" in h.stdout


def test_from_root_defaults_and_overrides(chain_ckpt, tmp_path):
    ckpt = chain_ckpt
    custom = tmp_path / "two.jsonl"
    custom.write_text("".join(json.dumps(p) + "\n" for p in first_prompts(2)))
    out = tmp_path / "out"
    # Defaults first: the 100-prompt set and 1024 tokens (cut to 3 prompts by --limit).
    r = run([str(ckpt), str(out), "--limit", "3", "--backend", "hf"], REPO_ROOT)
    assert r.returncode == 0, r.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["prompt_set"] == "sampled_input_data.jsonl" and s["prompts_in_set"] == 100
    assert s["max_tokens"] == 1024 and s["num_prompts"] == 3
    assert r.stdout.strip().splitlines()[-1].startswith("[ifeval] chain-model | IFEval sampled_input_data.jsonl: 3")
    # Extra arguments come after the defaults and win.
    out2 = tmp_path / "out2"
    r = run([str(ckpt), str(out2), "--input_data", str(custom), "--max_tokens", "8", "--backend", "hf"], REPO_ROOT)
    assert r.returncode == 0, r.stderr
    s = json.loads((out2 / "summary.json").read_text())
    assert s["prompt_set"] == "two.jsonl" and s["num_prompts"] == 2 and s["max_tokens"] == 8


def test_from_ifeval_dir_with_embedded_model(model_dir, tmp_path):
    # "SmolLM2-135M" does not exist under ifeval/: it must be found at the repository root.
    r = run(["SmolLM2-135M", str(tmp_path), "--limit", "2", "--max_tokens", "8", "--backend", "hf"],
            REPO_ROOT / "ifeval")
    assert r.returncode == 0, r.stderr
    for f in ("responses_SmolLM2-135M.jsonl", "eval_results_strict.jsonl", "eval_results_loose.jsonl",
              "summary.json"):
        assert (tmp_path / f).is_file(), f
    assert len(read_jsonl(tmp_path / "responses_SmolLM2-135M.jsonl")) == 2
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["model_path"] == str(model_dir.resolve()) and s["num_prompts"] == 2
    assert "prompt_level_strict_acc" in r.stdout and "inst_level_loose_acc" in r.stdout
