"""Intervals for the simulator's measures (scipy): Wilson for a proportion, a percentile
bootstrap over items for any other statistic. Each returns ``{"value", "ci": [lo, hi],
"n", "level"}`` (``value`` and ``ci`` ``None`` when ``n`` is 0)."""
from __future__ import annotations

from typing import Callable, Sequence

LEVEL = 0.95


def wilson(k: int, n: int, level: float = LEVEL) -> dict:
    """``k`` successes in ``n`` trials: the share and its Wilson score interval, from the
    evaluation's own rule (:func:`smolsft.evaluation.stats.prompt_interval`, 95%); adds
    ``"k"``. Raises ``ValueError`` for ``k`` outside ``[0, n]`` or another ``level``."""
    from smolsft.evaluation.stats import LEVEL as EVAL_LEVEL, prompt_interval

    if not 0 <= k <= n:
        raise ValueError(f"k must be in [0, n], got k={k}, n={n}")
    if level != EVAL_LEVEL:
        raise ValueError(f"level {level}: the intervals are {EVAL_LEVEL:.0%}")
    if n == 0:
        return {"value": None, "ci": None, "n": 0, "k": 0, "level": level}
    r = prompt_interval(k, n)
    return {"value": r["value"], "ci": r["ci95"], "n": n, "k": k, "level": level}


def bootstrap(items: Sequence, statistic: Callable[[list], float], level: float = LEVEL, n_resamples: int = 2000,
              seed: int = 0) -> dict:
    """``statistic(items)`` and its percentile bootstrap interval over items resampled
    with replacement (``scipy.stats.bootstrap`` on the item indices, so ``statistic``
    may use whole items: texts, (prediction, label) pairs). A statistic that is
    constant over resamples gives a zero-width interval."""
    import numpy as np
    from scipy.stats import bootstrap as sp_bootstrap

    items = list(items)
    n = len(items)
    if n == 0:
        return {"value": None, "ci": None, "n": 0, "level": level}
    value = float(statistic(items))
    if n == 1:
        return {"value": value, "ci": [value, value], "n": 1, "level": level}

    def on_indices(idx):
        return statistic([items[int(i)] for i in idx])

    res = sp_bootstrap((np.arange(n),), on_indices, vectorized=False, n_resamples=n_resamples,
                       confidence_level=level, method="percentile", rng=np.random.default_rng(seed))
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if np.isnan(lo) or np.isnan(hi):  # every resample gave the same value
        lo = hi = value
    return {"value": value, "ci": [lo, hi], "n": n, "level": level}
