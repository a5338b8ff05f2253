"""The tables of ``scripts/sweep.py`` (``OUT/results.csv``, ``OUT/results.md``): one row per
run (configuration x seed) with its status, the metrics, the 95% interval of the plotted
metric and that run's paired test against the base model and against the best run; with
several seeds, the spread across seeds beside the evaluation interval."""
from __future__ import annotations

import csv
import statistics
from pathlib import Path
from typing import Optional

from smolsft.evaluation import stats
from smolsft.evaluation.metrics import METRIC_NAMES, ResultError
from smolsft.evaluation.paired import compare_dirs


def _cmp(a: Optional[Path], b: Path, metric: str) -> Optional[dict]:
    """The paired test of ``metric`` between two scored folders, ``None`` without records."""
    if a is None or a == b:
        return None
    try:
        pair = compare_dirs(a, b)
    except ResultError:  # other prompts (a --base of another prompt set): nothing to pair
        return None
    return pair["paired"][metric] if pair else None


def _cell(p: Optional[dict]) -> str:
    if p is None:
        return ""
    mark = " *" if p["ci95"][0] > 0 or p["ci95"][1] < 0 else ""
    return f"{stats.points(p['diff'])} {stats.ci_points(p['ci95'])} p={p['p_value']:.2g}{mark}"


def annotate(rows: list[dict], scored_dir, base_dir: Optional[Path], metric: str) -> Optional[dict]:
    """Add to each finished row (``status`` ok) its ``metric`` interval (``ci95``) and paired
    tests (``vs_base``, ``vs_best``; ``scored_dir(row)`` is its scored folder); returns the
    best row (highest ``metric``), ``None`` when no run finished."""
    ok = [r for r in rows if r.get("status", "ok") == "ok"]
    best = max(ok, key=lambda r: r[metric]) if ok else None
    for r in ok:
        r["ci95"] = ((r.get("intervals") or {}).get(metric) or {}).get("ci95")
        r["vs_base"] = _cmp(base_dir, scored_dir(r), metric)
        r["vs_best"] = _cmp(scored_dir(best), scored_dir(r), metric)
    return best


def seed_spread(rows: list[dict], axes, metric: str) -> list[dict]:
    """Per configuration with finished runs: the seeds, mean, SD (n-1) and range of
    ``metric`` across them, and the largest half-width of their 95% evaluation intervals."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("status", "ok") == "ok":
            groups.setdefault(tuple(r[k] for k in axes), []).append(r)
    out = []
    for key, rs in groups.items():
        vals = [r[metric] for r in rs]
        halves = [(r["ci95"][1] - r["ci95"][0]) / 2 for r in rs if r.get("ci95")]
        out.append({"config": rs[0].get("config", rs[0]["name"]), "seeds": len(rs), "mean": statistics.fmean(vals),
                    "sd": statistics.stdev(vals) if len(vals) > 1 else None, "min": min(vals), "max": max(vals),
                    "eval_half_width": max(halves) if halves else None})
    return out


def write_tables(rows: list[dict], out: Path, axes, metric: str, best: Optional[dict], base: Optional[dict]) -> None:
    """``results.csv`` (a run per line, paired tests as diff/low/high/p columns) and
    ``results.md`` (the same with intervals in points, the base model's line, the spread
    across seeds and what a mark means)."""
    cols = ["name", "seed", *axes, "status", "final_train_loss", "benchmark", *METRIC_NAMES, "num_prompts",
            "wall_seconds", "error"]
    extra = [f"{metric}_{x}" for x in ("ci_low", "ci_high")] + \
        [f"{w}_{x}" for w in ("vs_base", "vs_best") for x in ("diff", "ci_low", "ci_high", "p")]
    with open(out / "results.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols + extra, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            flat = dict(r)
            if r.get("ci95"):
                flat[extra[0]], flat[extra[1]] = r["ci95"]
            for which in ("vs_base", "vs_best"):
                p = r.get(which)
                if p:
                    flat.update({f"{which}_diff": p["diff"], f"{which}_ci_low": p["ci95"][0],
                                 f"{which}_ci_high": p["ci95"][1], f"{which}_p": p["p_value"]})
            w.writerow(flat)
    fmt = lambda v: "" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))  # noqa: E731
    head = ["name", "seed", *axes, "status", "final_train_loss", *METRIC_NAMES]
    md = ["| " + " | ".join(head) + f" | {metric} 95% CI | vs base (points) | vs best (points) |",
          "|" + "---|" * (len(head) + 3)]
    for r in rows:
        ci = r.get("ci95")
        status = r.get("status", "ok") if r.get("status", "ok") == "ok" else f"failed: {r.get('error', '')}"
        cells = [fmt(r.get(c)) if c != "status" else status for c in head]
        md.append("| " + " | ".join(cells) + f" | {f'[{ci[0]:.4f}, {ci[1]:.4f}]' if ci else ''} | "
                  f"{_cell(r.get('vs_base'))} | {_cell(r.get('vs_best')) if r is not best else 'best'} |")
    if base:
        ci = ((base.get("intervals") or {}).get(metric) or {}).get("ci95")
        md += ["", f"Base model `{base.get('model')}`: {metric} {base[metric]:.4f}"
               + (f", 95% CI [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "") + "."]
    n_cmp = sum(1 for r in rows if r.get("vs_base"))
    md += ["", "Paired tests over the same prompts (exact McNemar at prompt level, clustered by prompt at instruction "
               "level; docs/evaluation.md): change in points, its 95% interval and p. `*`: the interval excludes "
               f"zero. Across {n_cmp} configurations compared with the base at 5%, about "
               f"{stats.false_marks(n_cmp):.2f} marks are expected by chance alone."]
    spread = seed_spread(rows, axes, metric)
    if any(s["seeds"] > 1 for s in spread):
        md += ["", f"### {metric} across seeds (training noise) beside the evaluation interval", "",
               "| configuration | seeds | mean | SD across seeds | range | evaluation 95% half-width (largest) |",
               "|---|---:|---:|---:|---|---:|"]
        md += [f"| {s['config']} | {s['seeds']} | {s['mean']:.4f} | {fmt(s['sd'])} | {s['min']:.4f}-{s['max']:.4f} | "
               f"{fmt(s['eval_half_width'])} |" for s in spread]
    (out / "results.md").write_text("\n".join(md) + "\n")
