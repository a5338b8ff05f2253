"""Uncertainty of IFEval/IFBench scores and of before/after changes (docs/evaluation.md,
"Intervals and paired tests"; Evan Miller, "Adding Error Bars to Evals", arXiv 2411.00640).

* :func:`prompt_interval`: a prompt-level accuracy ``k`` of ``n`` with its Wilson 95% interval.
* :func:`instruction_interval`: an instruction-level accuracy with a standard error
  clustered by prompt (the instructions of one prompt share one answer).
* :func:`paired_prompts`: two runs over the same prompts: fixed, broken, the change, its
  exact 95% interval and the exact two-sided McNemar p-value, and :func:`prompts_to_detect`.
* :func:`paired_instructions`: the same at instruction level, clustered by prompt.
* :func:`type_test`: the exact McNemar test of one instruction type's verdicts.
* :func:`change_words`, :func:`versus_threshold`: the words a report may use for them.

Verdicts are booleans (pass = True); every interval is a ``(low, high)`` pair of floats
in units of accuracy (0..1; a change: -1..1). Errors: ``ValueError`` for empty or
mismatched inputs.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np


def _stats():
    """scipy.stats, imported when a statistic is computed: importing this module (the
    reports do, and training imports the reports) needs no scipy."""
    from scipy import stats

    return stats


ALPHA = 0.05  # two-sided level of every test
LEVEL = 1 - ALPHA  # every interval of the reports


def _z(level: float = LEVEL) -> float:
    return float(_stats().norm.ppf(0.5 + level / 2))


def prompt_interval(k: int, n: int) -> dict:
    """``{"value", "ci95": [low, high], "n", "method": "wilson"}`` for ``k`` of ``n``
    prompts passed; the Wilson score interval (scipy ``binomtest.proportion_ci``). Raises
    ``ValueError`` for ``n`` < 1 or ``k`` outside 0..n."""
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"prompt_interval: {k} of {n} prompts is not a proportion")
    ci = _stats().binomtest(k, n).proportion_ci(LEVEL, method="wilson")
    return {"value": k / n, "ci95": [float(ci.low), float(ci.high)], "n": n, "method": "wilson"}


def clustered_mean(clusters: Sequence[Sequence[float]]) -> tuple[float, float, int]:
    """(mean, clustered standard error, number of values) of the values of every cluster.

    mean = sum(y) / N over all N values; SE^2 = C/(C-1) * sum_c (sum_{i in c} (y_ci - mean))^2 / N^2
    for C clusters (Miller 2024 eq. 5, with the usual C/(C-1) small-sample factor; one value
    per cluster gives the ordinary SE of a mean). Raises ``ValueError`` when there are no
    values."""
    sums = np.array([float(np.sum(c)) for c in clusters])
    sizes = np.array([len(c) for c in clusters], dtype=float)
    total = sizes.sum()
    if total == 0:
        raise ValueError("clustered_mean: no values")
    mean = sums.sum() / total
    c = len(sums)
    if c < 2:
        return float(mean), float("nan"), int(total)
    resid = sums - mean * sizes  # per cluster: sum of (y - mean)
    se = math.sqrt(c / (c - 1) * float(np.sum(resid ** 2))) / total
    return float(mean), se, int(total)


def _normal_ci(mean: float, se: float, lo: float, hi: float) -> list[float]:
    if math.isnan(se):
        return [lo, hi]
    return [max(lo, mean - _z() * se), min(hi, mean + _z() * se)]


def instruction_interval(verdicts: Sequence[Sequence[bool]]) -> dict:
    """``{"value", "ci95", "se", "n" (instructions), "prompts", "method": "clustered"}`` for
    the instruction verdicts of each prompt (one list per prompt): the normal interval of
    :func:`clustered_mean`, cut to [0, 1]."""
    mean, se, n = clustered_mean(verdicts)
    return {"value": mean, "ci95": _normal_ci(mean, se, 0.0, 1.0), "se": se, "n": n, "prompts": len(verdicts),
            "method": "clustered"}


def prompts_to_detect(fixed: int, broken: int, n: int, alpha: float = ALPHA, power: float = 0.8) -> Optional[int]:
    """Prompts a paired test at two-sided level ``alpha`` needs to detect, with probability
    ``power``, a change as large as the observed one (``None`` when no change was seen).

    Connor (1987), Biometrics 43:207-211, for McNemar's test with discordant share
    psi = (fixed + broken) / n and change delta = (fixed - broken) / n:
    n* = (z_{1-alpha/2} sqrt(psi) + z_{power} sqrt(psi - delta^2))^2 / delta^2, rounded up."""
    if fixed == broken:
        return None
    psi, delta = (fixed + broken) / n, (fixed - broken) / n
    za, zb = _stats().norm.ppf(1 - alpha / 2), _stats().norm.ppf(power)
    return math.ceil((za * math.sqrt(psi) + zb * math.sqrt(max(psi - delta ** 2, 0.0))) ** 2 / delta ** 2)


def mcnemar(fixed: int, broken: int) -> tuple[float, list[float]]:
    """(exact two-sided McNemar p-value, exact 95% interval of fixed / (fixed + broken)):
    scipy ``binomtest(fixed, fixed + broken, 0.5)`` and its Clopper-Pearson interval;
    ``(1.0, [0, 1])`` when nothing changed."""
    if fixed + broken == 0:
        return 1.0, [0.0, 1.0]
    t = _stats().binomtest(fixed, fixed + broken, 0.5)
    ci = t.proportion_ci(LEVEL, method="exact")
    return float(t.pvalue), [float(ci.low), float(ci.high)]


def paired_prompts(before: Sequence[bool], after: Sequence[bool]) -> dict:
    """Two runs' prompt verdicts over the same prompts (same order):
    ``{"n", "fixed", "broken", "diff", "ci95", "p_value", "prompts_to_detect"}``.

    diff = (fixed - broken) / n. The interval is the exact conditional one dual to the exact
    McNemar test: with m = fixed + broken and [a, b] the Clopper-Pearson interval of
    fixed / m, ci95 = [m/n (2a - 1), m/n (2b - 1)]; it excludes 0 exactly when p < 0.05
    (it treats m as given; [0, 0] when no prompt changed). Raises ``ValueError`` for
    lists of different lengths or empty ones."""
    a, b = np.asarray(before, dtype=bool), np.asarray(after, dtype=bool)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"paired_prompts: {a.size} and {b.size} verdicts are not one set of paired prompts")
    n, fixed, broken = int(a.size), int(np.sum(~a & b)), int(np.sum(a & ~b))
    p, (lo, hi) = mcnemar(fixed, broken)
    m = fixed + broken
    ci = [m / n * (2 * lo - 1), m / n * (2 * hi - 1)] if m else [0.0, 0.0]
    return {"n": n, "fixed": fixed, "broken": broken, "diff": (fixed - broken) / n, "ci95": ci, "p_value": p,
            "prompts_to_detect": prompts_to_detect(fixed, broken, n)}


def paired_instructions(before: Sequence[Sequence[bool]], after: Sequence[Sequence[bool]]) -> dict:
    """Two runs' instruction verdicts, one list per prompt (same prompts, same order):
    ``{"n" (instructions), "prompts", "fixed", "broken", "diff", "ci95", "se", "p_value"}``;
    the per-instruction change (after - before) averaged, its SE clustered by prompt
    (:func:`clustered_mean`), the normal interval and the two-sided normal p-value
    (1.0 when nothing changed). Raises ``ValueError`` when a prompt's lists differ in length."""
    if len(before) != len(after):
        raise ValueError(f"paired_instructions: {len(before)} and {len(after)} prompts")
    diffs, fixed, broken = [], 0, 0
    for i, (x, y) in enumerate(zip(before, after)):
        if len(x) != len(y):
            raise ValueError(f"paired_instructions: prompt {i} has {len(x)} and {len(y)} instruction verdicts")
        d = np.asarray(y, dtype=int) - np.asarray(x, dtype=int)
        fixed, broken = fixed + int(np.sum(d > 0)), broken + int(np.sum(d < 0))
        diffs.append(d)
    mean, se, n = clustered_mean(diffs)
    if fixed + broken == 0 or math.isnan(se):
        p = 1.0
    else:
        p = float(2 * _stats().norm.sf(abs(mean) / se)) if se > 0 else 0.0
    return {"n": n, "prompts": len(diffs), "fixed": fixed, "broken": broken, "diff": mean,
            "ci95": _normal_ci(mean, se, -1.0, 1.0) if fixed + broken else [0.0, 0.0], "se": se, "p_value": p}


