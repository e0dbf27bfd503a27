"""Paired comparison over seeds: an algorithm's difference to a reference, with a 95% interval.

Runs with the same seed share the federation, its splits and its sampling, so the per-seed
differences are what varies; a Student-t interval over them (paired by seed) is the interval a
careful plain script would report. With one seed there is no interval (``low``/``high`` are NaN).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats

__all__ = ["REFERENCE", "best_on_validation", "paired_difference", "paired_table"]

REFERENCE = "fedavg"  # FedAvg + fine-tune: what users pick instead of meta-learning


def paired_difference(values: dict[str, float], reference: dict[str, float], confidence: float = 0.95
                      ) -> dict[str, Any]:
    """Mean of ``values[s] - reference[s]`` over the seeds both have, with its t interval."""
    seeds = sorted(set(values) & set(reference))
    diffs = np.array([values[s] - reference[s] for s in seeds], dtype=float)
    mean = float(diffs.mean()) if len(diffs) else math.nan
    if len(diffs) < 2:
        return {"seeds": len(diffs), "mean": mean, "low": math.nan, "high": math.nan}
    half = float(stats.t.ppf(0.5 + confidence / 2, len(diffs) - 1) * diffs.std(ddof=1) / math.sqrt(len(diffs)))
    return {"seeds": len(diffs), "mean": mean, "low": mean - half, "high": mean + half}


def paired_table(algorithms: dict[str, Any], metrics: tuple[str, ...] = ("mean_auc", "worst_auc"),
                 reference: str | None = None, only: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Each algorithm's (of ``only``, default all) paired difference to ``reference`` (default FedAvg +
    fine-tune, else the first algorithm) in ``metrics`` (mean and worst-site primary metric); the
    reference itself is left out."""
    if not algorithms:
        return {}
    if reference is None:
        reference = REFERENCE if REFERENCE in algorithms else next(iter(algorithms))
    per_seed = {name: {m: {s: r[m] for s, r in row["seeds"].items()} for m in metrics}
                for name, row in algorithms.items()}
    return {name: {"reference": reference,
                   **{m: paired_difference(per_seed[name][m], per_seed[reference][m]) for m in metrics}}
            for name in (only if only is not None else algorithms) if name != reference}


def best_on_validation(algorithms: dict[str, Any], candidates: list[str]) -> tuple[str, float] | None:
    """The candidate with the highest mean best validation score over its tunings, with that score:
    the baseline a user would pick without reading a test split (None when none was tuned)."""
    scored = {name: float(np.mean([t["best"]["validation_score"] for t in algorithms[name]["tuning"].values()]))
              for name in candidates if algorithms.get(name, {}).get("tuning")}
    if not scored:
        return None
    best = max(scored, key=lambda name: scored[name])
    return best, scored[best]
