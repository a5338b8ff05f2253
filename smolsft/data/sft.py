"""Training data for ``train_hw_parallel.py``: read chat records, mask them once, cache
the result, and batch it with as little padding as possible.

Pipeline::

    read_records(path)            JSON / JSONL file, a folder of them, or a hub dataset id
      -> normalize_conversation   utils: roles, rounds, max_rounds (drops counted by reason)
      -> masking (Parts 1-4)      conversation_func / reverse_conversation_func
      -> training labels          position 0 set to -100 (never a target; see unpadded_features)
      -> unpadded features        concatenated int32 arrays + offsets, cached as .npz
      -> ConversationDataset      one unpadded sample per item, with its length
      -> PadToLongestCollator     pads each batch to its longest sample (multiple of 8)

The cache is a NumPy ``.npz`` read with ``allow_pickle=False``: loading it can never
execute code, even from a shared folder. Its name is a hash of everything that decides
its content (data bytes, tokenizer and chat template, ``max_length``, truncation,
``max_rounds``, mask mode and the source of the preprocessing code), so a change to any
of them builds a new one; a corrupt file is rebuilt with a message. Clear it with
``rm -rf .cache/sft_data`` (or the ``--data_cache_dir`` you chose).
"""
from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections import Counter
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
from tqdm import tqdm


from smolsft.chat.format import IGNORE_TOKEN_ID, ConversationFormatError, normalize_conversation
from smolsft.files import REPO_ROOT, file_sha256, iter_jsonl
from smolsft.chat.tokenization import pad_token_id, tokenizer_fingerprint

DEFAULT_CACHE_DIR = REPO_ROOT / ".cache" / "sft_data"
CONVERSATION_FIELDS = ("conversations", "messages")
DATA_SUFFIXES = (".json", ".jsonl")
# Bumped by hand only for changes in meaning the source hash cannot see (e.g. a new
# dependency's behaviour); the source files themselves are hashed into every key.
CACHE_FORMAT = 1
# Whole files whose every line bears on features (the tokenizer is fingerprinted separately).
_CODE_FILES = ("smolsft/chat/format.py", "smolsft/chat/spans.py", "smolsft/simulator/intent.py",
               "conversation_func.py", "reverse_conversation_func.py")


class DataFormatError(ValueError):
    """Unreadable training data; the message names the file and line (or record)."""


# ------------------------------------------------------------------------- reading
def data_files(data_path: str) -> list[Path]:
    """The JSON/JSONL files behind ``data_path`` (a file or a folder, sorted), or ``[]``
    when it is neither and should be tried as a hub dataset id."""
    p = Path(data_path).expanduser()
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in DATA_SUFFIXES)
        if not files:
            raise DataFormatError(f"{p}: folder holds no .json or .jsonl file")
        return files
    if p.is_file():
        return [p]
    # A hub id looks like "owner/name"; anything path-like that does not exist is a typo.
    if p.suffix in DATA_SUFFIXES or data_path.startswith(("/", ".", "~")) or data_path.count("/") > 1:
        raise DataFormatError(f"{data_path}: no such data file or folder")
    return []


def _jsonl_records(path: Path) -> Iterator[tuple[str, object]]:
    for lineno, value in iter_jsonl(path, "training data", DataFormatError, objects_only=False):
        yield f"{path}:{lineno}", value


def _file_records(path: Path) -> Iterator[tuple[str, object]]:
    """(location, record) pairs of one file. A ``.json`` file holds a list of records;
    one whose parse stops with "Extra data" on a later line is read as JSON lines
    (files of the course's era use either form under a ``.json`` name)."""
    if path.suffix == ".jsonl":
        yield from _jsonl_records(path)
        return
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataFormatError(f"{path}:{line}: not UTF-8 (byte 0x{raw[e.start]:02x} at column {col}); "
                              f"re-encode the file as UTF-8") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data" and e.lineno > 1:
            yield from _jsonl_records(path)
            return
        raise DataFormatError(f"{path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise DataFormatError(f"{path}: expected a list of records, got {type(data).__name__}")
    for i, rec in enumerate(data):
        yield f"{path} record {i}", rec


def read_records(data_path: str) -> Iterator[tuple[str, object]]:
    """Every raw record with a location string for error messages ("file:line" for JSON
    lines, "file record i" for a JSON list, "hub_id[split] row i" for a hub dataset)."""
    files = data_files(data_path)
    for f in files:
        yield from _file_records(f)
    if not files:
        ds = _load_hub(data_path)
        for i, rec in enumerate(ds):
            yield f"{data_path}[train] row {i}", rec


def _load_hub(data_id: str):
    import datasets

    try:
        return datasets.load_dataset(data_id, split="train")
    except Exception as e:  # the library raises many types (offline, missing, auth)
        raise DataFormatError(f"{data_id}: not a local file or folder, and loading it as a hub dataset failed: {e}") from e


def data_fingerprint(data_path: str) -> str:
    """Content hash of the data: file bytes (each file and its name, for a folder), or
    the datasets library's own fingerprint of a hub dataset's train split."""
    files = data_files(data_path)
    if not files:
        return "hub-" + _load_hub(data_path)._fingerprint
    if len(files) == 1:
        return file_sha256(files[0])
    root = Path(data_path)
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.relative_to(root)}\0{file_sha256(f)}\n".encode())
    return h.hexdigest()


