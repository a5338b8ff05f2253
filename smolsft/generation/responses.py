"""The IFEval response store: one JSONL file of answers per model and run, its settings
sidecar, resume after a killed run, and durable appends.

File format (one JSON object per line, the course's ``{"prompt", "response"}`` plus):

    {"key": 1001, "prompt": "...", "response": "...", "num_tokens": 57, "finish_reason": "stop"}

``key`` is the IFEval prompt key (int); ``num_tokens`` counts the answer's generated
tokens including the stop token; ``finish_reason`` is ``"stop"`` (a stop id ended it),
``"length"`` (it ran to its token limit) or ``"too_long"`` (the prompt left no room in the
model's length, or ``--too_long skip``: not answered, empty response, scored as failed).
A prompt answered with fewer new tokens than ``--max_tokens`` (``--too_long clip``) has
``"max_new_tokens"``. Lines are in the order answers finished, not prompt order.

The sidecar ``responses_<model>.settings.json`` records the settings that decide the
answers (:data:`GENERATION_KEYS`: model and a fingerprint of its weights, token limit,
sampling, system message, seed, benchmark, engine, engine version, dtype). A run that finds answers made with other settings stops
with an error naming each difference instead of mixing two runs in one file.

One writer per folder: :func:`smolsft.lock.folder_lock` holds the folder's writer lock
(``smolsft/lock.py``, shared with training and sweeps) for as long as a run writes there;
a second run is refused at once with a message naming the first.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Optional

from smolsft.files import file_sha256

# Settings that change the answers; a resumed run must use the same ones (benchmark: IFEval
# and IFBench answers never share a file; model_fingerprint: a checkpoint retrained into the
# same folder is another model).
GENERATION_KEYS = ("model_path", "model_fingerprint", "max_tokens", "temperature", "top_p", "system_message", "seed",
                   "benchmark", "engine", "engine_version", "dtype", "too_long")
# Keys added after sidecars were first written, with the value every older file was made
# with (before --too_long existed no prompt was too long for our checks: none was clipped).
LEGACY_DEFAULTS = {"too_long": "clip"}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


TOO_LONG_REASON = "too_long"  # finish_reason of a skipped prompt's record


class ResponseFileError(ValueError):
    """A response file that cannot be resumed or scored as it is (a bad line, a key
    answered twice); the message names the file, the line and the key."""


def checkpoint_fingerprint(model_path: str) -> Optional[str]:
    """sha256 (16 hex digits) over the names and contents of a local checkpoint's weight files
    and config.json, so that answers of a checkpoint retrained into the same folder are not
    resumed as its own. ``None`` for a hub id (no local folder: the id names the weights).
    Reads every weight file once."""
    folder = Path(model_path)
    if not folder.is_dir():
        return None
    files = sorted(f for f in folder.iterdir() if f.is_file() and (f.suffix in WEIGHT_SUFFIXES or f.name == "config.json"))
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name}\0{file_sha256(f)}\n".encode())
    return h.hexdigest()[:16]


def model_label(model_path: str) -> str:
    """A file-name-safe name for a model: its folder name (``org/name`` hub ids give
    ``name``); a ``checkpoint-N`` folder is prefixed with its run folder, since every
    run has a ``checkpoint-500``."""
    p = Path(str(model_path).rstrip("/\\"))
    name = p.name or "model"
    if re.fullmatch(r"checkpoint-\d+", name) and p.parent.name:
        name = f"{p.parent.name}_{name}"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def default_responses_path(output_dir: str | os.PathLike, model_path: str) -> Path:
    return Path(output_dir) / f"responses_{model_label(model_path)}.jsonl"


def settings_path(responses: Path) -> Path:
    return responses.with_name(responses.stem + ".settings.json")


def read_settings(responses: Path) -> dict:
    """The sidecar's settings, ``{}`` when there is none."""
    sp = settings_path(responses)
    return json.loads(sp.read_text()) if sp.is_file() else {}


def read_answered(path: Path) -> dict[int, dict]:
    """Records already in a response file, by key (an absent file gives ``{}``).

    A last line without its newline that is not valid JSON is the trace of a run killed
    mid-write: it is cut off the file (with a message) so the prompt is answered again.
    Any other bad line, and a key answered twice, raise :class:`ResponseFileError`
    naming the file, the line and the key."""
    if not path.exists():
        return {}
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    done: dict[int, dict] = {}
    first_line: dict[int, int] = {}
    offset = 0
    for lineno, line in enumerate(lines, 1):
        is_last_unterminated = lineno == len(lines) and not raw.endswith(b"\n")
        if line.strip():
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict) or not isinstance(rec.get("key"), int) or "response" not in rec:
                    raise ValueError("expected an object with an integer 'key' and a 'response'")
            except ValueError as e:
                if is_last_unterminated:
                    print(f"[ifeval] {path}:{lineno}: incomplete last line (killed run?), dropping it "
                          f"and answering that prompt again", file=sys.stderr)
                    with open(path, "r+b") as f:
                        f.truncate(offset)
                    break
                raise ResponseFileError(f"{path}:{lineno}: not a response record ({e}); fix or delete that "
                                        f"line to resume") from None
            if rec["key"] in done:
                raise ResponseFileError(
                    f"{path}:{lineno}: prompt key {rec['key']} answered twice (first on line {first_line[rec['key']]}): "
                    f"two runs wrote this file at once; delete one of the two lines (or the file and its "
                    f"{settings_path(path).name}) and rerun")
            done[rec["key"]] = rec
            first_line[rec["key"]] = lineno
        offset += len(line) + 1
    return done


