"""Binary outcome: one logit, binary cross-entropy; AUC (primary), accuracy at 0.5, Brier score and
expected calibration error (``fedmeta.tasks.calibration``).

AUC is computed as the Mann-Whitney statistic (mid-ranks for ties), the definition scikit-learn's
``roc_auc_score`` integrates to; the tests hold the two equal. It runs for every k-shot draw of
every hospital in every evaluated round, where scikit-learn's input checks cost ~30x the metric.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata

from fedmeta.tasks.base import Task
from fedmeta.tasks.calibration import brier, ece

__all__ = ["BinaryTask", "auc"]


def auc(y: np.ndarray, scores: np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties counted 1/2."""
    positive = np.asarray(y) == 1
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs both classes among the labels")
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


class BinaryTask(Task):
    kind = "binary"
    primary = "auc"
    metric_names = ("auc", "accuracy", "brier", "ece")
    n_outputs = 1
    n_strata = 2

    def example_losses(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(outputs, y, reduction="none")

    def predictions(self, outputs: torch.Tensor) -> np.ndarray:
        return torch.sigmoid(outputs).detach().cpu().numpy().astype(np.float64)

    def metrics(self, y: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
        return {"auc": auc(y, predictions), "accuracy": float(np.mean((predictions >= 0.5) == (np.asarray(y) == 1))),
                "brier": brier(y, predictions), "ece": ece(y, predictions)}

    def pairs(self, y: np.ndarray) -> int:
        positives = int(np.sum(y == 1))
        return positives * (len(y) - positives)

    def label_error(self, value: float) -> str | None:
        return None if value in (0.0, 1.0) else "label must be 0 or 1"

    def strata(self, y: np.ndarray) -> np.ndarray:
        return np.asarray(y).astype(np.int64)
