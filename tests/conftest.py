"""Shared fixtures. The course material in ../shared is found through $SHARED_DIR or
beside the repository; under CI=true a test that needs it fails instead of skipping.
What setup.sh builds (the model, ifeval/data/) is there on every machine: without it a
test fails and says to run setup.sh."""
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from utils import DEFAULT_MODEL, load_tokenizer, shared_dir  # noqa: E402


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
