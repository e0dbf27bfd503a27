"""What a tuning trial runs and scores: validation data of the training hospitals, never a test
split and never a hospital the config evaluates.

Personalisation (nothing held out): every hospital trains and the trial scores the few-shot AUC on
each hospital's validation split. Unseen hospitals (``data.held_out``): those hospitals are left
out of the trial entirely (``data.excluded``) and ``tune.validation_hospitals`` of the training
hospitals, drawn with the seed, stand in for them: held out of the trial's training and scored on
their validation split with the same k-shot protocol. Every trial reports on ``eval.split =
"validation"``, so no test split is ever scored.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fedmeta.config import ExperimentConfig, with_settings
from fedmeta.errors import FedMetaError

__all__ = ["TrialFailed", "tuning_config", "validation_score"]


class TrialFailed(Exception):
    """A trial that has no validation score (diverged, or its settings cannot run)."""


def tuning_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """The run every trial of ``cfg`` starts from (the trial's settings go on top)."""
    from fedmeta.data.sources import load_federation

    if cfg.data.validation_fraction == 0:
        raise FedMetaError("tune: data.validation_fraction is 0: tuning selects on each hospital's validation "
                           "split (e.g. --set data.validation_fraction=0.2)")
    if cfg.data.leave_one_out:
        raise FedMetaError("tune: data.leave_one_out: tune one fold at a time (data.held_out = [NAME]); "
                           "`fedmeta compare --tune N` tunes every fold")
    settings: dict[str, Any] = {"eval.split": "validation", "eval.keep": "last", "eval.patience": 0}
    evaluated = list(cfg.data.held_out)
    if evaluated:
        excluded = [*cfg.data.excluded, *evaluated]
        names = load_federation(with_settings(cfg, {"data.held_out": [], "data.excluded": excluded},
                                              "tune")).names
        k = cfg.tune.validation_hospitals
        if k >= len(names):
            raise FedMetaError(f"tune.validation_hospitals: {k} of the {len(names)} training hospitals would leave "
                               "none to train")
        rng = np.random.default_rng([cfg.seed, 65_537])
        stand_ins = sorted(str(n) for n in rng.choice(names, size=k, replace=False))
        settings |= {"data.held_out": stand_ins, "data.excluded": excluded}
    return with_settings(cfg, settings, "tune")


def validation_score(name: str, cfg: ExperimentConfig, run_dir: Path, *, ray_address: str,
                     on_validation: Callable[[int, float], bool]) -> tuple[float, int]:
    """The trial's validation AUC and its best round (0 for a baseline, which has no rounds)."""
    from fedmeta.compare import BASELINES, COMPARED, counted
    from fedmeta.data.sources import load_federation
    from fedmeta.evaluation import NonFiniteModelError
    from fedmeta.simulation import simulate

    try:
        if name in BASELINES:
            rows = counted(BASELINES[name](load_federation(cfg), cfg))
            return float(np.mean([m["val_auc"] for m in rows.values()])), 0
        run_cfg = with_settings(cfg, {"meta.algorithm": COMPARED[name]}, "tune")
        results = simulate(run_cfg, run_dir, progress=False, ray_address=ray_address, on_validation=on_validation)
    except (FedMetaError, NonFiniteModelError) as err:
        raise TrialFailed(str(err)) from None
    curve = {int(r): float(v) for r, v in results["validation_auc"].items()}
    if not curve:
        raise TrialFailed("no round has a validation score (every evaluation failed: diverged?)")
    best = max(curve, key=lambda r: (curve[r], -r))  # ties: the earlier round
    return curve[best], best
