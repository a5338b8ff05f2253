"""The offline bundle for scripts/gpu_check.sh on a GPU machine without network.

    python scripts/gpu_bundle.py make gpu_bundle            # on a machine with PyPI access (or -h)
    python scripts/gpu_bundle.py install gpu_bundle TARGET  # on the GPU machine: wheels -> TARGET

``make DIR`` writes, into a folder that git ignores (so it travels as a carried path, not
as part of the working tree), at most 64 MiB (the most a lent machine receives):
- ``tokenizer/``: SmolLM2-135M's tokenizer files (not its weights: the check builds the
  model's configuration with random weights, scripts/random_model.py);
- ``nltk_data/tokenizers/punkt_tab``: the sentence splitter the IFEval checkers use;
- ``ifeval_data/``: the IFEval prompt files of ifeval/data/;
- ``wheels/``: the packages the check needs that the lent machine lacks (it has torch,
  transformers, accelerate, matplotlib, pytest): the IFEval scoring path (lm_eval, nltk,
  langdetect, immutabledict; ifeval/lm_eval_checkers.py keeps lm_eval's task system and
  its datasets/pandas/pyarrow out of it) and DeepSpeed with the dependencies that
  transformers does not bring. Versions: requirements.txt's pins, else the version
  installed here. Binary wheels come from PyPI for CPython ``--python_version`` (3.12,
  the lent machine's) on manylinux2014 x86_64 (``pip download --no-deps
  --only-binary=:all:``); langdetect and deepspeed publish only source archives, so they
  are downloaded as such and built here into pure-Python wheels (DeepSpeed with
  DS_BUILD_OPS=0: no compiled ops, as its PyPI install).
- ``MANIFEST.json``: every file with its size and sha256, the wheels with name and version.
The folder is built beside DIR and renamed at the end; an existing DIR is never touched.

``install DIR TARGET`` checks every wheel's sha256 against the manifest and installs the
ones whose distribution this Python does not already have with ``pip install --no-index
--no-deps --target TARGET`` (nothing is fetched). Put TARGET first on PYTHONPATH.

Errors: ``[gpu_bundle] error: ...`` naming the file, package or setting; exit status 1.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LIMIT_BYTES = 64 * 2**20
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json")
PUNKT = Path("tokenizers") / "punkt_tab"
# (distribution, built here from its source archive). The IFEval scoring path first, then
# DeepSpeed and what it imports that transformers/accelerate/torch do not install.
WHEELS = (
    ("lm_eval", False), ("nltk", False), ("langdetect", True), ("immutabledict", False),
    ("deepspeed", True), ("hjson", False), ("py-cpuinfo", False), ("msgpack", False), ("einops", False),
    ("ninja", False), ("pydantic", False), ("pydantic-core", False), ("annotated-types", False),
    ("typing-inspection", False),
)


class BundleError(Exception):
    pass


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned_versions(req_file: Path = REPO / "requirements.txt") -> dict[str, str]:
    pins = {}
    for line in req_file.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)", line.strip())
        if m:
            pins[norm(m.group(1))] = m.group(2)
    return pins


def wanted_versions() -> dict[str, str]:
    pins = pinned_versions()
    out = {}
    for name, _ in WHEELS:
        v = pins.get(norm(name))
        if v is None:
            try:
                v = version(name)
            except PackageNotFoundError:
                raise BundleError(f"{name} is neither pinned in requirements.txt nor installed here: "
                                  f"cannot choose its version (run bash setup.sh)") from None
        out[name] = v
    return out


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pip(*args: str, env: dict | None = None) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise BundleError(f"pip failed ({' '.join(args[:3])} ...): {(r.stderr or r.stdout).strip()[-1500:]}")


def check_destination(dest: Path) -> None:
    if dest.exists():
        raise BundleError(f"{dest} exists: remove it or choose another folder (a bundle is never overwritten)")
    try:
        rel = dest.resolve().relative_to(REPO)
    except ValueError:
        print(f"[gpu_bundle] note: {dest} is outside the repository; only folders inside it travel to a lent machine")
        return
    r = subprocess.run(["git", "check-ignore", "-q", f"{rel}/"], cwd=REPO)
    if r.returncode != 0:
        raise BundleError(f"{rel}/ is not ignored by git: add it to .gitignore (a lent machine receives git-ignored "
                          f"folders only as carried paths, at most 64 MiB)")


def copy_assets(tmp: Path) -> None:
    tok = REPO / "SmolLM2-135M"
    if not (tok / "tokenizer.json").is_file():
        raise BundleError(f"{tok}/tokenizer.json not found: run bash setup.sh")
    (tmp / "tokenizer").mkdir()
    for f in TOKENIZER_FILES:
        if (tok / f).is_file():
            shutil.copy2(tok / f, tmp / "tokenizer" / f)
    punkt = REPO / "nltk_data" / PUNKT
    if not punkt.is_dir():
        raise BundleError(f"{punkt} not found: run bash setup.sh")
    shutil.copytree(punkt, tmp / "nltk_data" / PUNKT)
    data = REPO / "ifeval" / "data"
    prompts = sorted(data.glob("*.jsonl"))
    if not (data / "sampled_input_data.jsonl").is_file():
        raise BundleError(f"{data}/sampled_input_data.jsonl not found: run bash setup.sh")
    (tmp / "ifeval_data").mkdir()
    for p in prompts:
        shutil.copy2(p, tmp / "ifeval_data" / p.name)


def fetch_wheels(wheels: Path, versions: dict[str, str], python_version: str, log=print) -> None:
    wheels.mkdir()
    binary = [f"{n}=={versions[n]}" for n, build in WHEELS if not build]
    log(f"[gpu_bundle] pip download (CPython {python_version}, manylinux2014 x86_64): {' '.join(binary)}")
    pip("download", "--no-deps", "--only-binary=:all:", "--python-version", python_version,
        "--platform", "manylinux2014_x86_64", "--implementation", "cp", "-d", str(wheels), *binary)
    with tempfile.TemporaryDirectory() as src:
        for name, build in WHEELS:
            if not build:
                continue
            spec = f"{name}=={versions[name]}"
            log(f"[gpu_bundle] {spec}: source archive only on PyPI; building a pure-Python wheel here")
            pip("download", "--no-deps", "--no-binary=:all:", "-d", src, spec)
            archive = next(p for p in Path(src).iterdir() if norm(p.name).startswith(norm(name) + "-"))
            # No build isolation: deepspeed's setup.py imports torch (installed here); no ops compiled.
            pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(archive),
                env={**os.environ, "DS_BUILD_OPS": "0"})
            archive.unlink()
    for whl in wheels.glob("*.whl"):
        if norm(whl.name.split("-")[0]) in {norm(n) for n, b in WHEELS if b} and not whl.name.endswith("-none-any.whl"):
            raise BundleError(f"{whl.name}: expected a pure-Python wheel (py3-none-any)")


def manifest(tmp: Path, versions: dict[str, str], python_version: str) -> dict:
    files = {str(p.relative_to(tmp)): {"bytes": p.stat().st_size, "sha256": sha256(p)}
             for p in sorted(tmp.rglob("*")) if p.is_file()}
    wheels = {}
    for rel in files:
        if rel.startswith("wheels/") and rel.endswith(".whl"):
            wheels[rel] = {"name": rel[len("wheels/"):].split("-")[0], "version": rel.split("-")[1]}
    missing = [n for n, _ in WHEELS if not any(norm(w["name"]) == norm(n) for w in wheels.values())]
    if missing:
        raise BundleError(f"no wheel for {', '.join(missing)} after pip download")
    return {"created": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "python_version": python_version,
            "platform": "manylinux2014_x86_64", "versions": versions, "wheels": wheels, "files": files,
            "total_bytes": sum(f["bytes"] for f in files.values())}


def make(dest: Path, python_version: str, log=print) -> dict:
    check_destination(dest)
    versions = wanted_versions()
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        copy_assets(tmp)
        fetch_wheels(tmp / "wheels", versions, python_version, log)
        man = manifest(tmp, versions, python_version)
        total = man["total_bytes"] + 20000  # the manifest itself, generously
        if total > LIMIT_BYTES:
            biggest = sorted(man["files"].items(), key=lambda kv: -kv[1]["bytes"])[:3]
            raise BundleError(f"bundle would be {total / 2**20:.1f} MiB, above the {LIMIT_BYTES // 2**20} MiB a "
                              f"lent machine receives (largest: " +
                              ", ".join(f"{k} {v['bytes'] / 2**20:.1f} MiB" for k, v in biggest) + ")")
        (tmp / "MANIFEST.json").write_text(json.dumps(man, indent=1))
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    log(f"[gpu_bundle] {dest}: {len(man['wheels'])} wheels for CPython {python_version}, tokenizer, punkt_tab, "
        f"{len(list((dest / 'ifeval_data').iterdir()))} IFEval prompt files; {size / 2**20:.1f} MiB "
        f"(limit {LIMIT_BYTES // 2**20} MiB)")
    return man


def install(bundle: Path, target: Path, log=print) -> list[str]:
    """Install the bundle's wheels that this Python lacks into ``target``; returns their names."""
    man_path = bundle / "MANIFEST.json"
    if not man_path.is_file():
        raise BundleError(f"{man_path} not found: is {bundle} a bundle (python scripts/gpu_bundle.py make)?")
    man = json.loads(man_path.read_text())
    todo, skipped = [], []
    for rel, w in sorted(man["wheels"].items()):
        path = bundle / rel
        if not path.is_file():
            raise BundleError(f"{path}: listed in {man_path} but missing")
        if sha256(path) != man["files"][rel]["sha256"]:
            raise BundleError(f"{path}: sha256 differs from {man_path} (damaged in transfer?)")
        try:
            skipped.append(f"{w['name']} {version(w['name'])}")
        except PackageNotFoundError:
            todo.append(path)
    if skipped:
        log(f"[gpu_bundle] already installed, not replaced: {', '.join(skipped)}")
    if todo:
        target.mkdir(parents=True, exist_ok=True)
        pip("install", "--no-index", "--no-deps", "--no-compile", "--disable-pip-version-check", "--target",
            str(target), *map(str, todo))
    names = [p.name for p in todo]
    log(f"[gpu_bundle] installed {len(names)} wheels into {target}: {', '.join(n.split('-')[0] for n in names)}")
    return names


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make", help="build a bundle (needs PyPI)")
    mk.add_argument("dir", type=Path)
    mk.add_argument("--python_version", default="3.12", help="CPython version of the GPU machine (default 3.12)")
    ins = sub.add_parser("install", help="install a bundle's wheels into a folder (offline)")
    ins.add_argument("dir", type=Path)
    ins.add_argument("target", type=Path)
    args = ap.parse_args(argv)
    try:
        if args.cmd == "make":
            make(args.dir, args.python_version)
        else:
            install(args.dir, args.target)
    except BundleError as e:
        print(f"[gpu_bundle] error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
