"""Whether setup.sh's CPU packages are already installed in this Python environment.

A second `bash setup.sh` (the README's test command starts with one) otherwise spends about
20 s in pip resolving requirements that are all satisfied. pip is skipped only when all of
these hold:
- `.cache_setup_pip.json` (written by `stamp` after setup.sh's CPU pip phase succeeded)
  names this interpreter's `sys.prefix` and the sha256 of requirements.txt and
  requirements-nodeps.txt as they are now;
- every requirement line of both files is satisfied by the installed version
  (`importlib.metadata`, PEP 440 matching by `packaging`: `torch==2.13.0` accepts
  `2.13.0+cpu`);
- the packages setup.sh removes (torchvision, torchaudio, torchcodec) are absent;
- this repository is installed editable from this folder (pip's `direct_url.json`);
- the environment works: `pip check` finds no broken dependency (beyond the ones setup.sh
  leaves out on purpose: the packages it removes, the dependencies of requirements-nodeps.txt's
  --no-deps installs), and every module of this project imports (`smolsft.*` and the course's
  files at the root) in a fresh interpreter.

    python scripts/pip_state.py check   # exit 0: all installed (one line says so); 1: pip needed (one line says why)
    python scripts/pip_state.py stamp   # record a finished pip phase

Exit status 2: bad usage. Nothing here installs or removes anything.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Optional

REPO_ROOT = Path(__file__).resolve().parents[1]
REQUIREMENT_FILES = ("requirements.txt", "requirements-nodeps.txt")
STAMP = ".cache_setup_pip.json"
REMOVED = ("torchvision", "torchaudio", "torchcodec")  # setup.sh uninstalls them (see its CPU branch)
PROJECT = "smol-sft"  # pyproject.toml [project].name


def files_digest(root: Path) -> str:
    """sha256 (hex) over the requirement files' names and bytes; a missing file counts as empty."""
    h = hashlib.sha256()
    for name in REQUIREMENT_FILES:
        p = root / name
        h.update(name.encode() + b"\0" + (p.read_bytes() if p.is_file() else b"") + b"\0")
    return h.hexdigest()


def requirement_lines(path: Path) -> list:
    """(line number, text) of each requirement in a requirements file: comments and blanks dropped.

    Raises ValueError for a pip option line (`-r`, `--index-url`, ...): those need pip itself.
    """
    out = []
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        text = raw.split(" #", 1)[0].strip()
        if not text or text.startswith("#"):
            continue
        if text.startswith("-"):
            raise ValueError(f"{path.name} line {n}: option line {text!r} (only pip can check it)")
        out.append((n, text))
    return out


def unmet(path: Path) -> list:
    """Requirements of `path` that the installed distributions do not satisfy, one reason each."""
    from packaging.requirements import Requirement  # a dependency of pip's own tooling and of transformers

    problems = []
    for n, text in requirement_lines(path):
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            have = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            problems.append(f"{path.name} line {n}: {req.name} is not installed")
            continue
        if not req.specifier.contains(have, prereleases=True):
            problems.append(f"{path.name} line {n}: {req.name} {have} installed, {req.specifier} wanted")
    return problems


def editable_here(root: Path) -> Optional[str]:
    """None if this repository is installed editable from `root`, else why not."""
    # pip's record (direct_url.json) is in the installed dist-info; the build's own
    # smol_sft.egg-info in the checkout has none and is skipped.
    found = [d for d in metadata.distributions(name=PROJECT)]
    if not found:
        return f"{PROJECT} (this repository) is not installed"
    raw = next((r for d in found if (r := d.read_text("direct_url.json"))), None)
    info = json.loads(raw or "{}")
    if not info.get("dir_info", {}).get("editable") or info.get("url") != root.resolve().as_uri():
        return f"{PROJECT} is installed from {info.get('url')}, not editable from {root.resolve().as_uri()}"
    return None


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
        return True
    except metadata.PackageNotFoundError:
        return False


# "X 1.0 requires Y, which is not installed." / "X 1.0 has requirement Y==2, but you have Y 1."
PIP_CHECK_LINE = re.compile(r"^(\S+) \S+ (?:requires|has requirement) ([A-Za-z0-9._-]+)")
COURSE_MODULES = ("utils", "conversation_func", "reverse_conversation_func", "loss_functions",
                  "loss_functions_checker", "train_hw_parallel")
