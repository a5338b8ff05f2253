"""scripts/demo.sh: its wiring, fast, with stand-ins for ifeval/run.sh and scripts/sft.sh
(which stages run with which arguments, and the summary the real smolsft/report/reports.py and compare.py
make of their folders); and end to end in its reduced CI form: real SmolLM2-135M, 2
prompts, 16 new tokens, 2 training steps. The report, the loss curve and the before/after
summaries must exist and carry numbers."""
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import script_env

# Every test here runs a shell script or a CLI in a subprocess.
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
METRICS = ["prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc", "inst_level_loose_acc"]


def test_help_and_bad_argument():
    r = subprocess.run(["bash", "scripts/demo.sh", "--help"], cwd=REPO, capture_output=True, text=True, env=script_env())
    assert r.returncode == 0 and "--full" in r.stdout and "DEMO_PROMPTS" in r.stdout
    r = subprocess.run(["bash", "scripts/demo.sh", "--bogus"], cwd=REPO, capture_output=True, text=True, env=script_env())
    assert r.returncode == 2 and "unknown argument" in r.stderr


# ifeval/run.sh stand-in: logs its arguments and writes a summary.json whose benchmark is
# the one the arguments ask for, and per-prompt records (one instruction per prompt; prompt i
# passes when first <= i < last). Prompt-level strict, passed/prompts: IFEval 19/100 -> 29/100
# (prompts 0-18 -> 2-30: 12 fixed, 2 broken), IFBench 5/50 -> 3/50 (0-4 -> 2-4: 0 fixed, 2 broken).
STUB_RUN = r"""#!/usr/bin/env bash
set -eu
model=$1 out=$2; shift 2
echo "$model $out $*" >> "$CALLS"
bench=ifeval; [[ " $* " == *" --benchmark ifbench "* ]] && bench=ifbench
case "$(basename "$out")" in
  ifeval_base) acc=0.19 n=100 first=0 last=19 ;; ifeval_sft) acc=0.29 n=100 first=2 last=31 ;;
  ifbench_base) acc=0.1 n=50 first=0 last=5 ;; ifbench_sft) acc=0.06 n=50 first=2 last=5 ;;
  ifeval_sft_seed*) acc=0.25 n=100 first=0 last=25 ;;
esac
mkdir -p "$out"
for mode in strict loose; do
  for ((i = 0; i < n; i++)); do
    ok=false; (( i >= first && i < last )) && ok=true
    echo "{\"key\": $i, \"instruction_id_list\": [\"t:$bench\"], \"follow_instruction_list\": [$ok], \"follow_all_instructions\": $ok}"
  done > "$out/eval_results_$mode.jsonl"
done
printf '{"benchmark": "%s", "prompt_set": "%s.jsonl", "prompt_level_strict_acc": %s, "inst_level_strict_acc": %s, "prompt_level_loose_acc": %s,
 "inst_level_loose_acc": %s, "num_prompts": %s, "per_instruction_type": {"t:%s": {"count": 2, "strict_correct": 1,
 "loose_correct": 1, "strict_acc": 0.5, "loose_acc": 0.5}}}' "$bench" $bench $acc $acc $acc $acc $n $bench > "$out/summary.json"
"""
STUB_SFT = r"""#!/usr/bin/env bash
mkdir -p "$OUTPUTPATH/$RUNNAME"
echo '{"log_history": [{"step": 1, "loss": 2.0}]}' > "$OUTPUTPATH/$RUNNAME/trainer_state.json"
"""


@pytest.fixture
def stub_repo(tmp_path):
    """A copy of demo.sh with the real library (smolsft/) and compare.py, and stand-ins for the
    runner and the training script (nothing generates or trains)."""
    root = tmp_path / "repo"
    shutil.copytree(REPO / "smolsft", root / "smolsft", ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("scripts/demo.sh", "scripts/demo_args.sh", "ifeval/__init__.py", "ifeval/compare.py"):
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / f, root / f)
    (root / "ifeval" / "run.sh").write_text(STUB_RUN)
    (root / "scripts" / "sft.sh").write_text(STUB_SFT)
    return root


