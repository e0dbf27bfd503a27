"""Multi-class diagnosis: K logits, cross-entropy; macro one-vs-rest AUC (primary), balanced
accuracy and accuracy of the most probable class.

Labels are the integers ``0..K-1`` (``[task] classes = K``). A class absent from a scored split has
no one-vs-rest AUC: the macro mean runs over the classes the split holds (and says so through
``pairs``, which counts only their comparisons).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, balanced_accuracy_score

from fedmeta.tasks.base import Task
from fedmeta.tasks.binary import auc

__all__ = ["MulticlassTask"]


class MulticlassTask(Task):
    kind = "multiclass"
    primary = "macro_auc"
    metric_names = ("macro_auc", "balanced_accuracy", "accuracy")

    def __init__(self, classes: int):
        if classes < 2:
            raise ValueError(f"a multi-class task needs at least 2 classes, got {classes}")
        self.n_strata = self.n_outputs = classes

    @classmethod
    def from_config(cls, cfg) -> MulticlassTask:  # noqa: ANN001 - TaskConfig
        return cls(cfg.classes)

    def example_losses(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        flat = F.cross_entropy(outputs.reshape(-1, self.n_outputs), y.reshape(-1).long(), reduction="none")
        return flat.reshape(y.shape)

    def predictions(self, outputs: torch.Tensor) -> np.ndarray:
        return torch.softmax(outputs, dim=-1).detach().cpu().numpy().astype(np.float64)

    def _present(self, y: np.ndarray) -> list[int]:
        """The classes with both members and non-members in ``y``: those with a one-vs-rest AUC."""
        return [c for c in range(self.n_outputs) if 0 < np.sum(y == c) < len(y)]

    def metrics(self, y: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
        y = np.asarray(y).astype(np.int64)
        present = self._present(y)
        if not present:
            raise ValueError("a split with a single class has no one-vs-rest AUC")
        aucs = [auc(y == c, predictions[:, c]) for c in present]
        chosen = predictions.argmax(-1)
        with warnings.catch_warnings():  # a class predicted but absent from the split: its recall is not counted
            warnings.simplefilter("ignore", UserWarning)
            balanced = balanced_accuracy_score(y, chosen)
        return {"macro_auc": float(np.mean(aucs)), "balanced_accuracy": float(balanced),
                "accuracy": float(accuracy_score(y, chosen))}

    def pairs(self, y: np.ndarray) -> int:
        y = np.asarray(y).astype(np.int64)
        return int(sum(np.sum(y == c) * np.sum(y != c) for c in self._present(y)))

    def label_error(self, value: float) -> str | None:
        if value == int(value) and 0 <= value < self.n_outputs:
            return None
        return f"label must be a class 0..{self.n_outputs - 1} (task.classes = {self.n_outputs})"

    def strata(self, y: np.ndarray) -> np.ndarray:
        return np.asarray(y).astype(np.int64)
