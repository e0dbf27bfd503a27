"""What a task is to the engine: a loss on the model's outputs, the metrics of its predictions, and
the labels that k-shot sets and splits are stratified by.

The engine (inner loops, meta-gradients, DP, evaluation) never looks at labels itself: it asks the
task. A new task is one file that subclasses ``Task`` and registers itself in ``fedmeta.tasks``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from fedmeta.config import TaskConfig

__all__ = ["Task", "metric_label", "wire_name"]

_LABELS = {"auc": "AUC", "macro_auc": "macro AUC", "c_index": "C-index", "brier": "Brier", "ece": "ECE"}


def metric_label(name: str) -> str:
    """How tables and plots write a metric: ``macro_auc`` -> ``macro AUC``."""
    return _LABELS.get(name, name.replace("_", " "))


def wire_name(name: str) -> str:
    """A metric's key in a Flower MetricRecord (``macro_auc`` -> ``macro-auc``)."""
    return name.replace("_", "-")


class Task(ABC):
    kind: str
    primary: str  # the metric every table, plot, worst site and tuning reads
    metric_names: tuple[str, ...]  # what ``metrics`` returns, the primary first
    n_outputs: int  # the model's outputs per example
    n_strata: int  # label groups: a k-shot set holds ``shots`` of each

    @classmethod
    def from_config(cls, cfg: TaskConfig) -> Task:
        return cls()

    @abstractmethod
    def example_losses(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-example losses ``(..., n)`` of outputs ``(..., n[, k])`` against labels ``(..., n)``."""

    def episode_losses(self, outputs: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None,
                       normaliser: float | None = None) -> torch.Tensor:
        """Loss of each episode ``(m,)`` from outputs ``(m, n[, k])``.

        Without ``weight`` it is the mean over the episode's examples. With a 0/1 ``weight`` (padded
        episodes of varying size) it is ``sum(weight * loss) / normaliser``: a fixed normaliser keeps
        one record's influence on its episode's loss independent of the other records.
        """
        per_example = self.example_losses(outputs, y)
        if weight is None:
            return per_example.mean(-1)
        if normaliser is None:
            raise ValueError("a weighted episode loss needs a data-independent normaliser")
        return (per_example * weight).sum(-1) / normaliser

    @abstractmethod
    def predictions(self, outputs: torch.Tensor) -> np.ndarray:
        """What the metrics score (probabilities, risks), float64 on the CPU."""

    @abstractmethod
    def metrics(self, y: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
        """The task's metrics of one split; ``self.primary`` among them."""

    @abstractmethod
    def pairs(self, y: np.ndarray) -> int:
        """How many comparisons the primary metric makes on labels ``y``: how much it can tell."""

    @abstractmethod
    def label_error(self, value: float) -> str | None:
        """Why ``value`` is not a label of this task (None: it is one), for a one-line error."""

    @abstractmethod
    def strata(self, y: np.ndarray) -> np.ndarray:
        """The group ``0..n_strata-1`` of each label: a k-shot set takes ``shots`` of each group,
        and splits keep their proportions."""
