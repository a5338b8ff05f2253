"""Compare IFEval (or IFBench) result folders (the base model first) in a Markdown report and a chart.

    python ifeval/compare.py outputs/ifeval_base outputs/ifeval_hw2
    python ifeval/compare.py outputs/ifeval_base outputs/ifeval_hw2 outputs/ifeval_hw3 \\
        --names base HW2 HW3 --output report/ifeval.md --plot report/ifeval.png
    python ifeval/compare.py outputs/ifbench_base outputs/ifbench_hw2 --benchmark ifbench --output report/ifbench.md

All runs must be of one benchmark (the ``benchmark`` field of their ``summary.json``; a
summary without it is IFEval's): runs of different benchmarks are refused, and so are runs
of another benchmark than ``--benchmark`` when it is given.

Each RESULT_DIR is an ``--output_dir`` of ``ifeval/run_ifeval.py`` (``summary.json``, and
``eval_results_strict.jsonl`` / ``eval_results_loose.jsonl`` for the paired tests and the
examples). The report has, for every run: the four metrics with their 95% intervals and
the change from the first run; for IFEval, where the prompt-level strict interval lies
against the course's 22%; for each later run, its paired tests against the first
(``smolsft/evaluation/stats.py``: fixed, broken, the change with its 95% interval, p, and
the words they allow); the strict and loose accuracy per instruction type with the change
from the first run, marked ``*`` only where that type's paired test says so; and a few
prompts whose strict prompt-level verdict changed, with both answers side by side,
truncated to ``--max_chars``. ``--json OUT.json`` writes, per later run,
``paired.<metric>.{n, fixed, broken, diff, ci95, p_value}``. The PNG has the four metrics
per run and the strict accuracy per instruction type.
"""
from __future__ import annotations

import argparse
import html
import json
import sys
from pathlib import Path
from typing import Optional

# Importable as ``ifeval.compare`` and runnable as ``python ifeval/compare.py``: report and
# utils live at the repository root.

from smolsft.report.reports import (BENCHMARKS, METRIC_NAMES, ResultError, delta, load_summary, metrics_table,
                                    one_benchmark, pct, per_type_table, plot_accuracy)
from smolsft.evaluation.metrics import BIGGER_SET
from smolsft.evaluation.paired import paired_runs, read_verdicts
from smolsft.files import iter_jsonl
from smolsft.report.paired_text import marks_note, paired_table, threshold_line


# ----------------------------------------------------------------------- reading
def load_run(result_dir: str) -> dict:
    """A result folder's summary (``report.load_summary``) and, when present, its
    per-prompt strict records."""
    d = Path(result_dir)
    summary = load_summary(d)
    run = {"dir": d, "summary": summary, "records": {}, "verdicts": read_verdicts(d)}
    p = d / "eval_results_strict.jsonl"  # the examples; the per-type tables come from the summary
    if p.is_file():
        recs = {}
        for lineno, r in iter_jsonl(p, "strict results", ResultError):
            if "key" not in r or "follow_all_instructions" not in r:
                raise ResultError(f"{p}:{lineno}: record without key/follow_all_instructions")
            recs[r["key"]] = r
        run["records"]["strict"] = recs
    return run


def run_names(runs: list[dict], names: Optional[list[str]]) -> list[str]:
    """--names if given, else each summary's model name, else the folder name; folder
    names are used where model names repeat (two runs of one model)."""
    if names:
        if len(names) != len(runs):
            raise ResultError(f"--names has {len(names)} names for {len(runs)} result folders")
        return names
    cand = [str(r["summary"].get("model") or r["dir"].name) for r in runs]
    if len(set(cand)) < len(cand):
        cand = [r["dir"].name for r in runs]
    if len(set(cand)) < len(cand):
        cand = [f"{c} ({i + 1})" for i, c in enumerate(cand)]
    return cand


# ------------------------------------------------------------------- formatting
def cell(text: str, max_chars: int) -> str:
    """An answer as one Markdown table cell: truncated, HTML-escaped (answers may hold
    tags or ``<think>``), pipes escaped, newlines as <br>."""
    t = text if len(text) <= max_chars else text[:max_chars].rstrip() + " …"
    t = html.escape(t, quote=False).replace("|", "\\|")
    return t.replace("\r", "").replace("\n", "<br>") or "*(empty)*"