IMPORT_TIMEOUT_S = 300
# Imports every module of the project in the interpreter that runs it (argv[1]: the repository).
IMPORT_ALL = """import importlib, pkgutil, sys
sys.path.insert(0, sys.argv[1])
import smolsft
names = [m.name for m in pkgutil.walk_packages(smolsft.__path__, "smolsft.") if not m.name.endswith("__main__")]
for name in names + sys.argv[2:]:
    try:
        importlib.import_module(name)
    except BaseException as e:
        print(f"import {name} fails: {type(e).__name__}: {e}".splitlines()[0])
        sys.exit(1)
"""


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pip_check_problems(root: Path = REPO_ROOT) -> list:
    """What `pip check` reports broken, except what setup.sh leaves out on purpose (the REMOVED
    packages, the dependencies of requirements-nodeps.txt's --no-deps installs); one line each."""
    try:
        nodeps = {_canon(re.split(r"[<>=!~; \[]", t, maxsplit=1)[0])
                  for _, t in requirement_lines(root / "requirements-nodeps.txt")}
    except (OSError, ValueError):
        nodeps = set()
    r = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=IMPORT_TIMEOUT_S)
    out = []
    for line in (r.stdout + r.stderr).splitlines():
        m = PIP_CHECK_LINE.match(line.strip())
        if m and (_canon(m.group(1)) in nodeps or _canon(m.group(2)) in {_canon(x) for x in REMOVED}):
            continue
        if m or (r.returncode and line.strip() and not line.startswith("No broken")):
            out.append(f"pip check: {line.strip()}")
    return out


def import_problems(root: Path = REPO_ROOT) -> list:
    """Why this project's modules do not import here (the first failure), else []."""
    try:
        r = subprocess.run([sys.executable, "-c", IMPORT_ALL, str(root), *COURSE_MODULES], capture_output=True,
                           text=True, timeout=IMPORT_TIMEOUT_S, cwd=root)
    except subprocess.TimeoutExpired:
        return [f"importing this project's modules did not finish in {IMPORT_TIMEOUT_S}s"]
    if r.returncode == 0:
        return []
    last = (r.stdout.strip().splitlines() or r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]
    return [last]


def problems(root: Path = REPO_ROOT) -> list:
    """Every reason pip must run here; empty when all setup.sh's CPU packages are in place."""
    stamp_path = root / STAMP
    try:
        stamp = json.loads(stamp_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return [f"no record of a finished install ({STAMP})"]
    if stamp.get("prefix") != sys.prefix:
        return [f"{STAMP} was written for the environment {stamp.get('prefix')}, this is {sys.prefix}"]
    if stamp.get("requirements_sha256") != files_digest(root):
        return [f"{' / '.join(REQUIREMENT_FILES)} changed since the last install"]
    try:
        out = [p for name in REQUIREMENT_FILES for p in unmet(root / name)]
    except (ImportError, ValueError) as e:
        return [str(e)]
    out += [f"{name} is installed (setup.sh removes it)" for name in REMOVED if _installed(name)]
    why = editable_here(root)
    out += [why] if why else []
    if out:
        return out
    return pip_check_problems(root) or import_problems(root)  # slower: only once the records agree


def write_stamp(root: Path = REPO_ROOT) -> Path:
    """Record that pip finished here for the current requirement files; returns the stamp's path."""
    path = root / STAMP
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"prefix": sys.prefix, "python": sys.version.split()[0],
                               "requirements_sha256": files_digest(root)}, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("action", choices=["check", "stamp"],
                    help="check: exit 0 if pip can be skipped, 1 if not; stamp: record a finished install")
    args = ap.parse_args(argv)
    if args.action == "stamp":
        print(f"[setup] recorded the install in {write_stamp().name}")
        return 0
    found = problems()
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        print(f"[setup] packages: installing, because {found[0]}{more}")
        return 1
    n = sum(len(requirement_lines(REPO_ROOT / name)) for name in REQUIREMENT_FILES)
    print(f"[setup] packages: all {n} pins of {' and '.join(REQUIREMENT_FILES)} are installed here; "
          f"pip skipped (SETUP_FORCE_PIP=1 reinstalls)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