def type_test(fixed: int, broken: int) -> dict:
    """One instruction type's paired verdicts: ``{"fixed", "broken", "p_value", "marked"}``;
    marked when the exact McNemar p-value is below 0.05."""
    p, _ = mcnemar(fixed, broken)
    return {"fixed": fixed, "broken": broken, "p_value": p, "marked": p < ALPHA}


def false_marks(types: int) -> float:
    """Marks expected by chance alone across ``types`` tests at 5% when nothing changed."""
    return ALPHA * types


def points(x: float) -> str:
    """A change in percentage points with its sign: ``+4.2``."""
    return f"{100 * x:+.1f}"


def ci_points(ci: Sequence[float]) -> str:
    return f"[{points(ci[0])}, {points(ci[1])}]"


def change_words(paired: dict, unit: str = "prompts", bigger_set: str = "") -> str:
    """What a paired result (:func:`paired_prompts` / :func:`paired_instructions`) allows
    one to say: ``"improved"`` / ``"fell"`` with the change and its interval where the
    interval excludes 0, else ``"no change detectable with N prompts (95% CI [a, b] points)"``
    with the prompts that would detect it (prompt level) and ``bigger_set`` (a hint on a
    larger prompt set). ``unit``: ``"prompts"``, ``"instructions"`` (clustered by prompt, so
    its count is of prompts too) or another item's name (the simulator's ``"items"``)."""
    lo, hi = paired["ci95"]
    span = f"{points(paired['diff'])} points, 95% CI {ci_points(paired['ci95'])}, p = {paired['p_value']:.2g}"
    if lo > 0 or hi < 0:
        return f"{'improved' if lo > 0 else 'fell'} ({span})"
    n = paired.get("prompts", paired["n"])
    counted = "prompts" if unit in ("prompts", "instructions") else unit  # instruction tests count prompts
    words = f"no change detectable with {n} {counted} (95% CI {ci_points(paired['ci95'])} points, " \
            f"p = {paired['p_value']:.2g})"
    if unit == "prompts":
        need = paired.get("prompts_to_detect")
        words += ("; no prompt changed its verdict" if paired["fixed"] + paired["broken"] == 0 else
                  "; fixed and broken balance, so no number of prompts would detect this change" if need is None else
                  f"; about {need} prompts would detect a change of this size (5% level, 80% power)")
        if bigger_set:
            words += f"; {bigger_set}"
    return words


