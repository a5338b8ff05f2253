"""Compare IFEval result folders (the base model first) in a Markdown report and a chart.

    python ifeval/compare.py outputs/ifeval_base outputs/ifeval_hw2
    python ifeval/compare.py outputs/ifeval_base outputs/ifeval_hw2 outputs/ifeval_hw3 \\
        --names base HW2 HW3 --output report/ifeval.md --plot report/ifeval.png

Each RESULT_DIR is an ``--output_dir`` of ``ifeval/run_ifeval.py`` (``summary.json``, and
``eval_results_strict.jsonl`` for the examples). The report
has, for every run: the four IFEval metrics with the change from the first run; the
strict and loose accuracy per instruction type with the change from the first run; and,
for each later run, a few prompts whose strict prompt-level verdict changed (fixed and
broken), with both answers side by side, truncated to ``--max_chars``. The PNG has the
four metrics per run and the strict accuracy per instruction type.
"""
from __future__ import annotations

import argparse
import html
import json
import sys
from pathlib import Path
from typing import Optional

# Importable as ``ifeval.compare`` and runnable as ``python ifeval/compare.py``: utils
# lives at the repository root. (Not ifeval.scoring: its lm-eval import is slow.)
_REPO_ROOT = Path(__file__).resolve().parent.parent
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))

from utils import iter_jsonl  # noqa: E402

METRICS = [("prompt_level_strict_acc", "prompt strict"), ("inst_level_strict_acc", "instruction strict"),
           ("prompt_level_loose_acc", "prompt loose"), ("inst_level_loose_acc", "instruction loose")]


class ResultError(ValueError):
    """A result folder that cannot be compared (the message names the file)."""


