"""scripts/gpu_check.sh (made for GPU machines; here: its arguments, its refusal without
a GPU, the plan a dry run prints) and scripts/random_model.py (the offline model)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from smolsft.files import REPO_ROOT

# Every test here runs a shell script or a CLI in a subprocess.
pytestmark = pytest.mark.slow

SCRIPT = REPO_ROOT / "scripts" / "gpu_check.sh"


def run(args, **env):
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


def test_help_and_bad_arguments():
    h = run(["--help"])
    assert h.returncode == 0 and "--random-weights" in h.stdout and "1024 new tokens" in h.stdout
    bad = run(["--bogus"])
    assert bad.returncode == 2 and "unknown argument --bogus" in bad.stderr
    assert run(["--dry-run"], GPU_CHECK_STEPS="0").returncode == 2


def test_refuses_without_gpu_and_dry_run_plan(tmp_path):
    # No nvidia-smi on this PATH. The venv's bin folder as it is (not resolved, not a symlink to
    # its python elsewhere): its python must find the venv's pyvenv.cfg beside it.
    no_gpu = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    r = run([], **no_gpu)
    assert r.returncode == 1 and "no GPU" in r.stderr
    d = run(["--dry-run", "--skip-setup", "--random-weights"], GPU_CHECK_OUT=str(tmp_path / "o"), **no_gpu)
    assert d.returncode == 0, d.stderr
    lines = [x for x in d.stdout.splitlines() if x.startswith("+ ")]
    assert "scripts/random_model.py" in lines[1]
    assert "bash scripts/sft.sh --max_steps 20" in lines[2] and f"MODELPATH={tmp_path}/o/smollm2-random" in lines[2]
    # the backend is the one rule's (engines.pick_backend), not a bash check of `import vllm`
    assert lines[3].endswith("--input_data ifeval/data/sampled_input_data.jsonl --max_tokens 1024 --backend auto")
    assert not (tmp_path / "o").exists()  # nothing ran


def test_random_model_tiny(tmp_path, model_dir):
    r = subprocess.run([__import__("sys").executable, str(REPO_ROOT / "scripts" / "random_model.py"),
                        str(tmp_path / "m"), "--tiny"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 2 and cfg["vocab_size"] == 49152
    assert (tmp_path / "m" / "tokenizer.json").read_bytes() == (model_dir / "tokenizer.json").read_bytes()
    assert (tmp_path / "m" / "RANDOM_WEIGHTS.md").is_file()


def test_one_summary_reads_the_runs_files_not_a_log(tmp_path):
    """gpu_check.sh and its --bundle mode print one summary (scripts/gpu_check_summary.py), from
    the trainer's files and IFEval's run_info.json; the manifest's flags are read by the one
    precision rule whether they are JSON booleans or the strings a manifest may hold."""
    assert "<<'PYEOF'" not in SCRIPT.read_text() and "gpu_check_summary.py" in SCRIPT.read_text()
    out, ckpt = tmp_path / "o", tmp_path / "o" / "ckpt" / "gpu_check"
    (out / "ifeval").mkdir(parents=True)
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": 20, "log_history": [{"loss": 2.5}, {"loss": 1.25}]}))
    (out / "ifeval" / "summary.json").write_text(json.dumps({
        "num_prompts": 100, "prompt_level_strict_acc": 0.25, "inst_level_strict_acc": 0.5,
        "prompt_level_loose_acc": 0.3, "inst_level_loose_acc": 0.55}))
    (out / "ifeval" / "run_info.json").write_text(json.dumps({
        "device": "cuda", "dtype": "bfloat16", "precision": "bf16", "backend": "vllm", "engine_version": "vllm 0.32.0",
        "generated": 100, "resumed": 0, "tokens": 51200, "seconds": 30.0, "startup_s": 10.0, "tokens_per_s": 2560.0,
        "hit_max_tokens": 7, "max_tokens": 1024}))
    for flags, shown in [({"bf16": "True", "fp16": "False"}, "bf16"), ({"bf16": False, "fp16": True}, "fp16")]:
        (ckpt / "run_manifest.json").write_text(json.dumps({"training_args": flags}))
        r = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "gpu_check_summary.py"), str(out),
                            "--ckpt", str(ckpt), "--times", "5,60,40", "--wall_s", "110", "--note", "RANDOM WEIGHTS"],
                           capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
        assert r.returncode == 0, r.stderr
        lines = {x[:15].strip(): x[15:] for x in r.stdout.splitlines() if not x.startswith("=")}
        assert lines["training"] == f"20 steps, {shown}, loss 2.5000 -> 1.2500, 60s"
        assert lines["IFEval"] == "100 prompts x 1024 tokens, vllm 0.32.0 on cuda, bfloat16, 40s (engine start 10s)"
        assert lines["tokens/s"] == "2560.0 (100 answers, 7 hit the limit)"
        assert lines["metrics"].startswith("prompt strict 0.250 | inst strict 0.500")
        assert lines["time"] == "setup 5s, total 110s" and lines["NOTE"] == "RANDOM WEIGHTS"
