"""ifeval/compare.py on two synthetic result folders written through ifeval/scoring.py's
own write_results, so the inputs have exactly the layout real runs produce."""
import json
import subprocess
import sys

import pytest

from ifeval import compare
from ifeval.scoring import checkers, load_prompts, score, write_results
from smolsft.files import REPO_ROOT

PROMPTS = [
    {"key": 1, "prompt": "Answer in all capital letters.", "instruction_id_list": ["change_case:english_capital"],
     "kwargs": [{}]},
    {"key": 2, "prompt": "Do not use any commas.", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]},
    {"key": 3, "prompt": "End with 'Is there anything else I can help with?'",
     "instruction_id_list": ["startend:end_checker"],
     "kwargs": [{"end_phrase": "Is there anything else I can help with?"}]},
]
# base: 1 fails, 2 passes, 3 fails; sft: 1 passes (fixed), 2 fails (broken), 3 fails.
BASE = {1: "this is all lower case text.", 2: "No commas here at all.", 3: "Goodbye."}
SFT = {1: "THIS IS ALL IN CAPITAL LETTERS AND IT IS LONG ENOUGH.", 2: "Well, a | pipe and <b>tag</b>,\nsecond line",
       3: "Bye."}


def make_run(path, responses, model):
    write_results(score(PROMPTS, responses, progress=False, prompt_set="toy.jsonl"), path,
                  {"model": model, "max_tokens": 64})
    return path


@pytest.fixture
def two_runs(tmp_path):
    return make_run(tmp_path / "base", BASE, "base-model"), make_run(tmp_path / "sft", SFT, "sft-model")


def test_report_contents(two_runs, tmp_path):
    out = tmp_path / "rep" / "cmp.md"
    res = compare.main([str(two_runs[0]), str(two_runs[1]), "--output", str(out), "--examples", "2"])
    text = out.read_text()
    # Four metrics per run with the change from the base: base 1/3 prompts strict, sft 1/3.
    # 1 of 3 has the Wilson interval [6.1, 79.2] (Newcombe's formula, worked in test_stats.py)
    assert "| base-model | toy.jsonl | 3 | 64 | 33.3 [6.1, 79.2] | 33.3 [0.0, 98.7] | 33.3 [6.1, 79.2] |" in text
    assert "| sft-model | toy.jsonl | 3 | 64 | 33.3 [6.1, 79.2] (+0.0) | 33.3 [0.0, 98.7] (+0.0) |" in text
    assert "| prompt strict | 3 | 1 | 1 | +0.0 | [-65.0, +65.0] | 1 | no change detectable with 3 prompts" in text
    # Per-type rows: english_capital 0 -> 100, no_comma 100 -> 0.
    assert "| change_case:english_capital | 1 | 0.0 | 100.0 (+100.0) |" in text
    assert "| punctuation:no_comma | 1 | 100.0 | 0.0 (-100.0) |" in text
    assert "3 prompts in both runs: 1 fixed (fail -> pass), 1 broken (pass -> fail), 1 unchanged" in text
    assert "#### Fixed: key 1" in text and "#### Broken: key 2" in text and "key 3" not in text
    # The answers side by side, escaped so the table stays a table.
    assert "| No commas here at all. | Well, a \\| pipe and &lt;b&gt;tag&lt;/b&gt;,<br>second line |" in text
    assert "![IFEval accuracy](cmp.png)" in text
    png = tmp_path / "rep" / "cmp.png"
    assert res["plot"] == str(png) and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_truncation_and_names(two_runs, tmp_path):
    out = tmp_path / "c.md"
    compare.main([*map(str, two_runs), "--output", str(out), "--plot", str(tmp_path / "p.png"),
                  "--names", "before", "after", "--max_chars", "10"])
    text = out.read_text()
    assert "| before (FAIL) | after (pass) |" in text
    assert "| this is al … | THIS IS AL … |" in text


def test_same_model_twice_uses_folder_names(tmp_path):
    a = make_run(tmp_path / "run_a", BASE, "m")
    b = make_run(tmp_path / "run_b", BASE, "m")
    compare.main([str(a), str(b), "--output", str(tmp_path / "c.md")])
    text = (tmp_path / "c.md").read_text()
    assert "| run_a |" in text and "| run_b |" in text and "0 fixed" in text


def test_missing_summary_is_a_clear_error(two_runs, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit, match=r"empty/summary\.json: missing; score the run first"):
        compare.main([str(two_runs[0]), str(empty), "--output", str(tmp_path / "x.md")])
    with pytest.raises(SystemExit, match="not a folder"):
        compare.main([str(tmp_path / "nowhere"), "--output", str(tmp_path / "x.md")])
    (empty / "summary.json").write_text('{"model": "x"}')
    with pytest.raises(SystemExit, match="no prompt_level_strict_acc"):
        compare.main([str(empty), "--output", str(tmp_path / "x.md")])
    assert not (tmp_path / "x.md").exists()


