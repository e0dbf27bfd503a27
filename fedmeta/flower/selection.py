"""Model selection during a run, on validation only: the best round (``eval.keep = "best"``),
early stopping with patience, and a per-round report to a tuner that may stop the run.

The validation score of a round is the task's primary metric over the hospitals that count (the
held-out ones when any are held out, else all): their few-shot scores on their validation splits,
weighted by the pairs each split's metric compares (for AUC its (positive, negative) pairs: the
within-hospital AUC; ``fedmeta.history.validation_score``); a round where one of them has no
validation score is not a candidate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fedmeta.config import ExperimentConfig
from fedmeta.history import RunHistory
from fedmeta.meta.functional import Params
from fedmeta.tasks import build_task, metric_label

__all__ = ["RoundSelection", "StopRun", "OnValidation"]

# Called with (round, validation score) after each evaluated round; True stops the run (a pruned trial).
OnValidation = Callable[[int, float], bool]


class StopRun(Exception):
    """The run ends here on purpose (patience exhausted, or the tuner pruned it)."""


class RoundSelection:
    """Tracks the best validation round and its parameters; decides when to stop."""

    def __init__(self, cfg: ExperimentConfig, on_validation: OnValidation | None = None):
        self.keep_best = cfg.eval.keep == "best"
        self.patience = cfg.eval.patience
        self.on_validation = on_validation
        self.label = metric_label(build_task(cfg.task).primary)
        self.best: dict[str, Any] | None = None  # {"round", "auc", "params"}
        self.stale = 0  # evaluations since the best one

    def observe(self, history: RunHistory, server_round: int, current: Callable[[], Params]) -> None:
        """After round ``server_round``'s evaluation; raises ``StopRun`` to end the run."""
        auc = history.round_validation(server_round)
        if auc is None:
            return
        if self.best is None or auc > self.best["auc"]:
            self.best = {"round": server_round, "auc": auc, "params": current() if self.keep_best else None}
            self.stale = 0
        else:
            self.stale += 1
        if self.on_validation is not None and self.on_validation(server_round, auc):
            raise StopRun(f"stopped after round {server_round} by the tuner (validation {self.label} {auc:.4f})")
        if self.keep_best and self.patience and self.stale >= self.patience:
            raise StopRun(f"early stop after round {server_round}: no better validation {self.label} in "
                          f"{self.patience} evaluations since round {self.best['round']} ({self.best['auc']:.4f})")

    def kept(self, current: Params) -> tuple[int, Params]:
        """The round whose model the run ends with (0: the last one) and that model."""
        if self.keep_best and self.best is not None:
            return int(self.best["round"]), self.best["params"]
        return 0, current

    def state(self) -> dict[str, Any] | None:
        return None if self.best is None else {**self.best, "stale": self.stale}

    def restore(self, state: dict[str, Any] | None) -> None:
        if state:
            self.stale = int(state.pop("stale", 0))
            self.best = state
