"""Before/after over the same prompts, from two scored result folders' per-prompt records
(``eval_results_strict.jsonl``, ``eval_results_loose.jsonl`` of ``ifeval/scoring.py``):
the paired tests of ``smolsft/evaluation/stats.py`` for the four metrics and for each
instruction type. Used by ``ifeval/compare.py``, the demo summary and ``scripts/sweep.py``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from smolsft.evaluation import stats
from smolsft.evaluation.metrics import ResultError
from smolsft.files import iter_jsonl

RECORD_FILES = {"strict": "eval_results_strict.jsonl", "loose": "eval_results_loose.jsonl"}


def read_verdicts(result_dir: str | Path) -> Optional[dict]:
    """``{"strict": {key: record}, "loose": {key: record}}`` of a result folder (records
    with ``key``, ``instruction_id_list``, ``follow_instruction_list``,
    ``follow_all_instructions``); ``None`` when either file is absent (a folder scored
    before the files existed). Raises :class:`ResultError` naming the file and line of a
    record without those fields."""
    d = Path(result_dir)
    out = {}
    for mode, name in RECORD_FILES.items():
        p = d / name
        if not p.is_file():
            return None
        recs = {}
        for lineno, r in iter_jsonl(p, f"{mode} results", ResultError):
            if not all(k in r for k in ("key", "follow_all_instructions", "follow_instruction_list")):
                raise ResultError(f"{p}:{lineno}: record without key/follow_all_instructions/follow_instruction_list")
            recs[r["key"]] = r
        out[mode] = recs
    return out


def paired_runs(before: dict, after: dict) -> dict:
    """The paired comparison of two :func:`read_verdicts` results over the prompts both
    hold: ``{"n", "paired": {metric: stats.paired_prompts / stats.paired_instructions},
    "per_type": {mode: {type: stats.type_test}}}``. Raises :class:`ResultError` when they
    share no prompt, or a prompt's instruction lists differ (other prompt files)."""
    keys = [k for k in before["strict"] if k in after["strict"] and k in before["loose"] and k in after["loose"]]
    if not keys:
        raise ResultError("the two runs share no prompt key; they cannot be paired")
    paired, per_type = {}, {}
    for mode in ("strict", "loose"):
        a, b = before[mode], after[mode]
        for k in keys:
            if a[k].get("instruction_id_list") != b[k].get("instruction_id_list"):
                raise ResultError(f"prompt {k} has other instructions in the two runs (other prompt files?)")
        paired[f"prompt_level_{mode}_acc"] = stats.paired_prompts(
            [bool(a[k]["follow_all_instructions"]) for k in keys], [bool(b[k]["follow_all_instructions"]) for k in keys])
        paired[f"inst_level_{mode}_acc"] = stats.paired_instructions(
            [a[k]["follow_instruction_list"] for k in keys], [b[k]["follow_instruction_list"] for k in keys])
        counts: dict[str, list[int]] = {}
        for k in keys:
            for t, x, y in zip(a[k].get("instruction_id_list") or [], a[k]["follow_instruction_list"],
                               b[k]["follow_instruction_list"]):
                c = counts.setdefault(t, [0, 0])
                c[0] += int(y and not x)
                c[1] += int(x and not y)
        per_type[mode] = {t: stats.type_test(f, br) for t, (f, br) in sorted(counts.items())}
    order = ("prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc", "inst_level_loose_acc")
    return {"n": len(keys), "paired": {m: paired[m] for m in order}, "per_type": per_type}


def compare_dirs(before_dir: str | Path, after_dir: str | Path) -> Optional[dict]:
    """:func:`paired_runs` of two result folders; ``None`` when either lacks its records."""
    a, b = read_verdicts(before_dir), read_verdicts(after_dir)
    return None if a is None or b is None else paired_runs(a, b)
