"""Reports on training and evaluation runs: the metric names, reading a run's results, and
the tables and charts made from them. One place for what ``ifeval/compare.py``,
``scripts/sweep.py``, ``scripts/demo.sh``, ``scripts/plot_loss.py`` and
``train_hw_parallel.py`` show:

* ``METRICS`` / ``METRIC_NAMES``: the four accuracy metrics, named as in a scored run's
  ``summary.json`` (``ifeval/scoring.py`` writes them), with short labels. An
  instruction-following benchmark scored the IFEval way (IFEval, IFBench) has these four;
  functions that title a table or chart take the benchmark's name.
* :func:`load_summary`: a scored result folder's ``summary.json``, checked.
* :func:`read_curve`, :func:`logged_losses`, :func:`plot_loss_curve`: the training loss
  from a run's ``trainer_state.json`` (the Trainer's ``log_history``).
* :func:`metrics_table`, :func:`per_type_table`, :func:`plot_accuracy`: several scored runs
  side by side, each change relative to the first run (Markdown, percentages).
* :func:`before_after`, :func:`demo_summary`: the demo's ``summary.md`` / ``summary.json``.

This module imports neither lm-eval nor matplotlib at import time (lm-eval alone takes
seconds to import; matplotlib is imported when a chart is drawn).

CLI (the summary step of ``scripts/demo.sh``)::

    python report.py demo-summary demo_out --run demo --prompt_set ifeval/data/sampled_input_data.jsonl \\
        --prompts 0 --max_tokens 256 --data data/demo_sft.json
"""
from __future__ import annotations

import argparse
import glob
import json
import os
from pathlib import Path
from typing import Optional

# (name in summary.json, label for tables and charts)
METRICS = (("prompt_level_strict_acc", "prompt strict"), ("inst_level_strict_acc", "instruction strict"),
           ("prompt_level_loose_acc", "prompt loose"), ("inst_level_loose_acc", "instruction loose"))
METRIC_NAMES = tuple(name for name, _ in METRICS)
LOSS_CURVE_PNG = "loss_curve.png"


class ResultError(ValueError):
    """A result folder that cannot be reported on (the message names the file)."""


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
    with the change from the first run."""
    base = summaries[0]
    lines = ["| run | prompt set | prompts | max_tokens | " + " | ".join(label for _, label in METRICS) + " |",
             "|---|---|---:|---:|" + "---:|" * len(METRICS)]
    for i, (s, name) in enumerate(zip(summaries, names)):
        vals = [pct(s[k]) + ("" if i == 0 else delta(s[k], base[k])) for k in METRIC_NAMES]
        lines.append(f"| {name} | {s.get('prompt_set') or '?'} | {s.get('num_prompts', '?')} | "
                     f"{s.get('max_tokens') if s.get('max_tokens') is not None else '?'} | " + " | ".join(vals) + " |")
    return lines


def per_type_table(summaries: list[dict], names: list[str], mode: str) -> list[str]:
    """Markdown rows: ``mode`` (strict or loose) accuracy per instruction type in %, one
    column per run, with the change from the first run."""
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
            vals.append(pct(v) + ("" if i == 0 else delta(v, base)))
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


def before_after(base: dict, after: dict) -> list[str]:
    """Markdown: the four metrics before and after with the change (4 decimals), then the
    strict passed/total per instruction type with the change in passed instructions."""
    pb, pa = strict_counts(base), strict_counts(after)
    lines = ["| metric | base | fine-tuned | change |", "|---|---|---|---|"]
    for m in METRIC_NAMES:
        lines.append(f"| {m} | {base[m]:.4f} | {after[m]:.4f} | {after[m] - base[m]:+.4f} |")
    lines += ["", "Per instruction type (strict, passed/total):", "",
              "| instruction | base | fine-tuned | change |", "|---|---|---|---|"]
    for inst in sorted(set(pb) | set(pa)):
        (a, n), (b, n2) = pb.get(inst, (0, 0)), pa.get(inst, (0, 0))
        lines.append(f"| {inst} | {a}/{n} | {b}/{n2} | {b - a:+d} |")
    return lines


def demo_summary(out: str, run: str, full: bool, prompt_set: str, prompts: int, max_tokens: int,
                 data: str) -> tuple[str, dict]:
    """(``summary.md`` text, ``summary.json`` object) of a demo folder ``out`` holding
    ``ifeval_base/``, ``ifeval_sft/``, ``ckpt/RUN/``, ``report/`` and ``stage_times.tsv``
    (stage name, seconds; one per line). The other arguments are the demo's settings,
    quoted in the text. Raises :class:`ResultError` for a missing or invalid summary."""
    base, sft = load_summary(f"{out}/ifeval_base"), load_summary(f"{out}/ifeval_sft")
    with open(f"{out}/stage_times.tsv", encoding="utf-8") as f:
        times = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    losses = logged_losses(f"{out}/ckpt/{run}")
    pngs = sorted(glob.glob(f"{out}/ckpt/{run}/*.png"))
    reports = sorted(glob.glob(f"{out}/report/*.md"))
    lines = ["# Demo summary", "",
             f"Mode: {'full (course configuration)' if full else 'CPU demo'}; prompts: "
             f"{'all' if prompts == 0 else f'first {prompts}'} of `{prompt_set}` "
             f"({base.get('num_prompts', '?')} scored), max_tokens {max_tokens}; training data `{data}`.", ""]
    lines += before_after(base, sft)
    lines += ["", "Training: " + (f"{len(losses)} logged losses, first {losses[0]:.4f}, last {losses[-1]:.4f}"
                                  if losses else "no logged loss found"),
              "", "| stage | seconds |", "|---|---|"] + [f"| {k} | {v} |" for k, v in times]
    lines += ["", "Files:", f"- report: {', '.join(reports) or 'missing'}",
              f"- loss curve: {', '.join(pngs) or 'missing'}",
              f"- IFEval summaries: {out}/ifeval_base/summary.json, {out}/ifeval_sft/summary.json",
              f"- fine-tuned checkpoint: {out}/ckpt/{run}"]
    pb, ps = strict_counts(base), strict_counts(sft)
    obj = {"base": {m: base[m] for m in METRIC_NAMES}, "sft": {m: sft[m] for m in METRIC_NAMES},
           "per_type_strict": {i: {"base": pb.get(i), "sft": ps.get(i)} for i in sorted(set(pb) | set(ps))},
           "stage_seconds": {k: int(v) for k, v in times}, "losses": losses,
           "report": reports, "loss_curve": pngs}
    return "\n".join(lines) + "\n", obj


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo-summary", help="write DEMO_OUT/summary.md and summary.json (scripts/demo.sh)",
                       description="Before/after metrics, per-type changes, training losses and stage times of a "
                                   "demo folder, written to DEMO_OUT/summary.md and DEMO_OUT/summary.json.")
    d.add_argument("out", metavar="DEMO_OUT", help="the demo's output folder")
    d.add_argument("--run", default="demo", help="training run name: the checkpoint is DEMO_OUT/ckpt/RUN")
    d.add_argument("--full", action="store_true", help="the demo ran in its course configuration")
    d.add_argument("--prompt_set", required=True, help="IFEval prompt file the runs answered")
    d.add_argument("--prompts", type=int, default=0, help="first N prompts of the set (0 = all)")
    d.add_argument("--max_tokens", type=int, required=True, help="generation budget per answer")
    d.add_argument("--data", required=True, help="training data file")
    args = ap.parse_args(argv)

    try:
        text, obj = demo_summary(args.out, args.run, args.full, args.prompt_set, args.prompts, args.max_tokens,
                                 args.data)
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
