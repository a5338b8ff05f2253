"""lm-eval's IFEval checkers (``lm_eval.tasks.ifeval``) imported without running the
``lm_eval.tasks`` package's ``__init__``.

Why: that ``__init__`` builds lm-eval's task system (its TaskManager imports ``datasets``,
hence pandas and pyarrow), which scoring never uses. Skipping it keeps the scoring path to
lm_eval, nltk, langdetect and immutabledict, small enough to carry to an offline GPU
machine (scripts/gpu_check.sh --make_bundle), and saves seconds per import. The checker
modules themselves import only nltk, langdetect, immutabledict and packaging.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType

_TASKS = "lm_eval.tasks"


def import_ifeval_checkers() -> tuple[ModuleType, ModuleType]:
    """``(lm_eval.tasks.ifeval.instructions_registry, lm_eval.tasks.ifeval.utils)``.

    While they load, ``lm_eval.tasks`` is a bare package (its folder as ``__path__``, its
    ``__init__`` not run); afterwards it is removed again, so a later ``import
    lm_eval.tasks`` elsewhere gets the real package. If ``lm_eval.tasks`` is already
    imported it is used as is. Raises ImportError (ModuleNotFoundError) when lm_eval or a
    checker's dependency is not installed.
    """
    stub = None
    if _TASKS not in sys.modules:
        spec = importlib.util.find_spec(_TASKS)  # imports lm_eval itself (light), not lm_eval.tasks
        if spec is None:
            raise ModuleNotFoundError(f"No module named {_TASKS!r}", name=_TASKS)
        stub = importlib.util.module_from_spec(spec)
        sys.modules[_TASKS] = stub
    try:
        registry = importlib.import_module(_TASKS + ".ifeval.instructions_registry")
        utils = importlib.import_module(_TASKS + ".ifeval.utils")
    finally:
        if stub is not None and sys.modules.get(_TASKS) is stub:
            del sys.modules[_TASKS]
            parent = sys.modules.get("lm_eval")
            if parent is not None and getattr(parent, "tasks", None) is stub:
                delattr(parent, "tasks")
    return registry, utils
