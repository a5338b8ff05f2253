"""Shared fixtures. The course material in ../shared is found through $SHARED_DIR or
beside the repository; under CI=true a test that needs it fails instead of skipping.
What setup.sh builds (the model, ifeval/data/) is there on every machine: without it a
test fails and says to run setup.sh."""
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Optional

import pytest

REPO = Path(__file__).resolve().parent.parent


def shared_dir() -> Optional[Path]:
    """The shared course material: ``$SHARED_DIR``, else ``../shared`` beside the
    repository, else ``None``. Only tests read it; the product never needs it."""
    env = os.environ.get("SHARED_DIR")
    if env:
        return Path(env)
    cand = REPO.parent / "shared"
    return cand if cand.is_dir() else None


def load_script(relpath: str) -> ModuleType:
    """A script of ``scripts/`` or ``tools/`` (not an importable package) loaded as a
    module from its file, once per session (later calls return the same module)."""
    name = Path(relpath).stem
    if name in _SCRIPTS:
        return _SCRIPTS[name]
    spec = importlib.util.spec_from_file_location(name, REPO / relpath)
    module = importlib.util.module_from_spec(spec)
    # Registered before it runs, as an import would: dataclasses and pickle look the
    # module up in sys.modules by name.
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    _SCRIPTS[name] = module
    return module


_SCRIPTS: dict = {}

from tokenization import DEFAULT_MODEL, load_tokenizer


def _need(path: Path, what: str) -> Path:
    if path is not None and path.exists():
        return path
    msg = f"{what} not found ({path}); set SHARED_DIR or place ../shared beside the repository"
    if os.environ.get("CI") == "true":
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def shared() -> Path:
    return _need(shared_dir(), "shared course material")


@pytest.fixture(scope="session")
def course_ref(shared) -> Path:
    return _need(shared / "reference" / "course", "official golden files")


@pytest.fixture(scope="session")
def model_dir() -> Path:
    return _need(REPO / DEFAULT_MODEL, "SmolLM2-135M/ (run bash setup.sh)")


@pytest.fixture(scope="session")
def tokenizer(model_dir):
    return load_tokenizer(str(model_dir), 2048)


@pytest.fixture(scope="session")
def ifeval_data() -> Path:
    """ifeval/data/ as setup.sh builds it (input_data.jsonl and the two course subsets)."""
    d = REPO / "ifeval" / "data"
    missing = [f for f in ("input_data.jsonl", "sampled_input_data.jsonl", "sampled_200_input_data.jsonl")
               if not (d / f).is_file()]
    if missing:
        pytest.fail(f"{d} lacks {missing}: run bash setup.sh")
    return d
