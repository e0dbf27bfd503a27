"""95% intervals of a split's metrics by the percentile bootstrap, resampling patients within each
label group (stratum) so that every resample keeps the split's class counts and its AUC or
C-index stays defined (the stratified bootstrap of pROC, Robin et al. 2011)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["Interval", "stratified_bootstrap"]

Interval = dict[str, float]  # {"value", "low", "high"}


def stratified_bootstrap(statistic: Callable[[np.ndarray], dict[str, float]], strata: np.ndarray, *,
                         resamples: int, seed: int, level: float = 0.95) -> dict[str, Interval]:
    """``statistic(rows)`` (metric name -> value, computed on the rows given) on all rows, with the
    ``level`` percentile interval of each metric over ``resamples`` stratified resamples."""
    strata = np.asarray(strata)
    point = statistic(np.arange(len(strata)))
    if resamples < 1:
        return {k: {"value": v, "low": float("nan"), "high": float("nan")} for k, v in point.items()}
    rng = np.random.default_rng([seed, 104_729])
    groups = [np.flatnonzero(strata == s) for s in np.unique(strata)]
    draws: dict[str, list[float]] = {k: [] for k in point}
    for _ in range(resamples):
        rows = np.concatenate([rng.choice(g, size=len(g), replace=True) for g in groups])
        for k, v in statistic(rows).items():
            draws[k].append(v)
    tail = 100 * (1 - level) / 2
    return {k: {"value": float(point[k]), "low": float(np.nanpercentile(draws[k], tail)),
                "high": float(np.nanpercentile(draws[k], 100 - tail))} for k in point}
