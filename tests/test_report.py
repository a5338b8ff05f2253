"""report.py: the training curve read from trainer_state.json, and the demo's summary
(summary.md / summary.json) rendered by its CLI from a demo folder written by hand."""
import json
import subprocess
import sys

import pytest

import report
from utils import REPO_ROOT

HISTORY = [
    {"step": 1, "loss": 2.5, "learning_rate": 1e-5, "epoch": 0.1},
    {"step": 2, "loss": 2.25, "learning_rate": 2e-5, "epoch": 0.2},
    {"step": 2, "eval_loss": 2.4, "epoch": 0.2},                      # not a training point
    {"step": 3, "loss": 2.0, "learning_rate": 1.5e-5, "epoch": 0.3},
    {"step": 3, "train_runtime": 9.0, "train_loss": 2.25, "epoch": 0.3},  # summary, skipped
]


def write_state(folder, history=HISTORY):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 3, "log_history": history}))
    return folder


def test_read_curve_keeps_training_points(tmp_path):
    steps, losses, lrs = report.read_curve(write_state(tmp_path / "run"))
    assert steps == [1, 2, 3] and losses == [2.5, 2.25, 2.0] and lrs == [1e-5, 2e-5, 1.5e-5]
    assert report.logged_losses(tmp_path / "run") == [2.5, 2.25, 2.0]


def test_missing_state_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no trainer_state.json"):
        report.read_curve(tmp_path)
    assert report.logged_losses(tmp_path) == []


def summary(acc, per_type, num_prompts=4):
    """A summary.json as ifeval/scoring.py writes it, reduced to what the report reads."""
    return {"prompt_level_strict_acc": acc[0], "inst_level_strict_acc": acc[1], "prompt_level_loose_acc": acc[2],
            "inst_level_loose_acc": acc[3], "num_prompts": num_prompts,
            "per_instruction_type": {k: {"count": n, "strict_correct": c} for k, (c, n) in per_type.items()}}


def demo_folder(out):
    for name, s in (("ifeval_base", summary([0.25, 0.5, 0.5, 0.5], {"a:x": (1, 3), "b:y": (2, 3)})),
                    ("ifeval_sft", summary([0.75, 0.625, 0.75, 0.75], {"a:x": (3, 3), "c:z": (1, 2)}))):
        (out / name).mkdir(parents=True)
        (out / name / "summary.json").write_text(json.dumps(s))
    write_state(out / "ckpt" / "demo")
    (out / "ckpt" / "demo" / "loss_curve.png").write_bytes(b"png")
    (out / "report").mkdir()
    (out / "report" / "ifeval_compare.md").write_text("# r\n")
    (out / "stage_times.tsv").write_text("checks\t3\nifeval_base\t10\ntrain\t20\ntotal\t33\n")
    return out


def test_demo_summary_cli(tmp_path):
    out = demo_folder(tmp_path / "demo")
    r = subprocess.run([sys.executable, str(REPO_ROOT / "report.py"), "demo-summary", str(out), "--prompt_set",
                        "p.jsonl", "--prompts", "4", "--max_tokens", "16", "--data", "d.json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    o = str(out)
    want = f"""# Demo summary

Mode: CPU demo; prompts: first 4 of `p.jsonl` (4 scored), max_tokens 16; training data `d.json`.

| metric | base | fine-tuned | change |
|---|---|---|---|
| prompt_level_strict_acc | 0.2500 | 0.7500 | +0.5000 |
| inst_level_strict_acc | 0.5000 | 0.6250 | +0.1250 |
| prompt_level_loose_acc | 0.5000 | 0.7500 | +0.2500 |
| inst_level_loose_acc | 0.5000 | 0.7500 | +0.2500 |

Per instruction type (strict, passed/total):

| instruction | base | fine-tuned | change |
|---|---|---|---|
| a:x | 1/3 | 3/3 | +2 |
| b:y | 2/3 | 0/0 | -2 |
| c:z | 0/0 | 1/2 | +1 |

Training: 3 logged losses, first 2.5000, last 2.0000

| stage | seconds |
|---|---|
| checks | 3 |
| ifeval_base | 10 |
| train | 20 |
| total | 33 |

Files:
- report: {o}/report/ifeval_compare.md
- loss curve: {o}/ckpt/demo/loss_curve.png
- IFEval summaries: {o}/ifeval_base/summary.json, {o}/ifeval_sft/summary.json
- fine-tuned checkpoint: {o}/ckpt/demo
"""
    assert (out / "summary.md").read_text() == want
    assert r.stdout.startswith(want) and "wrote" in r.stdout.splitlines()[-1]
    got = json.loads((out / "summary.json").read_text())
    assert got["base"]["inst_level_strict_acc"] == 0.5 and got["sft"]["prompt_level_strict_acc"] == 0.75
    assert got["per_type_strict"] == {"a:x": {"base": [1, 3], "sft": [3, 3]}, "b:y": {"base": [2, 3], "sft": None},
                                      "c:z": {"base": None, "sft": [1, 2]}}
    assert got["stage_seconds"] == {"checks": 3, "ifeval_base": 10, "train": 20, "total": 33}
    assert got["losses"] == [2.5, 2.25, 2.0]
    assert got["report"] == [f"{o}/report/ifeval_compare.md"] and got["loss_curve"] == [f"{o}/ckpt/demo/loss_curve.png"]


def test_demo_summary_names_a_missing_summary(tmp_path):
    out = demo_folder(tmp_path / "demo")
    (out / "ifeval_sft" / "summary.json").unlink()
    with pytest.raises(SystemExit, match=r"ifeval_sft/summary\.json: missing"):
        report.main(["demo-summary", str(out), "--full", "--prompt_set", "p", "--max_tokens", "8", "--data", "d"])
    assert not (out / "summary.md").exists()