@pytest.mark.slow
def test_cli_help_and_run(two_runs, tmp_path):
    script = REPO_ROOT / "ifeval" / "compare.py"
    h = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True)
    assert h.returncode == 0 and "RESULT_DIR" in h.stdout
    r = subprocess.run([sys.executable, str(script), *map(str, two_runs), "--output", "r.md"], cwd=tmp_path,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "r.md").is_file() and (tmp_path / "r.png").is_file()
    assert "[compare] IFEval, 2 runs, prompt strict %: base-model 33.3, sft-model 33.3 (+0.0)" in r.stdout


# Two IFBench prompts from the package: key 17 asks for exactly 2 numbers (count:numbers),
# key 296 for no whitespace at all (format:no_whitespace). Base passes neither; the
# fine-tuned run passes 296 only: 0/2 -> 1/2 prompts.
IFBENCH_BASE = {17: "No.", 296: "Yes they are."}
IFBENCH_SFT = {17: "No.", 296: "Yes."}


def make_ifbench_run(path, responses, model):
    prompts = [p for p in load_prompts(checkers("ifbench").prompt_file, "ifbench") if p["key"] in (17, 296)]
    write_results(score(prompts, responses, progress=False, benchmark="ifbench", prompt_set="IFBench_test.jsonl"),
                  path, {"model": model, "max_tokens": 64})
    return path


def test_ifbench_runs(tmp_path):
    runs = [make_ifbench_run(tmp_path / "ib_base", IFBENCH_BASE, "base-model"),
            make_ifbench_run(tmp_path / "ib_sft", IFBENCH_SFT, "sft-model")]
    out = tmp_path / "ifbench.md"
    res = compare.main([*map(str, runs), "--output", str(out), "--benchmark", "ifbench"])
    text = out.read_text()
    assert res["benchmark"] == "IFBench" and text.startswith("# IFBench comparison")
    assert "![IFBench accuracy](ifbench.png)" in text
    assert "| base-model | IFBench_test.jsonl | 2 | 64 | 0.0 [0.0, 65.8] | 0.0 [0.0, 0.0] |" in text
    assert "| sft-model | IFBench_test.jsonl | 2 | 64 | 50.0 [9.5, 90.5] (+50.0) |" in text
    assert "course threshold" not in text  # the course's 22% is IFEval's
    assert "| format:no_whitespace | 1 | 0.0 | 100.0 (+100.0) |" in text
    assert "| count:numbers | 1 | 0.0 | 0.0 (+0.0) |" in text
    assert "2 prompts in both runs: 1 fixed (fail -> pass), 0 broken" in text


def test_mixing_benchmarks_is_refused(two_runs, tmp_path):
    ib = make_ifbench_run(tmp_path / "ib", IFBENCH_BASE, "base-model")
    out = tmp_path / "x.md"
    with pytest.raises(SystemExit, match=r"different benchmarks cannot be compared: .*/base: IFEval; .*/ib: IFBench"):
        compare.main([str(two_runs[0]), str(ib), "--output", str(out)])
    with pytest.raises(SystemExit, match=r"\(expected IFBench only\): .*/base: IFEval; .*/sft: IFEval"):
        compare.main([*map(str, two_runs), "--benchmark", "ifbench", "--output", str(out)])
    assert not out.exists() and not out.with_suffix(".png").exists()


def test_summary_without_benchmark_is_ifeval(two_runs, tmp_path):
    """A summary.json written before IFBench (no benchmark field) is IFEval's."""
    sp = two_runs[1] / "summary.json"
    s = json.loads(sp.read_text())
    assert s.pop("benchmark") == "ifeval"
    sp.write_text(json.dumps(s))
    res = compare.main([*map(str, two_runs), "--benchmark", "ifeval", "--output", str(tmp_path / "c.md")])
    assert res["benchmark"] == "IFEval" and (tmp_path / "c.md").read_text().startswith("# IFEval comparison")


@pytest.mark.slow
def test_default_output_names_the_benchmark(tmp_path):
    runs = [make_ifbench_run(tmp_path / "a", IFBENCH_BASE, "m1"), make_ifbench_run(tmp_path / "b", IFBENCH_SFT, "m2")]
    r = subprocess.run([sys.executable, str(REPO_ROOT / "ifeval" / "compare.py"), *map(str, runs)], cwd=tmp_path,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "ifbench_compare.md").is_file() and (tmp_path / "ifbench_compare.png").is_file()


