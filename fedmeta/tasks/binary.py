"""Binary outcome: one logit, binary cross-entropy; AUC (primary) and accuracy at 0.5."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, roc_auc_score

from fedmeta.tasks.base import Task

__all__ = ["BinaryTask"]


class BinaryTask(Task):
    kind = "binary"
    primary = "auc"
    metric_names = ("auc", "accuracy")
    n_outputs = 1
    n_strata = 2

    def example_losses(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(outputs, y, reduction="none")

    def predictions(self, outputs: torch.Tensor) -> np.ndarray:
        return torch.sigmoid(outputs).detach().cpu().numpy().astype(np.float64)

    def metrics(self, y: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
        return {"auc": float(roc_auc_score(y, predictions)),
                "accuracy": float(accuracy_score(y, predictions >= 0.5))}

    def pairs(self, y: np.ndarray) -> int:
        positives = int(np.sum(y == 1))
        return positives * (len(y) - positives)

    def label_error(self, value: float) -> str | None:
        return None if value in (0.0, 1.0) else "label must be 0 or 1"

    def strata(self, y: np.ndarray) -> np.ndarray:
        return np.asarray(y).astype(np.int64)
