"""smolsft/report/reports.py: the training curve read from trainer_state.json, and the demo's summary
(summary.md / summary.json) rendered by its CLI from a demo folder written by hand."""
import json
import subprocess
import sys

import pytest

from smolsft.report import reports as report
from smolsft.files import REPO_ROOT

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


def summary(acc, per_type, num_prompts=4, benchmark=None):
    """A summary.json as ifeval/scoring.py writes it, reduced to what the report reads
    (benchmark None: no field, as in summaries written before IFBench)."""
    s = {"prompt_level_strict_acc": acc[0], "inst_level_strict_acc": acc[1], "prompt_level_loose_acc": acc[2],
         "inst_level_loose_acc": acc[3], "num_prompts": num_prompts,
         "per_instruction_type": {k: {"count": n, "strict_correct": c} for k, (c, n) in per_type.items()}}
    return s if benchmark is None else {"benchmark": benchmark, **s}


# IFBench, 10 prompts: base passes 1, fine-tuned 4 (strict, prompt level).
IFBENCH_BASE = summary([0.1, 0.2, 0.2, 0.3], {"count:conjunctions": (1, 5), "words:odd": (1, 5)}, 10, "ifbench")
IFBENCH_SFT = summary([0.4, 0.5, 0.4, 0.5], {"count:conjunctions": (4, 5), "words:odd": (1, 5)}, 10, "ifbench")


def demo_folder(out, ifbench=False):
    runs = [("ifeval_base", summary([0.25, 0.5, 0.5, 0.5], {"a:x": (1, 3), "b:y": (2, 3)})),
            ("ifeval_sft", summary([0.75, 0.625, 0.75, 0.75], {"a:x": (3, 3), "c:z": (1, 2)}))]
    if ifbench:
        runs += [("ifbench_base", dict(IFBENCH_BASE, prompt_set="IFBench_test.jsonl")), ("ifbench_sft", IFBENCH_SFT)]
    for name, s in runs:
        (out / name).mkdir(parents=True)
        (out / name / "summary.json").write_text(json.dumps({**s, "dtype": "bfloat16"}))
    write_state(out / "ckpt" / "demo")
    (out / "ckpt" / "demo" / "run_plan.json").write_text(json.dumps({"plan": {"precision": "bf16"}, "data_path": "d.json"}))
    (out / "ckpt" / "demo" / "loss_curve.png").write_bytes(b"png")
    (out / "report").mkdir()
    (out / "report" / "ifeval_compare.md").write_text("# r\n")
    (out / "stage_times.tsv").write_text("checks\t3\nifeval_base\t10\ntrain\t20\ntotal\t33\n")
    return out


IFEVAL_PART = """## IFEval

Prompts: first 4 of `p.jsonl` (4 scored).

| metric | base [95% CI] | fine-tuned [95% CI] | change | fixed / broken | p | reading |
|---|---|---|---|---|---|---|
| prompt_level_strict_acc | 0.2500 | 0.7500 | +0.5000 | - | - | no paired test |
| inst_level_strict_acc | 0.5000 | 0.6250 | +0.1250 | - | - | no paired test |
| prompt_level_loose_acc | 0.5000 | 0.7500 | +0.2500 | - | - | no paired test |
| inst_level_loose_acc | 0.5000 | 0.7500 | +0.2500 | - | - | no paired test |

Per instruction type (strict, passed/total):

| instruction | base | fine-tuned | change |
|---|---|---|---|
| a:x | 1/3 | 3/3 | +2 |
| b:y | 2/3 | 0/0 | -2 |
| c:z | 0/0 | 1/2 | +1 |
"""

TRAINING_PART = """## Training and time

Training: 3 logged losses, first 2.5000, last 2.0000

| stage | seconds |
|---|---|
| checks | 3 |
| ifeval_base | 10 |
| train | 20 |
| total | 33 |
"""