# ----------------------------------------------------------------------- reading
def load_run(result_dir: str) -> dict:
    """A result folder's summary and (when present) its per-prompt strict records."""
    d = Path(result_dir)
    if not d.is_dir():
        raise ResultError(f"{d}: not a folder (expected an --output_dir of ifeval/run_ifeval.py)")
    sp = d / "summary.json"
    if not sp.is_file():
        raise ResultError(f"{sp}: missing; score the run first (bash ifeval/run.sh MODEL {d}, or "
                          f"python ifeval/run_ifeval.py --mode eval ... --output_dir {d})")
    try:
        summary = json.loads(sp.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ResultError(f"{sp}: malformed JSON ({e.msg} at line {e.lineno})") from None
    missing = [k for k, _ in METRICS if not isinstance(summary.get(k), (int, float))]
    if missing:
        raise ResultError(f"{sp}: no {', '.join(missing)} (not an IFEval summary from ifeval/scoring.py?)")
    run = {"dir": d, "summary": summary, "records": {}}
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
def pct(x: Optional[float]) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def delta(x: Optional[float], base: Optional[float]) -> str:
    if x is None or base is None:
        return ""
    return f" ({100 * (x - base):+.1f})"


def cell(text: str, max_chars: int) -> str:
    """An answer as one Markdown table cell: truncated, HTML-escaped (answers may hold
    tags or ``<think>``), pipes escaped, newlines as <br>."""
    t = text if len(text) <= max_chars else text[:max_chars].rstrip() + " …"
    t = html.escape(t, quote=False).replace("|", "\\|")
    return t.replace("\r", "").replace("\n", "<br>") or "*(empty)*"


def mark(ok: bool) -> str:
    return "pass" if ok else "FAIL"


def metrics_table(runs, names) -> list[str]:
    base = runs[0]["summary"]
    lines = ["| run | prompt set | prompts | max_tokens | " + " | ".join(n for _, n in METRICS) + " |",
             "|---|---|---:|---:|" + "---:|" * len(METRICS)]
    for run, name in zip(runs, names):
        s = run["summary"]
        vals = [pct(s[k]) + ("" if run is runs[0] else delta(s[k], base[k])) for k, _ in METRICS]
        lines.append(f"| {name} | {s.get('prompt_set') or '?'} | {s.get('num_prompts', '?')} | "
                     f"{s.get('max_tokens') if s.get('max_tokens') is not None else '?'} | " + " | ".join(vals) + " |")
    return lines


def per_type_table(runs, names, mode: str) -> list[str]:
    types = sorted({t for r in runs for t in (r["summary"].get("per_instruction_type") or {})})
    if not types:
        return ["*(no per_instruction_type in the summaries)*"]
    lines = ["| instruction type | n | " + " | ".join(names) + " |", "|---|---:|" + "---:|" * len(runs)]
    acc_key = f"{mode}_acc"
    for t in types:
        entries = [(r["summary"].get("per_instruction_type") or {}).get(t) for r in runs]
        ns = sorted({str(e["count"]) for e in entries if e})
        base = entries[0][acc_key] if entries[0] else None
        vals = []
        for i, e in enumerate(entries):
            v = e[acc_key] if e else None
            vals.append(pct(v) + ("" if i == 0 else delta(v, base)))
        lines.append(f"| {t} | {'/'.join(ns)} | " + " | ".join(vals) + " |")
    return lines


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


def build_report(runs, names, examples: int, max_chars: int, plot_name: Optional[str]) -> str:
    out = ["# IFEval comparison", ""]
    out.append("Runs, the first being the reference for every change shown: "
               + "; ".join(f"**{n}** (`{r['dir']}`, model `{r['summary'].get('model', '?')}`)"
                           for r, n in zip(runs, names)) + ".")
    sets = {(r["summary"].get("prompt_set"), r["summary"].get("num_prompts")) for r in runs}
    if len(sets) > 1:
        out += ["", "**Warning:** the runs were scored on different prompt sets or numbers of prompts, so the "
                    "changes are not like for like."]
    out += ["", "## Accuracy (%)", "", "Change from the first run in brackets, in percentage points.", ""]
    out += metrics_table(runs, names)
    if plot_name:
        out += ["", f"![IFEval accuracy]({plot_name})"]
    for mode in ("strict", "loose"):
        out += ["", f"## {mode.capitalize()} accuracy per instruction type (%)", ""]
        out += per_type_table(runs, names, mode)
    for run, name in zip(runs[1:], names[1:]):
        out += ["", f"## Prompts whose verdict changed: {names[0]} -> {name}", ""]
        out += changed_examples(runs[0], run, names[0], name, examples, max_chars)
    return "\n".join(out) + "\n"


def plot(runs, names, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    types = sorted({t for r in runs for t in (r["summary"].get("per_instruction_type") or {})})
    k = len(runs)
    width = 0.8 / k
    rows = max(len(types), 1) * k  # bars in the per-type panel
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 4 + 0.16 * rows + 1),
                                   gridspec_kw={"height_ratios": [4, 0.16 * rows + 1]})
    for i, (run, name) in enumerate(zip(runs, names)):
        xs = [j + (i - (k - 1) / 2) * width for j in range(len(METRICS))]
        vals = [100 * run["summary"][m] for m, _ in METRICS]
        bars = ax1.bar(xs, vals, width, label=name)
        ax1.bar_label(bars, fmt="%.1f", fontsize=7)
    ax1.set_xticks(range(len(METRICS)), [n for _, n in METRICS])
    ax1.set_ylabel("accuracy (%)")
    ax1.set_ylim(0, 105)
    ax1.set_title("IFEval")
    ax1.legend(fontsize=8)
    if types:
        for i, (run, name) in enumerate(zip(runs, names)):
            per = run["summary"].get("per_instruction_type") or {}
            ys = [j + (i - (k - 1) / 2) * width for j in range(len(types))]
            # A type the run was not scored on gets no bar (NaN), not a misleading 0.
            ax2.barh(ys, [100 * per[t]["strict_acc"] if t in per else float("nan") for t in types], width,
                     label=name)
        ax2.set_yticks(range(len(types)), types, fontsize=7)
        ax2.invert_yaxis()
        ax2.set_xlim(0, 100)
        ax2.set_xlabel("strict accuracy per instruction type (%)")
    else:
        ax2.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("result_dirs", nargs="+", metavar="RESULT_DIR", help="result folders, the reference (base) first")
    ap.add_argument("--names", nargs="+", help="a label per run (default: the model names)")
    ap.add_argument("--output", default="ifeval_compare.md", help="Markdown report (default ifeval_compare.md)")
    ap.add_argument("--plot", default=None, help="bar chart PNG (default: the report's path with .png)")
    ap.add_argument("--examples", type=int, default=3, help="fixed and broken prompts shown per later run (default 3)")
    ap.add_argument("--max_chars", type=int, default=400, help="answers are cut to this many characters (default 400)")
    args = ap.parse_args(argv)

    try:
        runs = [load_run(d) for d in args.result_dirs]
        names = run_names(runs, args.names)
    except ResultError as e:
        raise SystemExit(f"[compare] error: {e}") from None
    report_path = Path(args.output)
    plot_path = Path(args.plot) if args.plot else report_path.with_suffix(".png")
    plot(runs, names, plot_path)
    # Link the chart relative to the report so the pair can be moved together.
    try:
        rel = plot_path.resolve().relative_to(report_path.resolve().parent).as_posix()
    except ValueError:
        rel = str(plot_path.resolve())
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(build_report(runs, names, args.examples, args.max_chars, rel), encoding="utf-8")
    base = runs[0]["summary"]["prompt_level_strict_acc"]
    parts = [f"{n} {pct(r['summary']['prompt_level_strict_acc'])}" + ("" if i == 0 else
             delta(r["summary"]["prompt_level_strict_acc"], base)) for i, (r, n) in enumerate(zip(runs, names))]
    print(f"[compare] {len(runs)} runs, prompt strict %: {', '.join(parts)} -> {report_path}, {plot_path}")
    return {"report": str(report_path), "plot": str(plot_path)}


if __name__ == "__main__":
    main()
