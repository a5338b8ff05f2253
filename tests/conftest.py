"""Shared fixtures. The course material in ../shared is found through $SHARED_DIR or
beside the repository; under CI=true a test that needs it fails instead of skipping.
What setup.sh builds (the model, ifeval/data/) is there on every machine: without it a
test fails and says to run setup.sh."""
import importlib.util
import os
from collections import Counter
import sys
from pathlib import Path
from types import ModuleType
from typing import Optional

import pytest

REPO = Path(__file__).resolve().parent.parent


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto`` (pyproject's addopts): one worker per usable core, at most 4 (more would
    run several two-rank trainings at once for little gain)."""
    return max(1, min(4, len(os.sched_getaffinity(0))))


def pytest_configure(config) -> None:
    """Under pytest-xdist, each worker (and every process it starts) gets its own share of
    the cores. Two workers whose engines each spin two OpenMP threads on the same two cores
    run several times slower than one after the other; on separate cores they do not meet.
    Tests that follow the machine read the affinity, so they see the worker's share."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    cores = sorted(os.sched_getaffinity(0))
    if worker and 1 < count <= len(cores):
        os.sched_setaffinity(0, cores[int(worker.removeprefix("gw")) % count::count])


# The longest files first, so that with --dist loadfile no long file starts last while the
# other worker sits idle (each worker has one core of its own, above). "Longest" is each
# file's total test time in the last run on this machine (pytest's cache); a fresh clone,
# which has none, puts the files with the most slow tests first. pyproject's
# --no-loadscope-reorder keeps this order.
DURATIONS_KEY = "smolsft/seconds_per_file"
_seconds: Counter = Counter()


def _file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def pytest_collection_modifyitems(config, items) -> None:
    last = config.cache.get(DURATIONS_KEY, {}) if config.cache is not None else {}
    slow = Counter(_file_of(item.nodeid) for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: (-last.get(_file_of(item.nodeid), 0.0), -slow[_file_of(item.nodeid)]))


def pytest_runtest_logreport(report) -> None:
    _seconds[_file_of(report.nodeid)] += report.duration


def pytest_sessionfinish(session, exitstatus) -> None:
    """The controller (not an xdist worker) records what this run measured, per file."""
    cache = session.config.cache
    if cache is None or hasattr(session.config, "workerinput") or not _seconds:
        return
    cache.set(DURATIONS_KEY, {**cache.get(DURATIONS_KEY, {}), **{f: round(t, 1) for f, t in _seconds.items()}})


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


def script_env(**overrides: str) -> dict:
    """The environment for a shell script run by a test: this interpreter as ``PYTHON``
    (the scripts' ``${PYTHON:-python}``) and its folder first on ``PATH`` (for a bare
    ``python`` or ``deepspeed``), so a script runs with the test's interpreter whether or
    not its virtualenv is activated; no ``WANDB_*`` (a test run must not log to W&B) and
    no ``SFT_VERBOSE``/``IFEVAL_BACKEND``/``PRECISION`` from outside; then ``overrides``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("WANDB_") and k not in ("SFT_VERBOSE", "IFEVAL_BACKEND", "PRECISION")}
    env["PYTHON"] = sys.executable
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    env.update(overrides)
    return env

from smolsft.chat.tokenization import DEFAULT_MODEL, load_tokenizer


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
def tiny_llama_dir(tmp_path_factory, tokenizer) -> Path:
    """One tiny Llama checkpoint for the session (``test_train_hw_parallel.tiny_llama``:
    2 layers, hidden 64, SmolLM2's vocabulary and tokenizer). Tests read it, never write to it."""
    from test_train_hw_parallel import tiny_llama

    return tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny", tokenizer)


@pytest.fixture(scope="session")
def chain_ckpt(model_dir, tmp_path_factory) -> Path:
    """The chain-model checkpoint of ``test_run_ifeval`` (folder ``chain-model``), once per session."""
    from test_run_ifeval import save_chain_checkpoint

    return save_chain_checkpoint(model_dir, tmp_path_factory.mktemp("chain") / "chain-model")


@pytest.fixture(scope="session")
def ifeval_data() -> Path:
    """ifeval/data/ as setup.sh builds it (input_data.jsonl and the two course subsets)."""
    d = REPO / "ifeval" / "data"
    missing = [f for f in ("input_data.jsonl", "sampled_input_data.jsonl", "sampled_200_input_data.jsonl")
               if not (d / f).is_file()]
    if missing:
        pytest.fail(f"{d} lacks {missing}: run bash setup.sh")
    return d
