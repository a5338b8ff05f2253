"""Paths and file reading shared by the scripts: where the repository and its assets
are, how a model or data argument is resolved, JSONL reading with ``file:line`` errors,
checksums, and NLTK's data folder."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterator

REPO_ROOT = Path(__file__).resolve().parents[1]  # smolsft/ sits in the repository root
# setup.sh writes NLTK's punkt_tab here; scripts add it to nltk's search path themselves,
# so no NLTK_DATA variable is needed.
NLTK_DATA_DIR = REPO_ROOT / "nltk_data"


def resolve_path(name_or_path: str) -> str:
    """A model folder or data file as the scripts take it: relative to the current
    directory, else relative to the repository root, else returned as is (for a model,
    a hub id)."""
    p = Path(name_or_path).expanduser()
    if p.exists():
        return str(p.resolve())
    q = REPO_ROOT / name_or_path
    if q.exists():
        return str(q.resolve())
    return name_or_path


def iter_jsonl(path: str | os.PathLike, what: str, error: type[Exception] = ValueError,
               objects_only: bool = True) -> Iterator[tuple[int, object]]:
    """Yield (line number, value) for each non-blank line of a JSONL file. A missing
    file, a directory, a line that is not UTF-8 or a malformed line raises ``error``
    with a message naming ``what`` (e.g. "IFEval prompt") or file:line. With ``objects_only`` (the default) a
    line that is not a JSON object raises too; without it, any JSON value is yielded
    for the caller to judge (``sft_data`` names such a record in its own error)."""
    p = Path(path)
    if not p.exists():
        raise error(f"{what} file not found: {p}")
    if p.is_dir():
        raise error(f"{what} path is a directory, expected a JSONL file: {p}")
    with open(p, "rb") as f:  # bytes, decoded per line, so a bad byte is named by its line
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise error(f"{p}:{lineno}: not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                            f"re-encode the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise error(f"{p}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
            if objects_only and not isinstance(obj, dict):
                raise error(f"{p}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def setup_nltk_data() -> None:
    """Put the project's punkt_tab folder on nltk's search path (before lm-eval or the
    IFEval checkers import nltk tokenizers). Harmless when the folder is absent."""
    import nltk

    for d in (NLTK_DATA_DIR, Path(os.environ.get("NLTK_DATA", "")) if os.environ.get("NLTK_DATA") else None):
        if d is not None and d.is_dir() and str(d) not in nltk.data.path:
            nltk.data.path.insert(0, str(d))


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()