def mark(ok: bool) -> str:
    return "pass" if ok else "FAIL"


def changed_examples(base: dict, other: dict, base_name: str, name: str, n: int, max_chars: int) -> list[str]:
    """Prompts whose strict prompt-level verdict differs between ``base`` and ``other``:
    counts, then up to ``n`` fixed and ``n`` broken ones (in prompt-file order)."""
    a, b = base["records"].get("strict"), other["records"].get("strict")
    if not a or not b:
        return [f"*(no eval_results_strict.jsonl in {base['dir'] if not a else other['dir']}: no examples)*"]
    common = [k for k in a if k in b]
    fixed = [k for k in common if not a[k]["follow_all_instructions"] and b[k]["follow_all_instructions"]]
    broken = [k for k in common if a[k]["follow_all_instructions"] and not b[k]["follow_all_instructions"]]
    lines = [f"{len(common)} prompts in both runs: {len(fixed)} fixed (fail -> pass), {len(broken)} broken "
             f"(pass -> fail), {len(common) - len(fixed) - len(broken)} unchanged (strict, whole prompt)."]
    if len(common) < max(len(a), len(b)):
        lines.append(f"({len(a)} and {len(b)} prompts scored; only the {len(common)} in both are compared.)")
    for title, keys in (("Fixed", fixed), ("Broken", broken)):
        for k in keys[:n]:
            ra, rb = a[k], b[k]
            ids = ra.get("instruction_id_list") or []
            verdicts = ", ".join(
                f"`{i}` {mark(x)} -> {mark(y)}"
                for i, x, y in zip(ids, ra.get("follow_instruction_list", []), rb.get("follow_instruction_list", [])))
            lines += ["", f"#### {title}: key {k}", "",
                      f"**Prompt:** {cell(ra.get('prompt', ''), max_chars)}", "",
                      f"**Instructions:** {verdicts}", "",
                      f"| {base_name} ({mark(ra['follow_all_instructions'])}) | {name} "
                      f"({mark(rb['follow_all_instructions'])}) |",
                      "|---|---|",
                      f"| {cell(ra.get('response', ''), max_chars)} | {cell(rb.get('response', ''), max_chars)} |"]
    return lines


def pair_all(runs: list[dict]) -> list[Optional[dict]]:
    """Per run, its paired comparison with the first (``paired.paired_runs``); ``None`` for
    the first and for a run whose folder (or the first's) has no per-prompt records."""
    base = runs[0]["verdicts"]
    return [None] + [paired_runs(base, r["verdicts"]) if base and r["verdicts"] else None for r in runs[1:]]


def paired_json(runs: list[dict], names: list[str], pairs: list[Optional[dict]], key: str) -> dict:
    """What ``--json`` writes: the benchmark, and per run its folder, metrics, intervals and
    (later runs) ``paired.<metric>.{n, fixed, broken, diff, ci95, p_value, ...}`` and the
    per-type tests against the first run."""
    out = {"benchmark": key, "reference": names[0], "runs": []}
    for run, name, pair in zip(runs, names, pairs):
        s = run["summary"]
        entry = {"name": name, "dir": str(run["dir"]), **{m: s[m] for m in METRIC_NAMES},
                 "intervals": s.get("intervals")}
        if run is not runs[0]:
            entry["paired"] = pair["paired"] if pair else None
            entry["per_type"] = pair["per_type"] if pair else None
        out["runs"].append(entry)
    return out