def hand_run(path, passed, types, model):
    """A result folder as ifeval/scoring.py writes it for one-instruction prompts: prompt i
    passes when ``passed[i]``, its instruction type is ``types[i]`` (strict = loose)."""
    recs = [{"key": i, "prompt": f"p{i}", "response": "r", "instruction_id_list": [t],
             "follow_instruction_list": [ok], "follow_all_instructions": ok} for i, (ok, t) in enumerate(zip(passed, types))]
    per = {}
    for r in recs:
        e = per.setdefault(r["instruction_id_list"][0], {"count": 0, "strict_correct": 0, "loose_correct": 0})
        e["count"] += 1
        e["strict_correct"] += r["follow_all_instructions"]
        e["loose_correct"] += r["follow_all_instructions"]
    for e in per.values():
        e["strict_acc"] = e["loose_acc"] = e["strict_correct"] / e["count"]
    k, n = sum(passed), len(passed)
    result = {"strict": recs, "loose": recs, "metrics": {m: k / n for m in (
        "prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc", "inst_level_loose_acc")},
        "counts": {"prompt_strict": k, "inst_strict": k, "prompt_loose": k, "inst_loose": k}, "num_prompts": n,
        "num_instructions": n, "num_missing": 0, "missing_keys": [], "prompt_set": "p.jsonl", "per_instruction_type": per}
    write_results(result, path, {"model": model})
    return path


def fixed_broken(fixed, broken, n, both):
    before = [False] * fixed + [True] * broken + [True] * both
    after = [True] * fixed + [False] * broken + [True] * both
    return before + [False] * (n - len(before)), after + [False] * (n - len(after))


@pytest.mark.parametrize("fixed, broken, p, words", [
    (7, 4, 0.5488, "no change detectable with 100 prompts (95% CI ["),  # issue 37's IFEval demo
    (12, 2, 0.01294, "improved (+10.0 points"),                          # issue 37's fp32 demo
])
def test_paired_json_and_words(tmp_path, fixed, broken, p, words):
    before, after = fixed_broken(fixed, broken, 100, both=19)
    types = ["a:x"] * fixed + ["b:y"] * (100 - fixed)  # the fixed ones are all of type a:x
    runs = [hand_run(tmp_path / "b", before, types, "base"), hand_run(tmp_path / "n", after, types, "new")]
    out = tmp_path / "c.json"
    compare.main([*map(str, runs), "--output", str(tmp_path / "c.md"), "--json", str(out)])
    got = json.loads(out.read_text())
    assert got["benchmark"] == "ifeval" and "paired" not in got["runs"][0]
    for m in ("prompt_level_strict_acc", "prompt_level_loose_acc", "inst_level_strict_acc", "inst_level_loose_acc"):
        e = got["runs"][1]["paired"][m]
        assert (e["n"], e["fixed"], e["broken"]) == (100, fixed, broken)
        assert e["diff"] == pytest.approx((fixed - broken) / 100)
        assert len(e["ci95"]) == 2 and e["ci95"][0] <= e["diff"] <= e["ci95"][1]
    assert got["runs"][1]["paired"]["prompt_level_strict_acc"]["p_value"] == pytest.approx(p, abs=1e-4)
    text = (tmp_path / "c.md").read_text()
    assert f"| prompt strict | 100 | {fixed} | {broken} | {100 * (fixed - broken) / 100:+.1f} |" in text
    assert words in text
    if p > 0.05:
        assert "prompts would detect a change of this size" in text and "ifeval/data/input_data.jsonl" in text
    # a:x: 7 fixed, 0 broken (p = 2/128 < 0.05) or 12 fixed, 0 broken: marked; b:y: 4 or 2 broken: not
    row = next(ln for ln in text.splitlines() if ln.startswith("| a:x |"))
    assert row.endswith(" * |")
    assert not next(ln for ln in text.splitlines() if ln.startswith("| b:y |")).endswith("* |")
    assert "Across 2 types tested at 5%, about 0.10 marks are expected by chance alone" in text
    assert got["runs"][1]["per_type"]["strict"]["a:x"]["marked"] is True
    # 19 (+fixed or broken) of 100 passed: Wilson intervals straddle 22%, or lie above it
    assert "straddles the course threshold of 22%" in text


def test_folders_without_records_get_no_paired_test(two_runs, tmp_path):
    (two_runs[1] / "eval_results_loose.jsonl").unlink()
    compare.main([*map(str, two_runs), "--output", str(tmp_path / "c.md"), "--json", str(tmp_path / "c.json")])
    assert "no paired test" in (tmp_path / "c.md").read_text()
    assert json.loads((tmp_path / "c.json").read_text())["runs"][1]["paired"] is None