def check_settings(responses: Path, settings: dict, n_done: int, write: bool = True, keys=GENERATION_KEYS,
                   tag: str = "ifeval") -> None:
    """Refuse (``SystemExit`` naming every difference) to add answers to a response file
    whose ``n_done`` answers were made with other ``keys`` settings (default
    :data:`GENERATION_KEYS`; a key an older sidecar lacks counts as its
    :data:`LEGACY_DEFAULTS` value); then, with ``write``, write the sidecar
    (:func:`write_settings`). ``tag`` names the component in messages."""
    sp = settings_path(responses)
    old = read_settings(responses)
    if old:
        was, now = {**LEGACY_DEFAULTS, **old}, {**LEGACY_DEFAULTS, **settings}
        diff = {k: (was.get(k), now.get(k)) for k in keys if was.get(k) != now.get(k)}
        if diff and n_done:
            lines = "; ".join(f"{k}: file {a!r} vs now {b!r}" for k, (a, b) in diff.items())
            raise SystemExit(f"[{tag}] {responses} holds {n_done} answers made with other settings ({lines}). "
                             f"Use another --output_dir, or delete {responses} and {sp} to start over.")
    elif n_done:
        print(f"[{tag}] {responses}: {n_done} answers but no {sp.name}; resuming with the current settings",
              file=sys.stderr)
    if write:
        write_settings(responses, settings)


def write_settings(responses: Path, settings: dict) -> None:
    """Write ``settings`` to the sidecar (keys the sidecar has and ``settings`` lacks are kept)."""
    sp = settings_path(responses)
    old = read_settings(responses)
    sp.parent.mkdir(parents=True, exist_ok=True)
    sp.write_text(json.dumps({**old, **settings}, indent=2) + "\n")


class ResponseWriter:
    """Appends answer records; each :meth:`write` is flushed and fsynced before it
    returns, so a killed run loses at most the chunk being generated.

    Nothing is created before the first :meth:`write`: the file is opened then, after
    ``before_first_write()`` (e.g. writing the settings sidecar) has run, so a run whose
    engine fails to start leaves no empty response file or sidecar behind."""

    def __init__(self, path: Path, before_first_write=None):
        self.path, self.f, self._before = path, None, before_first_write

    def write(self, records: list[dict]) -> None:
        if self.f is None:
            if self._before is not None:
                self._before()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.f = open(self.path, "a", encoding="utf-8")
        for r in records:
            self.f.write(json.dumps(r, ensure_ascii=False) + "\n")
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        if self.f is not None:
            self.f.close()


def records_with_keys(path: Path) -> dict[int, dict]:
    """The records of a response file that carry an integer key, by key (for a file
    already validated by the scorer; course-format records without a key are left out,
    and so are lines that are not JSON)."""
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("key"), int):
                out[rec["key"]] = rec
    return out


def too_long_counts(records: dict[int, dict], keys) -> dict:
    """What summary.json says about prompts that did not fit, from the response records
    of the scored ``keys``: clipped ones carry ``max_new_tokens``, skipped ones
    ``finish_reason == "too_long"``."""
    recs = [records[k] for k in keys if k in records]
    clipped = sorted(r["key"] for r in recs if "max_new_tokens" in r)
    skipped = sorted(r["key"] for r in recs if r.get("finish_reason") == TOO_LONG_REASON)
    return {"num_clipped_too_long": len(clipped), "clipped_too_long_keys": clipped,
            "num_skipped_too_long": len(skipped), "skipped_too_long_keys": skipped}


RUN_INFO = "run_info.json"


def write_run_info(out: Path, stats: dict, max_tokens: int) -> Path:
    """OUT/run_info.json: how this run generated (what ifeval/run_ifeval.py writes, scripts/gpu_check_summary.py reads):
    ``device``, ``dtype`` and ``precision`` (bf16/fp16/fp32), ``backend``, ``engine_version``,
    answers ``generated`` now and ``resumed``, their ``tokens``, ``seconds`` (engine start
    included), ``startup_s``, ``tokens_per_s`` of generation (None when nothing was generated),
    ``hit_max_tokens`` and ``max_tokens``. Written whole (a temporary file, then renamed)."""
    gen_s = stats["seconds"] - stats["startup_s"]
    info = {**{k: stats[k] for k in ("device", "dtype", "backend", "engine_version", "generated", "resumed",
                                      "tokens", "seconds", "startup_s", "hit_max_tokens")},
            "precision": {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}.get(stats["dtype"], stats["dtype"]),
            "tokens_per_s": stats["tokens"] / gen_s if stats["generated"] and gen_s > 0 else None,
            "max_tokens": max_tokens}
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (RUN_INFO + ".tmp")
    tmp.write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    tmp.replace(out / RUN_INFO)
    return out / RUN_INFO
