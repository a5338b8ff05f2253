"""Checks of training settings before anything starts, shared by ``scripts/sweep.py``
(every value of every axis, before the first configuration trains), ``python -m
smolsft.launch`` (scripts/sft.sh's variables and the arguments it passes on, through
:func:`sft_sh_problems`) and ``train_hw_parallel.py`` (its parsed arguments). Each check
returns every problem at once, each naming the setting and its value, so one message lists
all bad values. Choices (``--train_turns``, ``--cpu_attention``, ``--precision``) are
checked against the same constants the training script's parser takes its ``choices`` from.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

from smolsft.chat.format import TRAIN_TURNS
from smolsft.hardware.cpu import ATTENTIONS, PRECISIONS
from smolsft.hardware.rules import LAUNCHERS, divisibility_problem


class SettingsError(ValueError):
    """One or more bad settings; the message has one line per bad value."""


def scheduler_names() -> list[str]:
    """The ``--lr_scheduler_type`` values transformers accepts (its ``SchedulerType``)."""
    from transformers.trainer_utils import SchedulerType

    return [s.value for s in SchedulerType]


def _number(text, kind: type) -> Optional[float]:
    try:
        v = float(text) if kind is float else int(str(text).strip())
    except (TypeError, ValueError):
        return None
    return v


# check name -> (type, predicate on the parsed value, what a good value is)
_RULES: dict[str, tuple[type, Callable[[float], bool], str]] = {
    "learning_rate": (float, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0"),
    "num_train_epochs": (float, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0"),
    "max_steps": (int, lambda v: True, "an integer (<= 0: whole epochs)"),
    "warmup_ratio": (float, lambda v: math.isfinite(v) and 0 <= v < 1, "a share of the steps in [0, 1)"),
    # --warmup_steps in transformers 5: below 1 a share of the steps, else a number of steps
    "warmup_steps": (float, lambda v: math.isfinite(v) and v >= 0 and (v < 1 or v == int(v)),
                     "a share in [0, 1) or a whole number of steps"),
    "total_bsz": (int, lambda v: v >= 1, "an integer >= 1"),
    "bsz_per_dev": (int, lambda v: v >= 1, "an integer >= 1"),
    "devices": (int, lambda v: v >= 1, "an integer >= 1"),
    "model_max_length": (int, lambda v: v >= 2, "an integer >= 2 (tokens)"),
    "max_rounds": (int, lambda v: v >= 0, "an integer >= 0 (0 keeps all)"),
    "save_steps": (float, lambda v: math.isfinite(v) and v > 0 and (v < 1 or v == int(v)),
                   "a share in (0, 1) or a whole number of steps >= 1"),
    "prompts": (int, lambda v: v >= 0, "an integer >= 0 (0 = all)"),
    "max_tokens": (int, lambda v: v >= 1, "an integer >= 1"),
    "nnodes": (int, lambda v: v >= 1, "an integer >= 1"),
    "count": (int, lambda v: v >= 1, "an integer >= 1"),
    "node_rank": (int, lambda v: v >= 0, "an integer >= 0"),
    "port": (int, lambda v: 1 <= v <= 65535, "a TCP port (1-65535)"),
}
# check name -> the values the run's own parser accepts (train_hw_parallel.py's `choices` are these constants)
_CHOICES: dict[str, tuple] = {"train_turns": tuple(TRAIN_TURNS), "cpu_attention": tuple(ATTENTIONS),
                              "precision": tuple(PRECISIONS), "launcher": tuple(LAUNCHERS)}


def value_problem(check: str, value, label: str) -> Optional[str]:
    """A line naming ``label`` and ``value`` when ``value`` fails the ``check`` rule
    (a key of ``_RULES``, or ``lr_scheduler_type``), else None."""
    if check == "lr_scheduler_type":
        names = scheduler_names()
        return None if str(value) in names else f"{label} {value!r}: not a scheduler; one of {', '.join(names)}"
    if check in _CHOICES:
        good = _CHOICES[check]
        return None if str(value) in good else f"{label} {value!r}: expected one of {', '.join(good)}"
    kind, ok, good = _RULES[check]
    v = _number(value, kind)
    if v is None or not ok(v):
        return f"{label} {value!r}: expected {good}"
    return None


def settings_problems(values: dict, labels: Optional[dict] = None) -> list[str]:
    """Every problem of ``values`` (check name -> value; absent or None: not checked),
    each line naming the setting by ``labels[check]`` (default ``--check``), plus the
    problems of combinations: a total batch that the devices x per-device batch do not
    divide, and zero epochs without ``max_steps`` (it would train nothing and report
    the base model as the result)."""
    labels = labels or {}
    label = lambda k: labels.get(k, f"--{k}")  # noqa: E731
    problems = [p for k, v in values.items() if v is not None
                if (p := value_problem(k, v, label(k)))]
    bad = {p.split(" ", 1)[0] for p in problems}
    num = {k: _number(v, _RULES[k][0]) for k, v in values.items() if v is not None and k in _RULES
           and label(k) not in bad}
    if all(k in num for k in ("total_bsz", "bsz_per_dev", "devices")):
        problem = divisibility_problem(num["total_bsz"], num["devices"], num["bsz_per_dev"],
                                       (label("total_bsz"), label("bsz_per_dev")))
        if problem:
            problems.append(problem)
    if num.get("num_train_epochs") == 0 and num.get("max_steps", -1) <= 0:
        problems.append(f"{label('num_train_epochs')} {values['num_train_epochs']} with "
                        f"{label('max_steps')} {values.get('max_steps', 'unset')}: trains nothing")
    return problems


def check_settings(values: dict, labels: Optional[dict] = None, what: str = "settings") -> None:
    """Raise :class:`SettingsError` listing every problem of :func:`settings_problems`."""
    problems = settings_problems(values, labels)
    if problems:
        raise SettingsError(f"bad {what}:\n  " + "\n  ".join(problems))


# sft.sh variable -> check; flags passed on to train_hw_parallel.py -> check
SFT_SH_VARIABLES = {"TOTALBSZ": "total_bsz", "BSZPERDEV": "bsz_per_dev", "NDEV": "devices", "LR": "learning_rate",
                    "EPOCHS": "num_train_epochs", "WARMUP": "warmup_steps", "MAXLEN": "model_max_length",
                    "MAXROUNDS": "max_rounds", "SAVESTEPS": "save_steps", "TRAINTURNS": "train_turns",
                    "PRECISION": "precision", "LAUNCHER": "launcher", "CPU_RANKS": "count",
                    "NUM_GPUS": "count", "NNODES": "nnodes", "NODE_RANK": "node_rank", "MASTER_PORT": "port"}
PASSED_FLAGS = ("max_steps", "num_train_epochs", "learning_rate", "warmup_steps", "lr_scheduler_type",
                "model_max_length", "max_rounds", "save_steps", "train_turns", "cpu_attention", "precision")


def sft_sh_problems(assignments: list[str], passed: list[str]) -> list[str]:
    """The problems of sft.sh's ``NAME=value`` variables, overridden by the flags in
    ``passed`` (the arguments it hands to train_hw_parallel.py)."""
    values, labels = {}, {}
    for a in assignments:
        name, _, value = a.partition("=")
        if name not in SFT_SH_VARIABLES:
            raise SystemExit(f"[settings] error: unknown sft.sh variable {name!r}")
        if value != "":
            values[SFT_SH_VARIABLES[name]] = value
            labels[SFT_SH_VARIABLES[name]] = name
    i = 0
    while i < len(passed):
        flag, eq, value = passed[i].partition("=")
        name = flag[2:] if flag.startswith("--") else None
        if name in PASSED_FLAGS and (eq or i + 1 < len(passed)):
            if not eq:
                value, i = passed[i + 1], i + 1
            values[name], labels[name] = value, f"--{name}"
        i += 1
    return settings_problems(values, labels)