def run_cli(out, *extra):
    return subprocess.run([sys.executable, "-m", "smolsft.report.reports", "demo-summary", str(out), "--prompt_set",
                           "p.jsonl", "--prompts", "4", "--max_tokens", "16", "--data", "d.json", *extra],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_demo_summary_cli(tmp_path):
    out = demo_folder(tmp_path / "demo")
    r = run_cli(out)
    assert r.returncode == 0, r.stderr
    o = str(out)
    want = f"""# Demo summary

Mode: CPU demo; max_tokens 16; training data `d.json`; benchmarks: IFEval; precision: training bf16, generation bfloat16.

{IFEVAL_PART}
{TRAINING_PART}
Files:
- reports: {o}/report/ifeval_compare.md
- loss curve: {o}/ckpt/demo/loss_curve.png
- summaries: {o}/ifeval_base/summary.json, {o}/ifeval_sft/summary.json
- fine-tuned checkpoint: {o}/ckpt/demo
"""
    assert (out / "summary.md").read_text() == want
    assert r.stdout.startswith(want) and "wrote" in r.stdout.splitlines()[-1]
    got = json.loads((out / "summary.json").read_text())
    assert got["base"]["inst_level_strict_acc"] == 0.5 and got["sft"]["prompt_level_strict_acc"] == 0.75
    assert got["per_type_strict"] == {"a:x": {"base": [1, 3], "sft": [3, 3]}, "b:y": {"base": [2, 3], "sft": None},
                                      "c:z": {"base": None, "sft": [1, 2]}}
    assert got["ifbench"] is None and got["carried_over"] is None
    assert got["stage_seconds"] == {"checks": 3, "ifeval_base": 10, "train": 20, "total": 33}
    assert got["losses"] == [2.5, 2.25, 2.0]
    assert got["report"] == [f"{o}/report/ifeval_compare.md"] and got["loss_curve"] == [f"{o}/ckpt/demo/loss_curve.png"]
    assert got["precision"] == {"training": "bf16", "generation": "bfloat16"}


@pytest.mark.slow
def test_demo_summary_both_benchmarks_side_by_side(tmp_path):
    out = demo_folder(tmp_path / "demo", ifbench=True)
    r = run_cli(out, "--ifbench_prompts", "10")
    assert r.returncode == 0, r.stderr
    o = str(out)
    # Summaries without per-prompt records (written by hand, as older runs were): no paired
    # test, so no verdict beyond "not measurable".
    want = f"""# Demo summary

Mode: CPU demo; max_tokens 16; training data `d.json`; benchmarks: IFEval, IFBench; precision: training bf16, generation bfloat16.

{IFEVAL_PART}
## IFBench

Prompts: first 10 of `IFBench_test.jsonl` (10 scored).

| metric | base [95% CI] | fine-tuned [95% CI] | change | fixed / broken | p | reading |
|---|---|---|---|---|---|---|
| prompt_level_strict_acc | 0.1000 | 0.4000 | +0.3000 | - | - | no paired test |
| inst_level_strict_acc | 0.2000 | 0.5000 | +0.3000 | - | - | no paired test |
| prompt_level_loose_acc | 0.2000 | 0.4000 | +0.2000 | - | - | no paired test |
| inst_level_loose_acc | 0.3000 | 0.5000 | +0.2000 | - | - | no paired test |

Per instruction type (strict, passed/total):

| instruction | base | fine-tuned | change |
|---|---|---|---|
| count:conjunctions | 1/5 | 4/5 | +3 |
| words:odd | 1/5 | 1/5 | +0 |

## Did the IFEval gain carry over?

**IFEval gain carried over to IFBench: not measurable** (no per-prompt records to pair). Prompt-level strict, \
paired over the same prompts: IFEval: untested; IFBench: untested. A change counts only where its 95% interval \
excludes zero.

{TRAINING_PART}
Files:
- reports: {o}/report/ifeval_compare.md
- loss curve: {o}/ckpt/demo/loss_curve.png
- summaries: {o}/ifeval_base/summary.json, {o}/ifeval_sft/summary.json, {o}/ifbench_base/summary.json, \
{o}/ifbench_sft/summary.json
- fine-tuned checkpoint: {o}/ckpt/demo
"""
    assert (out / "summary.md").read_text() == want
    got = json.loads((out / "summary.json").read_text())
    assert got["base"]["prompt_level_strict_acc"] == 0.25  # IFEval stays at the top level
    assert got["ifbench"]["base"]["prompt_level_strict_acc"] == 0.1
    assert got["ifbench"]["sft"]["inst_level_loose_acc"] == 0.5
    assert got["ifbench"]["per_type_strict"] == {"count:conjunctions": {"base": [1, 5], "sft": [4, 5]},
                                                 "words:odd": {"base": [1, 5], "sft": [1, 5]}}
    assert got["carried_over"]["verdict"] == "not measurable" and got["paired"] is None


def paired(fixed, broken, n, both=0):
    """The prompt-level paired test of n prompts, ``fixed`` fail -> pass, ``broken`` pass -> fail."""
    from smolsft.evaluation import stats

    before = [False] * fixed + [True] * broken + [True] * both
    after = [True] * fixed + [False] * broken + [True] * both
    return stats.paired_prompts(before + [False] * (n - len(before)), after + [False] * (n - len(after)))


@pytest.mark.parametrize("ifeval, ifbench, verdict, why", [
    # issue 37's demo: IFEval 7 fixed / 4 broken of 100 (p = 0.55), IFBench 0 / 3 of 50 (p = 0.25)
    ((7, 4, 100), (0, 3, 50), "not measurable", "no IFEval change is detectable"),
    # fp32: 12 fixed / 2 broken (p = 0.013); IFBench 10 / 0 of 50 (p = 2/1024)
    ((12, 2, 100), (10, 0, 50), "yes", "both improved"),
    ((12, 2, 100), (0, 10, 50), "no", "IFEval improved, IFBench fell"),
    ((12, 2, 100), (0, 3, 50), "not measurable", "IFEval improved, but no IFBench change is detectable"),
    ((2, 12, 100), (10, 0, 50), "no IFEval gain", "IFEval fell"),
])
def test_carried_over_verdicts_follow_the_paired_tests(ifeval, ifbench, verdict, why):
    e, b = paired(*ifeval), paired(*ifbench)
    got, line = report.carried_over(e, b)
    assert got == verdict
    assert f"**IFEval gain carried over to IFBench: {verdict}** ({why}" in line
    assert f"({ifeval[0]} fixed, {ifeval[1]} broken of {ifeval[2]})" in line
    assert f"({ifbench[0]} fixed, {ifbench[1]} broken of {ifbench[2]})" in line
    if verdict == "not measurable" and ifeval == (7, 4, 100):
        assert "IFEval: no change detectable with 100 prompts" in line and "p = 0.55" in line
        assert "IFBench: no change detectable with 50 prompts" in line and "p = 0.25" in line


def test_carried_over_without_records():
    assert report.carried_over(None, paired(10, 0, 50))[0] == "not measurable"


def realistic_demo(out):
    """A demo folder as the demo leaves it (summaries and per-prompt records through
    ifeval/scoring.py's writer): IFEval 23 -> 26 of 100 (7 fixed, 4 broken), IFBench 4 -> 1
    of 50 (0 fixed, 3 broken), the changes issue 37 quotes."""
    from test_compare import fixed_broken, hand_run

    for bench, (f, b, n, both) in (("ifeval", (7, 4, 100, 19)), ("ifbench", (0, 3, 50, 1))):
        before, after = fixed_broken(f, b, n, both)
        types = [f"{bench}{i % 5}:x" for i in range(n)]
        for side, v in (("base", before), ("sft", after)):
            d = hand_run(out / f"{bench}_{side}", v, types, side)
            s = json.loads((d / "summary.json").read_text())
            (d / "summary.json").write_text(json.dumps({**s, "benchmark": bench}))
    write_state(out / "ckpt" / "demo")
    (out / "report").mkdir()
    (out / "stage_times.tsv").write_text("total\t33\n")
    return out


def test_demo_summary_makes_no_claim_its_intervals_do_not_support(tmp_path):
    out = realistic_demo(tmp_path / "demo")
    text, obj = report.demo_summary(str(out), "demo", False, "p.jsonl", 0, 256, "d.json", 50)
    assert "rose" not in text and "fell" not in text.replace("IFEval fell, so", "")
    assert "**IFEval gain carried over to IFBench: not measurable** (no IFEval change is detectable)" in text
    row = next(ln for ln in text.splitlines() if ln.startswith("| prompt_level_strict_acc | 0.2300"))
    assert "| 7 / 4 | 0.55 | no change detectable with 100 prompts" in row and "input_data.jsonl" in row
    row = next(ln for ln in text.splitlines() if ln.startswith("| prompt_level_strict_acc | 0.0800"))
    assert "| 0 / 3 | 0.25 | no change detectable with 50 prompts" in row
    assert "Base: prompt-level strict 23.0%, 95% CI [" in text and "straddles the course threshold of 22%" in text
    assert "Across 5 types tested at 5%, about 0.25 marks are expected by chance alone" in text
    assert obj["paired"]["prompt_level_strict_acc"]["p_value"] == pytest.approx(0.548828125)
    assert obj["ifbench"]["paired"]["prompt_level_strict_acc"]["p_value"] == pytest.approx(0.25)
    assert obj["intervals"]["base"]["prompt_level_strict_acc"]["n"] == 100


def test_one_benchmark():
    old, ifb = summary([0.5] * 4, {}), summary([0.5] * 4, {}, 4, "ifbench")
    assert report.one_benchmark([("a", old), ("b", dict(old, benchmark="ifeval"))]) == "ifeval"  # no field: IFEval
    assert report.one_benchmark([("a", ifb)], expected="ifbench") == "ifbench"
    with pytest.raises(report.ResultError, match=r"different benchmarks cannot be compared: a: IFEval; b: IFBench"):
        report.one_benchmark([("a", old), ("b", ifb)])
    with pytest.raises(report.ResultError, match=r"\(expected IFBench only\): a: IFEval"):
        report.one_benchmark([("a", old)], expected="ifbench")
    with pytest.raises(report.ResultError, match="c: unknown benchmark 'mmlu'"):
        report.one_benchmark([("c", dict(old, benchmark="mmlu"))])


def test_demo_summary_names_a_missing_summary(tmp_path):
    out = demo_folder(tmp_path / "demo")
    (out / "ifeval_sft" / "summary.json").unlink()
    with pytest.raises(SystemExit, match=r"ifeval_sft/summary\.json: missing"):
        report.main(["demo-summary", str(out), "--full", "--prompt_set", "p", "--max_tokens", "8", "--data", "d"])
    assert not (out / "summary.md").exists()
    with pytest.raises(SystemExit, match=r"d2/ifbench_base: not a folder"):  # asked for, not run
        report.main(["demo-summary", str(demo_folder(tmp_path / "d2")), "--prompt_set", "p", "--max_tokens", "8",
                     "--data", "d", "--ifbench_prompts", "5"])


def test_demo_summary_refuses_a_run_of_the_other_benchmark(tmp_path):
    out = demo_folder(tmp_path / "demo", ifbench=True)
    (out / "ifeval_sft" / "summary.json").write_text(json.dumps(IFBENCH_SFT))  # IFBench run in the IFEval slot
    with pytest.raises(SystemExit, match=r"expected IFEval only\): .*ifeval_base: IFEval; .*ifeval_sft: IFBench"):
        report.main(["demo-summary", str(out), "--prompt_set", "p", "--max_tokens", "8", "--data", "d",
                     "--ifbench_prompts", "10"])
    assert not (out / "summary.md").exists()


def test_seeds_put_training_noise_beside_the_evaluation_interval(tmp_path):
    """SEEDS=3: the demo's own run (seed 42) and seeds 43, 44 each scored on IFEval; the
    summary gives each seed's paired test against the base and their spread. Base 20/100;
    the seeds pass 26, 30 and 22 (fixed 6, 10, 2 of the base's failures, nothing broken)."""
    from test_compare import fixed_broken, hand_run

    out = realistic_demo(tmp_path / "demo")
    types = ["a:x"] * 100
    before, _ = fixed_broken(0, 0, 100, 20)
    hand_run(out / "ifeval_base", before, types, "base")
    for folder, fixed in (("ifeval_sft", 6), ("ifeval_sft_seed43", 10), ("ifeval_sft_seed44", 2)):
        hand_run(out / folder, [True] * (20 + fixed) + [False] * (80 - fixed), types, folder)
    text, obj = report.demo_summary(str(out), "demo", False, "p.jsonl", 0, 256, "d.json", 0, seeds=3)
    assert "## Training noise: 3 seeds" in text
    rows = [ln for ln in text.splitlines() if ln.startswith("| 4")]
    assert [r.split(" | ")[0] for r in rows] == ["| 42", "| 43", "| 44"]
    assert "| 43 | 0.3000 [" in rows[1] and "| 10 / 0 | +10.0 " in rows[1]
    assert "| 44 | 0.2200 [" in rows[2] and "| 2 / 0 | +2.0 " in rows[2]
    spread = obj["seeds"]["spread"]
    assert spread["seeds"] == 3 and spread["mean"] == pytest.approx(0.26)
    assert spread["sd"] == pytest.approx(0.04) and (spread["min"], spread["max"]) == (0.22, 0.30)
    assert 0.08 < spread["eval_half_width"] < 0.10  # Wilson at 30/100: [0.219, 0.396]
    assert "Across seeds: mean 0.2600, SD 0.0400, range 0.2200-0.3000 (width 0.0800)" in text
    assert [r["seed"] for r in obj["seeds"]["runs"]] == [42, 43, 44]
    one, obj1 = report.demo_summary(str(out), "demo", False, "p.jsonl", 0, 256, "d.json", 0)
    assert "Training noise" not in one and obj1["seeds"] is None


def test_a_missing_seed_run_is_named(tmp_path):
    out = demo_folder(tmp_path / "demo")
    with pytest.raises(report.ResultError, match="ifeval_sft_seed43"):
        report.demo_summary(str(out), "demo", False, "p.jsonl", 4, 16, "d.json", 0, seeds=2)
