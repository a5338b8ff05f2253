"""Reports on training and evaluation runs: reading a run's results, and
the tables and charts made from them. One place for what ``ifeval/compare.py``,
``scripts/sweep.py``, ``scripts/demo.sh``, ``scripts/plot_loss.py`` and
``train_hw_parallel.py`` show:

* the metric and benchmark names come from ``smolsft/evaluation/metrics.py`` (shared with the scorer);
  :func:`one_benchmark`: the check that runs compared together belong to one benchmark.
* :func:`load_summary`: a scored result folder's ``summary.json``, checked.
* :func:`read_curve`, :func:`logged_losses`, :func:`plot_loss_curve`: the training loss
  from a run's ``trainer_state.json`` (the Trainer's ``log_history``).
* :func:`metrics_table`, :func:`per_type_table`, :func:`plot_accuracy`: several scored runs
  side by side, each change relative to the first run (Markdown, percentages).
* :func:`simulator_report`: ``simulator.md`` of ``scripts/simulator_demo.sh`` (user simulator measures).
* :func:`before_after`, :func:`carried_over`, :func:`demo_summary`: the demo's ``summary.md`` /
  ``summary.json``, IFEval and IFBench side by side, and whether the IFEval gain carried
  over to IFBench.

This module imports neither lm-eval nor matplotlib at import time (lm-eval alone takes
seconds to import; matplotlib is imported when a chart is drawn).

CLI (the summary step of ``scripts/demo.sh``)::

    python -m smolsft.report.reports demo-summary demo_out --run demo --prompt_set ifeval/data/sampled_input_data.jsonl \\
        --prompts 0 --max_tokens 256 --data data/demo_sft.json --ifbench_prompts 50
"""
from __future__ import annotations

import argparse
import glob
import json
import os
from pathlib import Path
from typing import Optional

from smolsft.evaluation.metrics import BENCHMARKS, METRIC_NAMES, METRICS, ResultError, benchmark_of
from smolsft.evaluation import stats
from smolsft.evaluation.metrics import BIGGER_SET
from smolsft.evaluation.paired import compare_dirs
from smolsft.report.paired_text import ci_text, marks_note, threshold_line
from smolsft.report.sweep_table import seed_spread

LOSS_CURVE_PNG = "loss_curve.png"


# ----------------------------------------------------------------------- reading
def load_summary(result_dir: str | os.PathLike) -> dict:
    """The ``summary.json`` of a scored result folder (an ``--output_dir`` of
    ``ifeval/run_ifeval.py``). Raises :class:`ResultError` naming the file when the folder
    or the file is missing, the JSON is malformed or a metric of ``METRIC_NAMES`` is not a
    number."""
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
    missing = [k for k in METRIC_NAMES if not isinstance(summary.get(k), (int, float))]
    if missing:
        raise ResultError(f"{sp}: no {', '.join(missing)} (not an IFEval summary from ifeval/scoring.py?)")
    return summary


def one_benchmark(runs: list[tuple[str, dict]], expected: Optional[str] = None) -> str:
    """The benchmark shared by ``runs`` ((label, summary) pairs; the label, a folder or file,
    goes into errors), which must be ``expected`` when given. Raises :class:`ResultError`
    listing every run with its benchmark when they differ: scores of two benchmarks are not
    comparable."""
    found = [(label, benchmark_of(s, label)) for label, s in runs]
    kinds = {b for _, b in found} | ({expected} if expected else set())
    if len(kinds) > 1:
        listing = "; ".join(f"{label}: {BENCHMARKS[b]}" for label, b in found)
        want = f" (expected {BENCHMARKS[expected]} only)" if expected else ""
        raise ResultError(f"runs of different benchmarks cannot be compared{want}: {listing}")
    return kinds.pop() if kinds else (expected or "ifeval")