def record_messages(rec: object, where: str, conversation_field: str) -> list:
    """The turn list of one record: ``conversation_field``, else the other of
    ``conversations`` / ``messages``. A record without one is an error naming it, and
    so is a record holding both with different contents (one of them would be dropped
    unseen; an empty list beside a non-empty one counts as different): both with the
    same contents are one conversation."""
    if not isinstance(rec, dict):
        raise DataFormatError(f"{where}: expected an object with a '{conversation_field}' list, got {type(rec).__name__}")
    present = [k for k in (conversation_field,) + tuple(k for k in CONVERSATION_FIELDS if k != conversation_field)
               if k in rec]
    if not present:
        raise DataFormatError(f"{where}: no '{conversation_field}' (or {'/'.join(CONVERSATION_FIELDS)}) field; "
                              f"keys: {sorted(rec)}")
    differing = [k for k in present[1:] if rec[k] != rec[present[0]]]
    if differing:
        raise DataFormatError(f"{where}: holds both '{present[0]}' ({_turns(rec[present[0]])}) and "
                              f"'{differing[0]}' ({_turns(rec[differing[0]])}) with different contents; keep one")
    return rec[present[0]]


def _turns(value) -> str:
    return f"{len(value)} turns" if isinstance(value, list) else type(value).__name__


# ------------------------------------------------------------------------- masking
def mask_function(mask_mode: str):
    """The course's public masking function the trainer uses: Parts 1-2
    (``assistant``: ``conversation_func.conversation_to_unpadded``) or Parts 3-4
    (``reverse``, user turns trained: ``reverse_conversation_func.reverse_conversation_to_unpadded``),
    called as ``f(messages, tokenizer, max_length, truncation, train_turns=...)``. These are
    the only course functions the library calls (the course's files sit above it)."""
    if mask_mode == "assistant":
        from conversation_func import conversation_to_unpadded

        return conversation_to_unpadded
    if mask_mode == "reverse":
        from reverse_conversation_func import reverse_conversation_to_unpadded

        return reverse_conversation_to_unpadded
    raise ValueError(f"mask_mode must be 'assistant' or 'reverse', got {mask_mode!r}")


def unpadded_features(messages, tokenizer, max_length: int, truncation: str, mask_mode: str,
                      train_turns: str = "all", intent: Optional[str] = None, end_marker: bool = False):
    """``{"input_ids", "labels"}`` (1-D ``torch.long``) of one normalized conversation
    for training: truncated, not padded; ``None`` when the masking returns nothing (an
    empty conversation). ``train_turns`` (``all``/``last``) and per-message ``train``
    flags: ``conversation_func.trained_messages``.

    The label at position 0 is always -100: nothing predicts the first token of a row,
    so it is never a target. The masking (Parts 1-4, whose outputs the course's golden
    files fix) labels it when a left-truncated window starts inside a trained turn; left
    there, it would be counted in the Trainer's ``num_items_in_batch`` and in the
    trained-token statistics without being a target.

    ``intent`` (the record's ``"intent"``) and ``end_marker`` are the user simulator's
    (``reverse`` only; ``reverse_conversation_func.reverse_messages``); the assistant
    masking never sees the user's intent.
    """
    extra = dict(intent=intent, end_marker=end_marker) if mask_mode == "reverse" and (intent or end_marker) else {}
    feats = mask_function(mask_mode)(messages, tokenizer, max_length, truncation, train_turns=train_turns, **extra)
    if feats is not None and len(feats["labels"]) > 0:
        feats["labels"] = feats["labels"].clone()
        feats["labels"][0] = IGNORE_TOKEN_ID
    return feats


_UNTRUNCATED = 1 << 62  # a max_length no conversation reaches


def _trained(feats: dict) -> int:
    return int((feats["labels"] != IGNORE_TOKEN_ID).sum())