def build_report(runs, names, examples: int, max_chars: int, plot_name: Optional[str],
                 benchmark: str = "IFEval", pairs: Optional[list] = None, key: str = "ifeval") -> str:
    """The Markdown report: runs, the metrics table with 95% intervals, the course threshold
    (IFEval), the chart link, each later run's paired tests against the first, the per-type
    tables with their marks (smolsft/report/reports.py) and the changed prompts."""
    pairs = pairs if pairs is not None else pair_all(runs)
    out = [f"# {benchmark} comparison", ""]
    out.append("Runs, the first being the reference for every change shown: "
               + "; ".join(f"**{n}** (`{r['dir']}`, model `{r['summary'].get('model', '?')}`)"
                           for r, n in zip(runs, names)) + ".")
    sets = {(r["summary"].get("prompt_set"), r["summary"].get("num_prompts")) for r in runs}
    if len(sets) > 1:
        out += ["", "**Warning:** the runs were scored on different prompt sets or numbers of prompts, so the "
                    "changes are not like for like."]
    out += ["", "## Accuracy (%)", "", "95% interval in square brackets (prompt level: Wilson; instruction level: "
            "clustered by prompt); change from the first run in round brackets, in percentage points.", ""]
    out += metrics_table([r["summary"] for r in runs], names)
    if key == "ifeval":
        out += [""] + [ln for ln in (threshold_line(r["summary"], n) for r, n in zip(runs, names)) if ln]
    if plot_name:
        out += ["", f"![{benchmark} accuracy]({plot_name})"]
    for run, name, pair in zip(runs[1:], names[1:], pairs[1:]):
        out += ["", f"## Paired changes: {names[0]} -> {name}", ""]
        out += paired_table(pair["paired"], BIGGER_SET.get(key, "")) if pair else \
            ["*(no eval_results_strict.jsonl / eval_results_loose.jsonl in one of the folders: no paired test)*"]
    for mode in ("strict", "loose"):
        out += ["", f"## {mode.capitalize()} accuracy per instruction type (%)", ""]
        tests = [p["per_type"][mode] if p else None for p in pairs]
        out += per_type_table([r["summary"] for r in runs], names, mode, tests)
        if any(tests):
            out += ["", marks_note(next(t for t in tests if t))]
    for run, name in zip(runs[1:], names[1:]):
        out += ["", f"## Prompts whose verdict changed: {names[0]} -> {name}", ""]
        out += changed_examples(runs[0], run, names[0], name, examples, max_chars)
    return "\n".join(out) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("result_dirs", nargs="+", metavar="RESULT_DIR", help="result folders, the reference (base) first")
    ap.add_argument("--names", nargs="+", help="a label per run (default: the model names)")
    ap.add_argument("--benchmark", choices=sorted(BENCHMARKS), default=None,
                    help="the benchmark every run must be of (default: the one the runs share)")
    ap.add_argument("--output", default=None,
                    help="Markdown report (default BENCHMARK_compare.md: ifeval_compare.md, ifbench_compare.md)")
    ap.add_argument("--plot", default=None, help="bar chart PNG (default: the report's path with .png)")
    ap.add_argument("--examples", type=int, default=3, help="fixed and broken prompts shown per later run (default 3)")
    ap.add_argument("--max_chars", type=int, default=400, help="answers are cut to this many characters (default 400)")
    ap.add_argument("--json", default=None, metavar="OUT.json",
                    help="also write the paired tests (per later run: paired.<metric>.{n, fixed, broken, diff, ci95, "
                         "p_value}) and the intervals as JSON")
    args = ap.parse_args(argv)

    try:
        runs = [load_run(d) for d in args.result_dirs]
        key = one_benchmark([(str(r["dir"]), r["summary"]) for r in runs], args.benchmark)
        bench = BENCHMARKS[key]
        names = run_names(runs, args.names)
        pairs = pair_all(runs)
    except ResultError as e:
        raise SystemExit(f"[compare] error: {e}") from None
    report_path = Path(args.output or f"{key}_compare.md")
    plot_path = Path(args.plot) if args.plot else report_path.with_suffix(".png")
    plot_accuracy([r["summary"] for r in runs], names, plot_path, bench)
    # Link the chart relative to the report so the pair can be moved together.
    try:
        rel = plot_path.resolve().relative_to(report_path.resolve().parent).as_posix()
    except ValueError:
        rel = str(plot_path.resolve())
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(build_report(runs, names, args.examples, args.max_chars, rel, bench, pairs, key), encoding="utf-8")
    base = runs[0]["summary"]["prompt_level_strict_acc"]
    parts = [f"{n} {pct(r['summary']['prompt_level_strict_acc'])}" + ("" if i == 0 else
             delta(r["summary"]["prompt_level_strict_acc"], base)) for i, (r, n) in enumerate(zip(runs, names))]
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(paired_json(runs, names, pairs, key), indent=1) + "\n", encoding="utf-8")
    print(f"[compare] {bench}, {len(runs)} runs, prompt strict %: {', '.join(parts)} -> {report_path}, {plot_path}"
          + (f", {args.json}" if args.json else ""))
    return {"report": str(report_path), "plot": str(plot_path), "benchmark": bench, "json": args.json}


if __name__ == "__main__":
    main()