def read_curve(run_dir: str | os.PathLike) -> tuple[list[int], list[float], list[float | None]]:
    """(steps, losses, learning rates) of the training-loss entries in the run's
    ``trainer_state.json`` (evaluation and summary entries are skipped). Raises
    ``FileNotFoundError`` when the folder has no ``trainer_state.json``."""
    state = Path(run_dir) / "trainer_state.json"
    if not state.is_file():
        raise FileNotFoundError(f"{state}: no trainer_state.json (is {run_dir} a training output folder?)")
    history = json.loads(state.read_text())["log_history"]
    points = [h for h in history if "loss" in h and "step" in h]
    return [h["step"] for h in points], [h["loss"] for h in points], [h.get("learning_rate") for h in points]


def logged_losses(run_dir: str | os.PathLike) -> list[float]:
    """The logged training losses of a run, ``[]`` when it has no ``trainer_state.json``
    (training failed or logged nothing)."""
    if not (Path(run_dir) / "trainer_state.json").exists():
        return []
    return read_curve(run_dir)[1]


# ------------------------------------------------------------------ formatting
def pct(x: Optional[float]) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def delta(x: Optional[float], base: Optional[float]) -> str:
    """The change in percentage points, in brackets ("" when a value is missing)."""
    if x is None or base is None:
        return ""
    return f" ({100 * (x - base):+.1f})"


def instruction_types(summaries: list[dict]) -> list[str]:
    """Every instruction type scored in any of the summaries, sorted."""
    return sorted({t for s in summaries for t in (s.get("per_instruction_type") or {})})


def metrics_table(summaries: list[dict], names: list[str]) -> list[str]:
    """Markdown rows: per run, its prompt set, size, max_tokens and the four metrics in %,
    each with its 95% interval (when the summary has one) and the change from the first run."""
    base = summaries[0]
    lines = ["| run | prompt set | prompts | max_tokens | " + " | ".join(label for _, label in METRICS) + " |",
             "|---|---|---:|---:|" + "---:|" * len(METRICS)]
    for i, (s, name) in enumerate(zip(summaries, names)):
        vals = [pct(s[k]) + (f" {ci_text(s, k)}" if ci_text(s, k) else "") + ("" if i == 0 else delta(s[k], base[k]))
                for k in METRIC_NAMES]
        lines.append(f"| {name} | {s.get('prompt_set') or '?'} | {s.get('num_prompts', '?')} | "
                     f"{s.get('max_tokens') if s.get('max_tokens') is not None else '?'} | " + " | ".join(vals) + " |")
    return lines


def per_type_table(summaries: list[dict], names: list[str], mode: str,
                   tests: Optional[list[Optional[dict]]] = None) -> list[str]:
    """Markdown rows: ``mode`` (strict or loose) accuracy per instruction type in %, one
    column per run, with the change from the first run; ``tests`` (per run, ``None`` for the
    first) holds each type's paired test (``paired.paired_runs``'s ``per_type[mode]``): a
    change its test marks gets ``*``."""
    types = instruction_types(summaries)
    if not types:
        return ["*(no per_instruction_type in the summaries)*"]
    lines = ["| instruction type | n | " + " | ".join(names) + " |", "|---|---:|" + "---:|" * len(summaries)]
    acc_key = f"{mode}_acc"
    for t in types:
        entries = [(s.get("per_instruction_type") or {}).get(t) for s in summaries]
        ns = sorted({str(e["count"]) for e in entries if e})
        base = entries[0][acc_key] if entries[0] else None
        vals = []
        for i, e in enumerate(entries):
            v = e[acc_key] if e else None
            test = ((tests or [None] * len(entries))[i] or {}).get(t)
            vals.append(pct(v) + ("" if i == 0 else delta(v, base)) + (" *" if test and test["marked"] else ""))
        lines.append(f"| {t} | {'/'.join(ns)} | " + " | ".join(vals) + " |")
    return lines