def _process(args) -> tuple[Optional[tuple], Counter, Optional[str]]:
    """One record to (ids, labels) or None, the drop counts it caused, and an error
    message for a malformed record (raised by the caller, in order). Each dropped
    record is counted once, under its cause: ``dropped_empty_after_normalization`` (no
    turn left; the ``turn_*``/``round_*`` counters say which turns went),
    ``dropped_no_turn_trained_by_flags`` (untruncated, no label is trained: the
    ``"train"`` flags turned off every turn the role rule and ``train_turns`` picked) or
    ``dropped_no_trained_token_after_truncation`` (trained before the cut to
    ``max_length``, none after it)."""
    where, rec, tokenizer, cfg = args
    stats: Counter = Counter()
    try:
        turns = record_messages(rec, where, cfg["conversation_field"])
        # Reverse masking trains user turns: a final user turn nothing answers is kept.
        msgs = normalize_conversation(turns, cfg["max_rounds"], stats, keep_final_user=cfg["mask_mode"] == "reverse")
        sim = _simulator_fields(rec, where, cfg)
    except (DataFormatError, ConversationFormatError) as e:
        return None, stats, str(e) if isinstance(e, DataFormatError) else f"{where}: {e}"
    if not msgs:
        stats["dropped_empty_after_normalization"] += 1
        return None, stats, None
    # Masked once untruncated; a sample longer than max_length is masked again with the
    # truncation (the masking's own windowing), and what the cut cost is counted.
    feats = unpadded_features(msgs, tokenizer, _UNTRUNCATED, cfg["truncation"], cfg["mask_mode"],
                              cfg["train_turns"], **sim)
    if feats is None:
        stats["dropped_empty_after_normalization"] += 1
        return None, stats, None
    if _trained(feats) == 0:  # before any cut: the role rule picked turns, the "train" flags unpicked them all
        stats["dropped_no_turn_trained_by_flags"] += 1
        return None, stats, None
    if len(feats["input_ids"]) > cfg["max_length"]:
        full_trained = _trained(feats)
        feats = unpadded_features(msgs, tokenizer, cfg["max_length"], cfg["truncation"], cfg["mask_mode"],
                                  cfg["train_turns"], **sim)
        stats["truncated_samples"] += 1
        stats["trained_tokens_lost_to_truncation"] += full_trained - (_trained(feats) if feats is not None else 0)
        if feats is None or _trained(feats) == 0:  # the cut took every target (e.g. --train_turns last, that turn)
            stats["dropped_no_trained_token_after_truncation"] += 1
            return None, stats, None
    return (np.asarray(feats["input_ids"], np.int32), np.asarray(feats["labels"], np.int32)), stats, None


def _simulator_fields(rec, where: str, cfg: dict) -> dict:
    """The user simulator's settings of one record (reverse masking only): its
    ``"intent"`` (a non-empty string, else DataFormatError naming the record) and the
    run's ``end_marker``."""
    if cfg["mask_mode"] != "reverse":
        return {}
    intent = rec.get("intent") if isinstance(rec, dict) else None
    if intent is not None and (not isinstance(intent, str) or not intent.strip()):
        raise DataFormatError(f"{where}: 'intent' must be a non-empty string, got {intent!r}")
    return {"intent": intent, "end_marker": cfg.get("end_marker", False)}


_WORKER_TOKENIZER = None


def _init_worker(tokenizer):
    global _WORKER_TOKENIZER
    _WORKER_TOKENIZER = tokenizer


def _process_in_worker(args):
    where, rec, cfg = args
    return _process((where, rec, _WORKER_TOKENIZER, cfg))


