"""scripts/demo.sh end to end in its reduced CI form: real SmolLM2-135M, 2 prompts, 16 new
tokens, 2 training steps. The report, the loss curve and the before/after summaries must
exist and carry numbers."""
import json
import os
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
METRICS = ["prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc", "inst_level_loose_acc"]


def test_help_and_bad_argument():
    r = subprocess.run(["bash", "scripts/demo.sh", "--help"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0 and "--full" in r.stdout and "DEMO_PROMPTS" in r.stdout
    r = subprocess.run(["bash", "scripts/demo.sh", "--bogus"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and "unknown argument" in r.stderr


def test_reduced_demo_end_to_end(tmp_path, model_dir):
    out = tmp_path / "demo"
    env = dict(os.environ, DEMO_OUT=str(out), DEMO_PROMPTS="2", DEMO_MAX_TOKENS="16", DEMO_STEPS="2",
               DEMO_MAXLEN="256", DEMO_TOTALBSZ="2", DEMO_BSZPERDEV="1")
    r = subprocess.run(["bash", "scripts/demo.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    assert "demo finished" in r.stdout

    summary = json.loads((out / "summary.json").read_text())
    for side in ("base", "sft"):
        for m in METRICS:
            assert 0.0 <= summary[side][m] <= 1.0
    for side in ("ifeval_base", "ifeval_sft"):
        s = json.loads((out / side / "summary.json").read_text())
        assert s["num_prompts"] == 2
        assert set(METRICS) <= set(s)
    # stage timings: every stage ran and was timed
    assert set(summary["stage_seconds"]) >= {"checks", "ifeval_base", "train", "ifeval_sft", "report", "total"}
    # two training steps logged a finite loss
    assert summary["losses"] and all(0 < x < 100 for x in summary["losses"])
    # the report and the loss curve exist and are not empty
    assert summary["report"] and summary["loss_curve"]
    report = Path(summary["report"][0]).read_text()
    assert re.search(r"\d+\.\d+", report)
    for png in summary["loss_curve"]:
        assert Path(png).read_bytes()[:4] == b"\x89PNG"
    md = (out / "summary.md").read_text()
    for m in METRICS:
        assert re.search(rf"\| {m} \| \d\.\d{{4}} \| \d\.\d{{4}} \| [+-]\d\.\d{{4}} \|", md), m
    assert "| train | " in md