def stub_demo(root, tmp_path, *args, **knobs):
    out, calls = tmp_path / "out", tmp_path / "calls.txt"
    env = script_env(DEMO_OUT=str(out), DEMO_SKIP_CHECKS="1", CALLS=str(calls), **knobs)
    r = subprocess.run(["bash", "scripts/demo.sh", *args], cwd=root, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    return out, calls.read_text().splitlines()


def test_demo_scores_ifbench_too(stub_repo, tmp_path):
    out, calls = stub_demo(stub_repo, tmp_path)
    o = str(out)
    assert calls == [
        f"SmolLM2-135M {o}/ifeval_base --input_data ifeval/data/sampled_input_data.jsonl --max_tokens 256",
        f"SmolLM2-135M {o}/ifbench_base --benchmark ifbench --max_tokens 256 --limit 50",
        f"{o}/ckpt/demo {o}/ifeval_sft --input_data ifeval/data/sampled_input_data.jsonl --max_tokens 256",
        f"{o}/ckpt/demo {o}/ifbench_sft --benchmark ifbench --max_tokens 256 --limit 50"]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["stage_seconds"]) == {"ifeval_base", "ifbench_base", "train", "ifeval_sft", "ifbench_sft",
                                             "report", "total"}
    assert summary["ifbench"]["sft"]["prompt_level_strict_acc"] == 0.06
    md = (out / "summary.md").read_text()
    assert "## IFEval" in md and "## IFBench\n\nPrompts: first 50 of `ifbench.jsonl` (50 scored)." in md
    # IFEval 12 fixed, 2 broken of 100 (exact McNemar p = 2 * 106 / 2**14 = 0.013): improved;
    # IFBench 0 fixed, 2 broken of 50 (p = 0.5): no change detectable, so no verdict either way
    assert ("**IFEval gain carried over to IFBench: not measurable** (IFEval improved, but no IFBench change is "
            "detectable). Prompt-level strict, paired over the same prompts: IFEval: improved (+10.0 points, "
            "95% CI [") in md
    assert "p = 0.013) (12 fixed, 2 broken of 100); IFBench: no change detectable with 50 prompts" in md
    assert "rose" not in md
    assert (out / "report" / "ifbench_compare.md").read_text().startswith("# IFBench comparison")
    assert (out / "report" / "ifeval_compare.md").read_text().startswith("# IFEval comparison")


def test_precision_reaches_generation_and_training(stub_repo, tmp_path):
    """PRECISION governs the whole demo: every run.sh call gets --precision, and sft.sh
    sees the variable (the stand-in records it)."""
    (stub_repo / "scripts" / "sft.sh").write_text(STUB_SFT + 'echo "sft.sh PRECISION=$PRECISION" >> "$CALLS"\n')
    out, calls = stub_demo(stub_repo, tmp_path, PRECISION="fp32")
    runs = [c for c in calls if not c.startswith("sft.sh")]
    assert len(runs) == 4 and all(c.endswith(" --precision fp32") for c in runs), runs
    assert "sft.sh PRECISION=fp32" in calls


def test_demo_full_scores_all_of_ifbench(stub_repo, tmp_path):
    data = tmp_path / "smoltalk.json"
    data.write_text("[]")
    out, calls = stub_demo(stub_repo, tmp_path, "--full", DEMO_DATA=str(data))
    assert calls[1] == f"SmolLM2-135M {out}/ifbench_base --benchmark ifbench --max_tokens 1024 --limit 294"