def build_features(data_path: str, tokenizer, max_length: int, truncation: str, max_rounds: int,
                   mask_mode: str, conversation_field: str = "conversations", workers: int = 1,
                   train_turns: str = "all", end_marker: bool = False):
    """Read, normalize and mask every record (``end_marker``: reverse masking trains the
    simulator's end-of-conversation turn, ``reverse_conversation_func.reverse_messages``). Returns ``(arrays, stats)``: ``arrays``
    holds ``input_ids``/``labels`` (int32, all samples concatenated) and ``offsets``
    (int64, sample i is ``[offsets[i], offsets[i+1])``); ``stats`` counts records read
    and kept, every drop by reason, and tokens."""
    cfg = dict(max_length=max_length, truncation=truncation, max_rounds=max_rounds,
               mask_mode=mask_mode, conversation_field=conversation_field, train_turns=train_turns,
               end_marker=end_marker)
    ids, labels, stats = [], [], Counter()
    records = read_records(data_path)
    if workers > 1:
        import multiprocessing as mp

        pool = mp.get_context("fork").Pool(workers, initializer=_init_worker, initargs=(tokenizer,))
        results = pool.imap(_process_in_worker, ((w, r, cfg) for w, r in records), chunksize=32)
    else:
        pool = None
        results = (_process((w, r, tokenizer, cfg)) for w, r in records)
    try:
        for out, s, err in tqdm(results, desc="preprocess", unit="conv", mininterval=2):
            if err:
                raise DataFormatError(err)
            stats["records_read"] += 1
            stats.update(s)
            if out is not None:
                ids.append(out[0])
                labels.append(out[1])
    finally:
        if pool is not None:
            pool.terminate()
    lengths = np.array([len(x) for x in ids], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    arrays = {
        "input_ids": np.concatenate(ids) if ids else np.zeros(0, np.int32),
        "labels": np.concatenate(labels) if labels else np.zeros(0, np.int32),
        "offsets": offsets,
    }
    stats["conversations_kept"] = len(ids)
    stats["tokens"] = int(offsets[-1])
    stats["trained_tokens"] = int((arrays["labels"] != IGNORE_TOKEN_ID).sum())
    return arrays, stats


# --------------------------------------------------------------------------- cache
def code_version() -> str:
    """Hash of the code that decides features: the chat format and the masking modules
    (whole files) and this module's feature-building functions (their source), so an
    edit elsewhere (the collator, the dataset class, logging) keeps every cache valid."""
    import inspect

    h = hashlib.sha256(str(CACHE_FORMAT).encode())
    for name in _CODE_FILES:
        p = REPO_ROOT / name
        h.update(name.encode() + b"\0" + (p.read_bytes() if p.exists() else b""))
    for fn in (record_messages, _turns, mask_function, unpadded_features, _trained, _process, build_features):
        h.update(fn.__name__.encode() + b"\0" + inspect.getsource(fn).encode())
    return h.hexdigest()[:16]


def cache_key(data_hash: str, tokenizer, max_length: int, truncation: str, max_rounds: int,
              mask_mode: str, conversation_field: str, train_turns: str = "all", end_marker: bool = False) -> dict:
    """Everything that decides the cached features, as a dict (stored in the cache and
    hashed into its file name). Per-message ``train`` flags are part of the data, so
    ``data_hash`` covers them."""
    key = {
        "data_hash": data_hash,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "max_length": int(max_length),
        "truncation": truncation,
        "max_rounds": int(max_rounds),
        "mask_mode": mask_mode,
        "conversation_field": conversation_field,
        "train_turns": train_turns,
        "code_version": code_version(),
    }
    if end_marker:  # only when set: the keys of runs without it stay as they were
        key["simulator_end_marker"] = True
    return key


def _read_cache(path: Path, key: dict):
    """Arrays and stats from a cache file, or raise ValueError saying why it is unusable."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            arrays = {k: z[k] for k in ("input_ids", "labels", "offsets")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"unreadable ({type(e).__name__}: {e})") from None
    if meta.get("key") != key:
        raise ValueError("its key does not match the current data/tokenizer/settings")
    off = arrays["offsets"]
    if off.ndim != 1 or len(off) < 1 or off[0] != 0 or np.any(np.diff(off) <= 0) or off[-1] != len(arrays["input_ids"]) \
            or len(arrays["labels"]) != len(arrays["input_ids"]):
        raise ValueError("inconsistent arrays")
    return arrays, Counter(meta["stats"])


def load_or_build(data_path: str, tokenizer, max_length: int, truncation: str = "right", max_rounds: int = 0,
                  mask_mode: str = "assistant", conversation_field: str = "conversations", workers: int = 1,
                  cache_dir: Optional[str] = None, use_cache: bool = True, log=print,
                  data_hash: Optional[str] = None, train_turns: str = "all", end_marker: bool = False):
    """Cached :func:`build_features`. Returns ``(arrays, stats, key)``; ``key`` includes
    ``data_hash`` (:func:`data_fingerprint` of ``data_path``, computed here unless the
    caller already has it) and the tokenizer fingerprint for the run manifest."""
    key = cache_key(data_hash or data_fingerprint(data_path), tokenizer, max_length, truncation, max_rounds, mask_mode,
                    conversation_field, train_turns, end_marker)
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    path = Path(cache_dir or DEFAULT_CACHE_DIR) / f"{name}.npz"
    if use_cache and path.exists():
        try:
            arrays, stats = _read_cache(path, key)
            log(f"[data] loaded cached features {path} ({len(arrays['offsets']) - 1} conversations)")
            return arrays, stats, key
        except ValueError as e:
            log(f"[data] cache {path} is stale or corrupt: {e}; rebuilding it")
    arrays, stats = build_features(data_path, tokenizer, max_length, truncation, max_rounds, mask_mode,
                                   conversation_field, workers, train_turns, end_marker)
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
        meta = json.dumps({"key": key, "stats": dict(stats)})
        np.savez(tmp, meta=np.array(meta), **arrays)
        os.replace(tmp, path)  # atomic: a reader never sees half a file
        log(f"[data] cached features in {path}")
    return arrays, stats, key


def format_stats(stats: Counter) -> str:
    """One readable line: records read/kept, every drop reason with its count, tokens,
    and the samples cut to ``max_length`` with the trained tokens (targets) the cut lost
    (also those of samples the cut left without a target), as a share of the trained
    tokens before truncation."""
    kept, read = stats.get("conversations_kept", 0), stats.get("records_read", 0)
    drops = {k: v for k, v in sorted(stats.items()) if k.startswith(("dropped_", "turn_", "round_"))}
    frac = stats.get("trained_tokens", 0) / max(stats.get("tokens", 0), 1)
    lost = stats.get("trained_tokens_lost_to_truncation", 0)
    return (f"{read} records read, {kept} conversations kept; drops: "
            + (", ".join(f"{k}={v}" for k, v in drops.items()) or "none")
            + f"; {stats.get('tokens', 0)} tokens, {frac:.1%} trained"
            + f"; truncated: {stats.get('truncated_samples', 0)} samples, {lost} trained tokens lost "
              f"({lost / max(stats.get('trained_tokens', 0) + lost, 1):.1%})")


# ------------------------------------------------------------------ dataset/batches
class ConversationDataset(torch.utils.data.Dataset):
    """Unpadded samples over the concatenated arrays (no per-sample objects in memory).
    Items are ``{"input_ids", "labels"}`` 1-D int64 tensors; ``lengths`` (tokens per
    sample) is for samplers outside the Trainer (the throughput benchmark). The Trainer's
    length-grouped sampler does not read it: it takes precomputed lengths only from a
    ``datasets.Dataset`` column and otherwise measures ``dataset[i]["input_ids"]``
    itself, one cheap slice per sample."""

    def __init__(self, arrays: dict):
        self.input_ids = torch.from_numpy(np.asarray(arrays["input_ids"], dtype=np.int64))
        self.labels = torch.from_numpy(np.asarray(arrays["labels"], dtype=np.int64))
        self.offsets = np.asarray(arrays["offsets"], dtype=np.int64)
        self.lengths = np.diff(self.offsets).tolist()

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> dict:
        s, e = int(self.offsets[i]), int(self.offsets[i + 1])
        return {"input_ids": self.input_ids[s:e], "labels": self.labels[s:e]}


class PadToLongestCollator:
    """Right-pads a batch to its longest sample, rounded up to ``multiple`` (8 keeps
    tensor-core shapes). Returns ``input_ids`` (pad id), ``labels`` (-100) and
    ``attention_mask`` (1 on tokens, 0 on padding), each ``(batch, width)`` ``torch.long``.

    Same values as transformers' ``DataCollatorForSeq2Seq(tokenizer, pad_to_multiple_of=8,
    label_pad_token_id=-100)`` with right padding (tests/data/test_sft.py checks it), but
    kept because it is far faster (``tokenizer.pad`` plus a list of NumPy arrays per batch;
    ``benchmarks/collator_speed.py``), and the library's one warns "Creating a tensor from a
    list of numpy.ndarrays is extremely slow" in every run."""

    def __init__(self, pad_id: int, multiple: int = 8):
        self.pad_id, self.multiple = pad_id, multiple

    @classmethod
    def for_tokenizer(cls, tokenizer, **kw):
        return cls(pad_token_id(tokenizer), **kw)

    def __call__(self, samples: list[dict]) -> dict:
        longest = max(len(s["input_ids"]) for s in samples)
        width = -(-longest // self.multiple) * self.multiple
        batch = {
            "input_ids": torch.full((len(samples), width), self.pad_id, dtype=torch.long),
            "labels": torch.full((len(samples), width), IGNORE_TOKEN_ID, dtype=torch.long),
            "attention_mask": torch.zeros((len(samples), width), dtype=torch.long),
        }
        for row, s in enumerate(samples):
            n = len(s["input_ids"])
            batch["input_ids"][row, :n] = torch.as_tensor(s["input_ids"])
            batch["labels"][row, :n] = torch.as_tensor(s["labels"])
            batch["attention_mask"][row, :n] = 1
        return batch