def versus_threshold(ci: Sequence[float], threshold: float) -> str:
    """``"above"``, ``"below"`` or ``"straddles"``: where an interval lies against a threshold."""
    if ci[0] > threshold:
        return "above"
    if ci[1] < threshold:
        return "below"
    return "straddles"


def run_intervals(strict: Sequence[dict], loose: Sequence[dict]) -> dict:
    """``{metric: {"ci95", "n", "method", ...}}`` for the four metrics of a scored run, from
    its strict and loose records (``follow_all_instructions``, ``follow_instruction_list``,
    as ``ifeval/scoring.py`` writes them): prompt level by :func:`prompt_interval`,
    instruction level by :func:`instruction_interval`. ``{}`` for a run with no prompt."""
    if not strict:
        return {}
    out = {}
    for mode, recs in (("strict", strict), ("loose", loose)):
        p = prompt_interval(sum(bool(r["follow_all_instructions"]) for r in recs), len(recs))
        i = instruction_interval([r["follow_instruction_list"] for r in recs])
        out[f"prompt_level_{mode}_acc"] = {k: p[k] for k in ("ci95", "n", "method")}
        out[f"inst_level_{mode}_acc"] = {k: i[k] for k in ("ci95", "n", "prompts", "se", "method")}
    return {k: out[k] for k in ("prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc",
                                "inst_level_loose_acc")}