def test_demo_without_ifbench(stub_repo, tmp_path):
    out, calls = stub_demo(stub_repo, tmp_path, DEMO_IFBENCH_PROMPTS="0")
    assert [c.split()[1] for c in calls] == [f"{out}/ifeval_base", f"{out}/ifeval_sft"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ifbench"] is None and summary["carried_over"] is None
    assert "IFBench" not in (out / "summary.md").read_text()
    assert not (out / "report" / "ifbench_compare.md").exists()


def test_reduced_demo_end_to_end(tmp_path, tiny_llama_dir):
    out = tmp_path / "demo"
    # Generation through transformers: four vLLM starts would cost minutes, and vLLM itself
    # runs the same CLI in tests/generation/test_vllm_engine.py. The session's tiny Llama stands in for
    # SmolLM2-135M: what is checked here is the pipeline, not the scores; one training rank
    # (ZeRO-2 over two ranks is tests/scripts/test_sft_sh.py's).
    env = script_env(DEMO_OUT=str(out), DEMO_PROMPTS="2", DEMO_MAX_TOKENS="16", DEMO_STEPS="2", CPU_RANKS="1",
                     DEMO_MAXLEN="256", DEMO_TOTALBSZ="2", DEMO_BSZPERDEV="1", DEMO_IFBENCH_PROMPTS="2",
                     DEMO_MODEL=str(tiny_llama_dir), IFEVAL_BACKEND="hf")
    r = subprocess.run(["bash", "scripts/demo.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    assert "demo finished" in r.stdout

    summary = json.loads((out / "summary.json").read_text())
    for part in (summary, summary["ifbench"]):
        for side in ("base", "sft"):
            for m in METRICS:
                assert 0.0 <= part[side][m] <= 1.0
    for side in ("ifeval_base", "ifeval_sft", "ifbench_base", "ifbench_sft"):
        s = json.loads((out / side / "summary.json").read_text())
        assert s["num_prompts"] == 2 and s["benchmark"] == side.split("_")[0]
        assert set(METRICS) <= set(s)
    assert summary["carried_over"]["verdict"] in ("yes", "no", "not measurable", "no IFEval gain")
    # stage timings: every stage ran and was timed
    assert set(summary["stage_seconds"]) >= {"checks", "ifeval_base", "ifbench_base", "train", "ifeval_sft",
                                             "ifbench_sft", "report", "total"}
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
        ci = r"\[\d\.\d{4}, \d\.\d{4}\]"  # every score with its 95% interval
        assert len(re.findall(rf"\| {m} \| \d\.\d{{4}} {ci} \| \d\.\d{{4}} {ci} \| [+-]\d\.\d{{4}} \| \d+ / \d+ \|",
                              md)) == 2, m
    assert "| train | " in md


def test_seeds_train_and_score_each_seed_then_show_the_spread(stub_repo, tmp_path):
    """SEEDS=3: the demo's run (the default seed) and seeds 43 and 44, each trained with
    --seed and scored on IFEval only; the summary has the training-noise section."""
    (stub_repo / "scripts" / "sft.sh").write_text(STUB_SFT + 'echo "sft.sh $RUNNAME $*" >> "$CALLS"\n')
    out, calls = stub_demo(stub_repo, tmp_path, SEEDS="3", DEMO_IFBENCH_PROMPTS="0")
    trains = [c for c in calls if c.startswith("sft.sh")]
    assert [t.split()[1] for t in trains] == ["demo", "demo_seed43", "demo_seed44"]
    assert "--seed" not in trains[0] and " --seed 43 " in trains[1] and " --seed 44 " in trains[2]
    scored = [c.split()[1] for c in calls if not c.startswith("sft.sh")]
    assert scored == [f"{out}/ifeval_base", f"{out}/ifeval_sft", f"{out}/ifeval_sft_seed43", f"{out}/ifeval_sft_seed44"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"]["spread"]["seeds"] == 3 and summary["seeds"]["spread"]["min"] == 0.25
    assert "## Training noise: 3 seeds" in (out / "summary.md").read_text()


def test_bad_seeds_are_refused_at_once(stub_repo, tmp_path):
    r = subprocess.run(["bash", "scripts/demo.sh"], cwd=stub_repo, capture_output=True, text=True,
                       env=script_env(SEEDS="0", DEMO_OUT=str(tmp_path / "out"), CALLS=str(tmp_path / "c")))
    assert r.returncode == 2 and "demo.sh: SEEDS '0': expected an integer >= 1" in r.stderr
    assert not (tmp_path / "c").exists()
