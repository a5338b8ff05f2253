"""The names shared by the scorer (``ifeval/scoring.py``) and the reports (``smolsft/report/reports.py``):
the four accuracy metrics of a scored run's ``summary.json`` and the benchmarks scored the
IFEval way. The metric names and definitions are IFEval's (Zhou et al. 2023, arXiv
2311.07911): the fraction of prompts whose every instruction is followed, and the fraction of
instructions followed, each under the strict and the loose check."""
from __future__ import annotations

# (name in summary.json, label for tables and charts)
METRICS = (("prompt_level_strict_acc", "prompt strict"), ("inst_level_strict_acc", "instruction strict"),
           ("prompt_level_loose_acc", "prompt loose"), ("inst_level_loose_acc", "instruction loose"))
METRIC_NAMES = tuple(name for name, _ in METRICS)
BENCHMARKS = {"ifeval": "IFEval", "ifbench": "IFBench"}  # --benchmark value -> name in reports


class ResultError(ValueError):
    """A result folder that cannot be reported on (the message names the file)."""


def benchmark_of(summary: dict, where: str = "summary") -> str:
    """The benchmark key (of ``BENCHMARKS``) a summary or sweep row belongs to: its
    ``benchmark`` field, ``"ifeval"`` when it has none (written before IFBench was added).
    Raises :class:`ResultError` naming ``where`` for an unknown value."""
    b = summary.get("benchmark", "ifeval")
    if b not in BENCHMARKS:
        raise ResultError(f"{where}: unknown benchmark {b!r} (expected one of {sorted(BENCHMARKS)})")
    return b

# The course's pass mark on prompt-level strict accuracy (IFEval, 100-prompt set).
COURSE_THRESHOLD = 0.22
# Where a larger prompt set is, for a change too small to detect on the one scored.
BIGGER_SET = {"ifeval": "the 541-prompt set is `--input_data ifeval/data/input_data.jsonl` away",
              "ifbench": "IFBench's whole set is 294 prompts (run_ifeval.py --benchmark ifbench without --limit)"}
