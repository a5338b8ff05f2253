"""Markdown for intervals and paired tests (``smolsft/evaluation/stats.py``,
``smolsft/evaluation/paired.py``), shared by ``ifeval/compare.py``, the demo summary and
``scripts/sweep.py``. Numbers are percentages; changes are percentage points."""
from __future__ import annotations

from typing import Optional

from smolsft.evaluation import stats
from smolsft.evaluation.metrics import COURSE_THRESHOLD, METRICS


def ci_text(summary: dict, metric: str, percent: bool = True) -> str:
    """``"[15.9, 32.1]"``: the metric's 95% interval in % (``percent`` False: as fractions,
    ``"[0.1590, 0.3210]"``), ``""`` when the summary has none (scored before intervals were
    recorded)."""
    ci = (summary.get("intervals") or {}).get(metric, {}).get("ci95")
    if not ci:
        return ""
    return f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if percent else f"[{ci[0]:.4f}, {ci[1]:.4f}]"


def paired_table(paired: dict, bigger_set: str = "") -> list[str]:
    """Markdown rows, one per metric: n, fixed, broken, change, its 95% interval, p and the
    words :func:`stats.change_words` allows."""
    lines = ["| metric | n | fixed | broken | change (points) | 95% CI (points) | p | reading |",
             "|---|---:|---:|---:|---:|---|---:|---|"]
    for m, label in METRICS:
        p = paired[m]
        unit = "prompts" if m.startswith("prompt") else "instructions"
        lines.append(f"| {label} | {p['n']} | {p['fixed']} | {p['broken']} | {stats.points(p['diff'])} | "
                     f"{stats.ci_points(p['ci95'])} | {p['p_value']:.2g} | "
                     f"{stats.change_words(p, unit, bigger_set if m == 'prompt_level_strict_acc' else '')} |")
    lines += ["", "Prompt level: exact McNemar test and its exact interval; instruction level: normal interval "
                  "with the standard error clustered by prompt (docs/evaluation.md)."]
    return lines


def threshold_line(summary: dict, name: str) -> Optional[str]:
    """Where the prompt-level strict interval of a run lies against the course's threshold;
    ``None`` when the summary has no interval."""
    ci = (summary.get("intervals") or {}).get("prompt_level_strict_acc", {}).get("ci95")
    if not ci:
        return None
    where = stats.versus_threshold(ci, COURSE_THRESHOLD)
    words = {"above": "lies above", "below": "lies below", "straddles": "straddles"}[where]
    return (f"{name}: prompt-level strict {100 * summary['prompt_level_strict_acc']:.1f}%, 95% CI "
            f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}], {words} the course threshold of {100 * COURSE_THRESHOLD:.0f}%"
            + (" (the data cannot tell whether the run passes it)" if where == "straddles" else "") + ".")


def marks_note(per_type: dict) -> str:
    """The line under a per-type table: what a mark means and how many to expect by chance."""
    k = len(per_type)
    return (f"`*`: that type's instruction verdicts changed by more than chance (exact McNemar, p < 0.05, against "
            f"the first run). Across {k} types tested at 5%, about {stats.false_marks(k):.2f} marks are expected "
            "by chance alone when nothing changed.")