# ---------------------------------------------------------------------- charts
def plot_accuracy(summaries: list[dict], names: list[str], path: Path, benchmark: str = "IFEval") -> None:
    """A PNG: the four metrics per run (bars), then the strict accuracy per instruction type."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    types = instruction_types(summaries)
    k = len(summaries)
    width = 0.8 / k
    rows = max(len(types), 1) * k  # bars in the per-type panel
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 4 + 0.16 * rows + 1),
                                   gridspec_kw={"height_ratios": [4, 0.16 * rows + 1]})
    for i, (s, name) in enumerate(zip(summaries, names)):
        xs = [j + (i - (k - 1) / 2) * width for j in range(len(METRICS))]
        bars = ax1.bar(xs, [100 * s[m] for m in METRIC_NAMES], width, label=name)
        ax1.bar_label(bars, fmt="%.1f", fontsize=7)
    ax1.set_xticks(range(len(METRICS)), [label for _, label in METRICS])
    ax1.set_ylabel("accuracy (%)")
    ax1.set_ylim(0, 105)
    ax1.set_title(benchmark)
    ax1.legend(fontsize=8)
    if types:
        for i, (s, name) in enumerate(zip(summaries, names)):
            per = s.get("per_instruction_type") or {}
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


def plot_loss_curve(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> str:
    """Write the loss (left axis) and learning-rate (right axis) curve of ``run_dir`` per
    optimizer step; returns the PNG path (default ``RUN_DIR/loss_curve.png``)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    steps, losses, lrs = read_curve(run_dir)
    out = str(out or Path(run_dir) / LOSS_CURVE_PNG)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ax.plot(steps, losses, color="tab:blue", marker="o" if len(steps) < 30 else None, ms=3, label="training loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("mean token loss", color="tab:blue")
    if any(lr is not None for lr in lrs):
        ax2 = ax.twinx()
        ax2.plot(steps, [lr if lr is not None else float("nan") for lr in lrs], color="tab:orange", lw=1,
                 label="learning rate")
        ax2.set_ylabel("learning rate", color="tab:orange")
        ax2.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    ax.set_title(Path(run_dir).resolve().name)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


# ------------------------------------------------------------------ demo summary
def strict_counts(summary: dict) -> dict[str, tuple[int, int]]:
    """instruction type -> (passed, total), strict, from a run's summary."""
    return {k: (v["strict_correct"], v["count"]) for k, v in summary["per_instruction_type"].items()}


def before_after(base: dict, after: dict, pair: Optional[dict], bigger_set: str = "") -> list[str]:
    """Markdown: the four metrics before and after (4 decimals, each with its 95% interval),
    the change, and the paired test of ``pair`` (``paired.paired_runs``; ``None``: no
    per-prompt records, no test); then the strict passed/total per instruction type with
    the change in passed instructions, marked ``*`` where that type's paired test says so."""
    pb, pa = strict_counts(base), strict_counts(after)
    lines = ["| metric | base [95% CI] | fine-tuned [95% CI] | change | fixed / broken | p | reading |",
             "|---|---|---|---|---|---|---|"]
    for m in METRIC_NAMES:
        p = pair["paired"][m] if pair else None
        unit = "prompts" if m.startswith("prompt") else "instructions"
        test = (f"{p['fixed']} / {p['broken']} | {p['p_value']:.2g} | "
                f"{stats.change_words(p, unit, bigger_set if m == 'prompt_level_strict_acc' else '')}") \
            if p else "- | - | no paired test"
        cb, ca = ci_text(base, m, False), ci_text(after, m, False)
        lines.append(f"| {m} | {base[m]:.4f}{' ' + cb if cb else ''} | {after[m]:.4f}{' ' + ca if ca else ''} | "
                     f"{after[m] - base[m]:+.4f} | {test} |")
    tests = pair["per_type"]["strict"] if pair else {}
    lines += ["", "Per instruction type (strict, passed/total):", "",
              "| instruction | base | fine-tuned | change |", "|---|---|---|---|"]
    for inst in sorted(set(pb) | set(pa)):
        (a, n), (b, n2) = pb.get(inst, (0, 0)), pa.get(inst, (0, 0))
        marked = " *" if tests.get(inst, {}).get("marked") else ""
        lines.append(f"| {inst} | {a}/{n} | {b}/{n2} | {b - a:+d}{marked} |")
    if tests:
        lines += ["", marks_note(tests)]
    return lines


def carried_over(ifeval: Optional[dict], ifbench: Optional[dict]) -> tuple[str, str]:
    """(verdict, Markdown line): did the IFEval gain of fine-tuning carry over to IFBench?

    ``ifeval`` and ``ifbench`` are the prompt-level strict paired tests
    (``stats.paired_prompts``) of each benchmark, base vs fine-tuned (``None``: no per-prompt
    records). A change counts only where its 95% interval excludes zero. Verdicts: ``"not
    measurable"`` when either change is not detectable (or untested); ``"no IFEval gain"``
    when IFEval fell; ``"yes"`` when both improved; ``"no"`` when IFEval improved and
    IFBench fell. The line quotes both paired tests."""
    def side(p):
        return None if p is None else ("up" if p["ci95"][0] > 0 else "down" if p["ci95"][1] < 0 else "none")

    e, b = side(ifeval), side(ifbench)
    if e is None or b is None:
        verdict, why = "not measurable", "no per-prompt records to pair"
    elif e == "none":
        verdict, why = "not measurable", "no IFEval change is detectable"
    elif e == "down":
        verdict, why = "no IFEval gain", "IFEval fell, so there is no gain to carry over"
    elif b == "none":
        verdict, why = "not measurable", "IFEval improved, but no IFBench change is detectable"
    elif b == "up":
        verdict, why = "yes", "both improved"
    else:
        verdict, why = "no", "IFEval improved, IFBench fell"
    parts = [f"{name}: {stats.change_words(p) if p else 'untested'}"
             + (f" ({p['fixed']} fixed, {p['broken']} broken of {p['n']})" if p else "")
             for name, p in (("IFEval", ifeval), ("IFBench", ifbench))]
    line = (f"**IFEval gain carried over to IFBench: {verdict}** ({why}). Prompt-level strict, paired over the same "
            f"prompts: {parts[0]}; {parts[1]}. A change counts only where its 95% interval excludes zero.")
    return verdict, line


def _side(out: str, bench: str, prompt_set: Optional[str], prompts: int) -> tuple[dict, dict, list[str], dict]:
    """One benchmark of a demo folder: (base summary, fine-tuned summary, Markdown section,
    summary.json part, with the paired tests under ``paired``). Both folders must hold that
    benchmark's runs. ``prompt_set`` ``None``: the one the base summary names."""
    folders = [f"{out}/{bench}_base", f"{out}/{bench}_sft"]
    base, sft = (load_summary(d) for d in folders)
    one_benchmark(list(zip(folders, (base, sft))), expected=bench)
    pair = compare_dirs(*folders)
    prompt_set = prompt_set or base.get("prompt_set") or "?"
    lines = ["", f"## {BENCHMARKS[bench]}", "",
             f"Prompts: {'all' if prompts == 0 else f'first {prompts}'} of `{prompt_set}` "
             f"({base.get('num_prompts', '?')} scored).", ""] + before_after(base, sft, pair, BIGGER_SET.get(bench, ""))
    if bench == "ifeval":
        where = [ln for ln in (threshold_line(base, "Base"), threshold_line(sft, "Fine-tuned")) if ln]
        lines += [""] + where if where else []
    pb, ps = strict_counts(base), strict_counts(sft)
    obj = {"base": {m: base[m] for m in METRIC_NAMES}, "sft": {m: sft[m] for m in METRIC_NAMES},
           "intervals": {"base": base.get("intervals"), "sft": sft.get("intervals")},
           "paired": pair["paired"] if pair else None,
           "per_type_strict": {i: {"base": pb.get(i), "sft": ps.get(i)} for i in sorted(set(pb) | set(ps))}}
    return base, sft, lines, obj


FIRST_SEED = 42  # train_hw_parallel.py's default --seed (the Trainer's): the demo's own run


def seed_folders(out: str, seeds: int) -> list[tuple[int, str]]:
    """(seed, IFEval folder) of each training of a demo run with ``SEEDS=seeds``: the demo's
    own run (seed 42, ``ifeval_sft``) and ``ifeval_sft_seedS`` for S = 43 ... 42 + seeds - 1."""
    return [(FIRST_SEED, f"{out}/ifeval_sft")] + [(s, f"{out}/ifeval_sft_seed{s}")
                                                  for s in range(FIRST_SEED + 1, FIRST_SEED + seeds)]


def seeds_section(out: str, seeds: int, metric: str = "prompt_level_strict_acc") -> tuple[list[str], dict]:
    """Training noise beside evaluation noise (issue 37 point 5): each seed's ``metric`` on
    IFEval with its 95% interval and its paired test against the base model, then the spread
    across seeds (mean, SD, range) beside the largest evaluation half-width. Returns the
    Markdown lines and the ``summary.json`` part (``runs``: one entry per seed; ``spread``).
    Raises :class:`ResultError` for a seed's missing or invalid summary."""
    base_dir = f"{out}/ifeval_base"
    rows, lines = [], ["", f"## Training noise: {seeds} seeds", "",
                       "Each seed trained the same data and settings; each row is that checkpoint on the same IFEval "
                       "prompts, paired against the base model.", "",
                       f"| seed | {metric} [95% CI] | vs base: fixed / broken | change [95% CI] | p |", "|---|---|---|---|---|"]
    for seed, folder in seed_folders(out, seeds):
        s = load_summary(folder)
        pair = compare_dirs(base_dir, folder)
        p = pair["paired"][metric] if pair else None
        ci = ((s.get("intervals") or {}).get(metric) or {}).get("ci95")
        rows.append({"name": Path(folder).name, "config": "demo", "seed": seed, metric: s[metric], "ci95": ci,
                     "vs_base": p})
        vs = (f"{p['fixed']} / {p['broken']} | {stats.points(p['diff'])} {stats.ci_points(p['ci95'])} | {p['p_value']:.2g}"
              if p else "- | - | no paired test")
        lines.append(f"| {seed} | {s[metric]:.4f} {ci_text(s, metric, percent=False)} | {vs} |")
    spread = seed_spread(rows, ("config",), metric)[0]
    half = spread["eval_half_width"]
    sd = "n/a" if spread["sd"] is None else f"{spread['sd']:.4f}"
    lines += ["", f"Across seeds: mean {spread['mean']:.4f}, SD {sd}, range {spread['min']:.4f}-{spread['max']:.4f} "
              f"(width {spread['max'] - spread['min']:.4f}); one run's evaluation 95% half-width is at most "
              + ("n/a" if half is None else f"{half:.4f}") + ". A difference between two settings smaller than "
              "either is not evidence that one setting is better."]
    return lines, {"metric": metric, "runs": rows, "spread": spread}


def demo_summary(out: str, run: str, full: bool, prompt_set: str, prompts: int, max_tokens: int,
                 data: str, ifbench_prompts: int = 0, seeds: int = 1) -> tuple[str, dict]:
    """(``summary.md`` text, ``summary.json`` object) of a demo folder ``out`` holding
    ``ifeval_base/``, ``ifeval_sft/``, ``ckpt/RUN/``, ``report/`` and ``stage_times.tsv``
    (stage name, seconds; one per line), and ``ifbench_base/``, ``ifbench_sft/`` when
    ``ifbench_prompts`` > 0 (the first that many IFBench prompts were scored; 0: IFBench
    was not part of the demo). The other arguments are the demo's settings, quoted in the
    text. Each benchmark's section gives the 95% intervals, the paired tests of the per-prompt
    records (``eval_results_*.jsonl``; "no paired test" without them) and, for IFEval, the
    course threshold. The JSON keeps IFEval's numbers at the top level (``base``, ``sft``,
    ``intervals``, ``paired``, ``per_type_strict``) and IFBench's under ``ifbench``, with the verdict of
    :func:`carried_over` under ``carried_over`` (both ``None`` without IFBench), and under
    ``precision`` the training precision (``ckpt/RUN/run_plan.json``) and the generation
    dtype (the base summary's), ``None`` where a file does not say. With ``seeds`` > 1 the
    demo trained that many seeds and scored each on IFEval (:func:`seeds_section`; under
    ``seeds`` in the JSON, else ``None``). Raises
    :class:`ResultError` for a missing or invalid summary or a run of the wrong benchmark."""
    base, sft, ifeval_lines, ifeval_obj = _side(out, "ifeval", prompt_set, prompts)
    ifbench_obj = carried = None
    ifbench_lines: list[str] = []
    if ifbench_prompts:
        ib_base, ib_sft, ifbench_lines, ifbench_obj = _side(out, "ifbench", None, ifbench_prompts)
        verdict, line = carried_over((ifeval_obj["paired"] or {}).get("prompt_level_strict_acc"),
                                     (ifbench_obj["paired"] or {}).get("prompt_level_strict_acc"))
        ifbench_lines += ["", "## Did the IFEval gain carry over?", "", line]
        carried = {"verdict": verdict, "line": line}
    seed_lines, seeds_obj = seeds_section(out, seeds) if seeds > 1 else ([], None)
    with open(f"{out}/stage_times.tsv", encoding="utf-8") as f:
        times = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    losses = logged_losses(f"{out}/ckpt/{run}")
    pngs = sorted(glob.glob(f"{out}/ckpt/{run}/*.png"))
    reports = sorted(glob.glob(f"{out}/report/*.md"))
    benches = ("ifeval", "ifbench") if ifbench_prompts else ("ifeval",)
    summaries = [f"{out}/{b}_{side}/summary.json" for b in benches for side in ("base", "sft")]
    plan = Path(out, "ckpt", run, "run_plan.json")
    precision = {"training": json.loads(plan.read_text())["plan"].get("precision") if plan.is_file() else None,
                 "generation": base.get("dtype")}
    lines = ["# Demo summary", "",
             f"Mode: {'full (course configuration)' if full else 'CPU demo'}; max_tokens {max_tokens}; "
             f"training data `{data}`; benchmarks: IFEval{', IFBench' if ifbench_prompts else ''}; "
             f"precision: training {precision['training'] or 'unknown'}, generation {precision['generation'] or 'unknown'}."]
    lines += ifeval_lines + ifbench_lines + seed_lines
    lines += ["", "## Training and time", "",
              "Training: " + (f"{len(losses)} logged losses, first {losses[0]:.4f}, last {losses[-1]:.4f}"
                              if losses else "no logged loss found"),
              "", "| stage | seconds |", "|---|---|"] + [f"| {k} | {v} |" for k, v in times]
    lines += ["", "Files:", f"- reports: {', '.join(reports) or 'missing'}",
              f"- loss curve: {', '.join(pngs) or 'missing'}",
              f"- summaries: {', '.join(summaries)}",
              f"- fine-tuned checkpoint: {out}/ckpt/{run}"]
    obj = {**ifeval_obj, "ifbench": ifbench_obj, "carried_over": carried,
           "stage_seconds": {k: int(v) for k, v in times}, "losses": losses,
           "report": reports, "loss_curve": pngs, "precision": precision, "seeds": seeds_obj}
    return "\n".join(lines) + "\n", obj


def _num(x, fmt: str = ".2f") -> str:
    return "n/a" if x is None else format(x, fmt)


def simulator_report(out: str, assistant: str, full: bool = False, n_dialogues: int = 3) -> str:
    """``simulator.md`` of a ``scripts/simulator_demo.sh`` folder: the held-out split, the
    measures base vs simulator with their counts (``measures.json`` of
    ``scripts/simulator_eval.py``), stage times and load, and the first ``n_dialogues``
    dialogues (``dialogues/dialogues.jsonl``). Raises ``OSError``/``KeyError`` for a missing
    or incomplete folder."""
    m = json.loads(Path(out, "measures.json").read_text(encoding="utf-8"))
    split = json.loads(Path(out, "split", "split.json").read_text(encoding="utf-8"))
    dialogues = [json.loads(x) for x in Path(out, "dialogues", "dialogues.jsonl").read_text(encoding="utf-8").splitlines()]
    times = [x.split("\t") for x in Path(out, "stage_times.tsv").read_text().splitlines() if x.strip()]
    load = [x.split("\t") for x in Path(out, "load.tsv").read_text().splitlines() if x.strip()] \
        if Path(out, "load.tsv").exists() else []
    losses = logged_losses(f"{out}/ckpt/simulator")
    L, B, R, D = m["user_turn_loss"], m["back_translation"], m["role_confusion"], m["diversity"]
    g = R.get("generated_user")
    lines = ["# User simulator", "",
             f"Mode: {'full (course scale)' if full else 'CPU demo'}. Data `{split['data']}` (sha256 "
             f"{split['data_sha256'][:12]}): {split['n_train']} records trained on with `--mask_mode reverse`, "
             f"{split['n_heldout']} held out ({m['heldout']['multi_turn']} multi-turn, "
             f"{m['heldout']['single_turn_pairs']} single-turn pairs used), listed in `split/split.json`. "
             f"Base model and role judge `{m['models']['base']}`; simulator `{m['models']['simulator']}`; "
             f"assistant in the dialogues `{assistant}`.", "",
             "Training: " + (f"{len(losses)} logged losses, first {losses[0]:.4f}, last {losses[-1]:.4f}"
                             if losses else "no logged loss found"), "",
             "## Measures, base vs simulator (held-out data)", "",
             "| measure | base | simulator | count |", "|---|---|---|---|",
             f"| user-turn loss (nats/token) | {_num(L['base']['loss'], '.3f')} | {_num(L['simulator']['loss'], '.3f')} | "
             f"{L['base']['tokens']} tokens, {L['base']['conversations']} conversations |",
             f"| user-turn perplexity | {_num(L['base']['perplexity'])} | {_num(L['simulator']['perplexity'])} | |",
             f"| back-translation {B['metric']} | {_num(B.get('base'), '.1f')} | {_num(B.get('simulator'), '.1f')} | "
             f"{B['pairs']} pairs |", "",
             "## Role confusion (reads as an assistant answer)", "",
             f"Judge: the base model; a text reads as an assistant answer when the judge finds it more likely as "
             f"the assistant's turn than as the user's "
             f"({'on its own' if not R['history_messages'] else 'after the same last %d history messages' % R['history_messages']}"
             f", {R.get('dtype', 'float32')}). Validated when real assistant and real user turns differ by at least "
             f"{R['min_gap']:.0%}: {'yes' if R['validated'] else 'NO (no rate is reported for generated turns)'}.", "",
             "| turns | n | reads as assistant |", "|---|---|---|",
             f"| real user (held out) | {R['real_user']['n']} | {_num(R['real_user']['rate'], '.0%')} |",
             f"| real assistant (held out) | {R['real_assistant']['n']} | {_num(R['real_assistant']['rate'], '.0%')} |",
             f"| generated user (simulator) | {g['n'] if g else 'n/a'} | {_num(g['rate'], '.0%') if g else 'n/a'} |", "",
             "## Diversity of user turns", "",
             f"Repeats: the turn has {D['phrase']}.", "",
             "| user turns | n | distinct-1 | distinct-2 | repeats previous | empty | mean words |", "|---|---|---|---|---|---|---|"]
    for key, name in (("generated_user", "generated (simulator)"), ("real_heldout_user", "real (held out)")):
        x = D[key]
        lines.append(f"| {name} | {x['turns']} | {_num(x['distinct_1'])} | {_num(x['distinct_2'])} | "
                     f"{_num(x['repeats_previous'], '.0%')} | {x['empty']} | {_num(x['mean_words'], '.1f')} |")
    if "six_measures" in m:
        from smolsft.simulator.six_measures import report_lines

        lines += [""] + report_lines(m["six_measures"], m["dialogues"])
    lines += ["", "## Back-translation examples", ""]
    for e in B.get("examples", []):
        lines += [f"- answer: {e['answer'][:160]!r}", f"  - real request: {e['real_request'][:160]!r}",
                  f"  - base: {e['base'][:160]!r}", f"  - simulator: {e['simulator'][:160]!r}"]
    lines += ["", f"## Dialogues (first {min(n_dialogues, len(dialogues))} of {len(dialogues)})", ""]
    who = {"data": "opening", "assistant": "assistant model", "simulator": "simulator"}
    for d in dialogues[:n_dialogues]:
        lines += [f"### Dialogue {d['dialogue']} (from {d['source']}; ended by {d.get('ended_by', 'limit')})", ""]
        for msg in d["messages"]:
            body = msg["content"].strip() or "*(empty)*"
            lines += [f"**{msg['role']}** ({who[msg['author']]}):", ""] + ["> " + x for x in body.splitlines()] + [""]
    lines += ["## Time", "", "| stage | seconds |", "|---|---|"] + [f"| {k} | {v} |" for k, v in times]
    if load:
        lines += ["", "Load average (1, 5, 15 min): " + "; ".join(f"{k} {v}" for k, v in load)]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo-summary", help="write DEMO_OUT/summary.md and summary.json (scripts/demo.sh)",
                       description="Before/after metrics and per-type changes on IFEval (and IFBench), whether the "
                                   "IFEval gain carried over to IFBench, training losses and stage times of a "
                                   "demo folder, written to DEMO_OUT/summary.md and DEMO_OUT/summary.json.")
    d.add_argument("out", metavar="DEMO_OUT", help="the demo's output folder")
    d.add_argument("--run", default="demo", help="training run name: the checkpoint is DEMO_OUT/ckpt/RUN")
    d.add_argument("--full", action="store_true", help="the demo ran in its course configuration")
    d.add_argument("--prompt_set", required=True, help="IFEval prompt file the runs answered")
    d.add_argument("--prompts", type=int, default=0, help="first N prompts of the set (0 = all)")
    d.add_argument("--max_tokens", type=int, required=True, help="generation budget per answer")
    d.add_argument("--data", required=True, help="training data file")
    d.add_argument("--ifbench_prompts", type=int, default=0,
                   help="the first N IFBench prompts were scored in DEMO_OUT/ifbench_base and ifbench_sft "
                        "(0 = IFBench was not part of the demo)")
    d.add_argument("--seeds", type=int, default=1,
                   help="the demo trained this many seeds (42, 43, ...), each scored in DEMO_OUT/ifeval_sft[_seedS]")
    sm = sub.add_parser("simulator", help="write OUT/simulator.md (scripts/simulator_demo.sh)",
                        description="The user simulator's measures before/after with counts, role confusion, "
                                    "diversity, three dialogues and stage times, written to OUT/simulator.md.")
    sm.add_argument("out", metavar="OUT", help="the simulator demo's output folder")
    sm.add_argument("--assistant", required=True, help="the assistant checkpoint of the dialogues")
    sm.add_argument("--full", action="store_true", help="the demo ran at course scale")
    args = ap.parse_args(argv)

    if args.command == "simulator":
        try:
            text = simulator_report(args.out, args.assistant, args.full)
        except (OSError, KeyError, ValueError) as e:
            raise SystemExit(f"[report] error: {args.out}: {e}") from None
        Path(args.out, "simulator.md").write_text(text, encoding="utf-8")
        print(text, end="")
        print(f"[report] wrote {args.out}/simulator.md")
        return
    try:
        text, obj = demo_summary(args.out, args.run, args.full, args.prompt_set, args.prompts, args.max_tokens,
                                 args.data, args.ifbench_prompts, args.seeds)
    except (ResultError, OSError) as e:
        raise SystemExit(f"[report] error: {e}") from None
    with open(f"{args.out}/summary.md", "w", encoding="utf-8") as f:
        f.write(text)
    with open(f"{args.out}/summary.json", "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
    print(text, end="")
    print(f"[report] wrote {args.out}/summary.md and {args.out}/summary.json")


if __name__ == "__main__":
    main()
