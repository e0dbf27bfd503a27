"""What a tuning trial runs and scores: validation data of the training hospitals, never a test
split and never a hospital the config evaluates.

Personalisation (nothing held out): every hospital trains and the trial scores the few-shot AUC on
each hospital's validation split. Unseen hospitals (``data.held_out``): those hospitals are left
out of the trial entirely (``data.excluded``) and ``tune.validation_hospitals`` of the training
hospitals, drawn with the seed, stand in for them: held out of the trial's training and scored on
their validation split with the same k-shot protocol. Every trial reports on ``eval.split =
"validation"``, so no test split is ever scored.

A validation split of a dozen patients is a noisy judge: with ``tune.validation_draws`` = R a trial
runs R times, on R validation draws, and is scored by the mean of their validation curves, each
draw weighted by the pairs its score compared (as hospitals are within a draw: a stand-in whose
validation split has one negative patient tells little and counts little). For unseen hospitals the
draws take their stand-ins in turn from one seeded order of the training hospitals, so R draws
judge on R different hospitals where there are that many.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fedmeta.config import ExperimentConfig, with_settings
from fedmeta.errors import FedMetaError
from fedmeta.history import validation_score

__all__ = ["INTERRUPTED", "TrialFailed", "mean_curve", "tuning_config", "validation_curve"]


INTERRUPTED = "interrupted"  # the ``error`` of a trial a stop cut short: it runs again, it does not count


class TrialFailed(Exception):
    """A trial that has no validation score (diverged, or its settings cannot run)."""


def tuning_config(cfg: ExperimentConfig, draw: int = 0) -> ExperimentConfig:
    """The run every trial of ``cfg`` starts from on validation draw ``draw`` (the trial's settings
    go on top)."""
    from fedmeta.data.sources import load_federation

    if cfg.data.validation_fraction == 0:
        raise FedMetaError("tune: data.validation_fraction is 0: tuning selects on each hospital's validation "
                           "split (e.g. --set data.validation_fraction=0.2)")
    if cfg.data.leave_one_out:
        raise FedMetaError("tune: data.leave_one_out: tune one fold at a time (data.held_out = [NAME]); "
                           "`fedmeta compare --tune N` tunes every fold")
    settings: dict[str, Any] = {"eval.split": "validation", "eval.keep": "last", "eval.patience": 0,
                                "data.validation_draw": draw}
    evaluated = list(cfg.data.held_out)
    if evaluated:
        excluded = [*cfg.data.excluded, *evaluated]
        names = load_federation(with_settings(cfg, {"data.held_out": [], "data.excluded": excluded},
                                              "tune")).names
        k = cfg.tune.validation_hospitals
        if k >= len(names):
            raise FedMetaError(f"tune.validation_hospitals: {k} of the {len(names)} training hospitals would leave "
                               "none to train")
        order = np.random.default_rng([cfg.seed, 65_537]).permutation(len(names))
        stand_ins = sorted(str(names[order[(draw * k + i) % len(names)]]) for i in range(k))
        settings |= {"data.held_out": stand_ins, "data.excluded": excluded}
    return with_settings(cfg, settings, "tune")


def validation_curve(name: str, cfg: ExperimentConfig, run_dir: Path, *, ray_address: str,
                     on_validation: Callable[[int, float], bool]) -> tuple[dict[int, float], int]:
    """The trial's validation score per round (a baseline has one score, at round 0), and the pairs
    that score compared (``Task.pairs`` summed over the scored hospitals)."""
    from fedmeta.compare import BASELINES, COMPARED, counted
    from fedmeta.data.sources import load_federation
    from fedmeta.evaluation import NonFiniteModelError
    from fedmeta.simulation import simulate

    try:
        if name in BASELINES:
            rows = counted(BASELINES[name](load_federation(cfg), cfg))
            score = validation_score(list(rows.values()))
            if score is None:
                raise TrialFailed("a hospital has no validation score")
            return {0: float(score)}, _pairs(rows)
        run_cfg = with_settings(cfg, {"meta.algorithm": COMPARED[name]}, "tune")
        results = simulate(run_cfg, run_dir, progress=False, ray_address=ray_address, on_validation=on_validation,
                           plots=False)
    except (FedMetaError, NonFiniteModelError) as err:
        raise TrialFailed(str(err)) from None
    curve = {int(r): float(v) for r, v in results["validation_score"].items()}
    if not curve:
        raise TrialFailed("no round has a validation score (every evaluation failed: diverged?)")
    return curve, _pairs(counted(results["final"]))


def _pairs(rows: dict[str, dict[str, Any]]) -> int:
    return int(sum(r.get("val_pairs", 0) for r in rows.values()))


def mean_curve(curves: list[dict[int, float]], pairs: list[int] | None = None) -> tuple[float, int]:
    """The best mean validation score over the rounds every draw scored, each draw weighted by its
    ``pairs`` (default: equally), and that round (ties: the earlier one)."""
    rounds = sorted(set.intersection(*(set(c) for c in curves)))
    if not rounds:
        raise TrialFailed("the validation draws share no scored round")
    weights = np.asarray(pairs if pairs and sum(pairs) > 0 else [1] * len(curves), dtype=float)
    mean = {r: float(np.average([c[r] for c in curves], weights=weights)) for r in rounds}
    best = max(rounds, key=lambda r: (mean[r], -r))
    return mean[best], best
