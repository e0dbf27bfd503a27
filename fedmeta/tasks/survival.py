"""Survival: one risk score per patient, Cox's partial likelihood over the episode's risk sets;
Harrell's C-index (lifelines) as the metric.

Labels are ``(time, event)`` rows (event 1 = observed, 0 = censored). An episode's loss is the
negative Breslow partial log-likelihood of its own records, divided by its number of events (a
padded episode: by its fixed normaliser), so that the loss of one patient depends on the others in
its risk set: per-record DP-SGD's sensitivity argument does not hold for it (``docs/privacy.md``).
k-shot sets and splits are stratified by event status.
"""

from __future__ import annotations

import numpy as np
import torch
from lifelines.utils import concordance_index

from fedmeta.tasks.base import Task

__all__ = ["SurvivalTask"]


class SurvivalTask(Task):
    kind = "survival"
    primary = "c_index"
    metric_names = ("c_index",)
    n_outputs = 1
    n_strata = 2  # censored, event

    def example_losses(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("Cox's partial likelihood couples the records of a risk set: no per-example loss")

    def episode_losses(self, outputs: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None,
                       normaliser: float | None = None) -> torch.Tensor:
        """Negative Breslow partial log-likelihood of each episode ``(m,)``: outputs ``(m, n)`` risk
        scores, ``y`` ``(m, n, 2)`` (time, event); 0-weight records are in no risk set."""
        time, event = y[..., 0], y[..., 1]
        w = torch.ones_like(outputs) if weight is None else weight.to(outputs.dtype)
        at_risk = (time[..., None, :] >= time[..., :, None]).to(outputs.dtype) * w[..., None, :]  # (m, i, j)
        # log sum_j at_risk[i, j] exp(eta_j), stable; an empty risk set only occurs for a 0-weight i.
        shifted = outputs - outputs.max(-1, keepdim=True).values.detach()
        risk = torch.log((at_risk * shifted.exp()[..., None, :]).sum(-1).clamp_min(1e-30))
        terms = w * event * (shifted - risk)
        if weight is None:
            events = (event * w).sum(-1).clamp_min(1.0)
            return -terms.sum(-1) / events
        if normaliser is None:
            raise ValueError("a weighted episode loss needs a data-independent normaliser")
        return -terms.sum(-1) / normaliser

    def predictions(self, outputs: torch.Tensor) -> np.ndarray:
        return outputs.detach().cpu().numpy().astype(np.float64)

    def metrics(self, y: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
        # A higher risk means an earlier event: lifelines scores the concordance of -risk with time.
        return {"c_index": float(concordance_index(y[:, 0], -predictions, y[:, 1]))}

    def pairs(self, y: np.ndarray) -> int:
        """Comparable pairs: an observed event before another patient's time."""
        time, event = y[:, 0], y[:, 1].astype(bool)
        return int(sum(np.sum(time > t) for t in time[event]))

    def label_error(self, value: float) -> str | None:
        return None  # a survival label is two columns: checked by the source that reads them

    def strata(self, y: np.ndarray) -> np.ndarray:
        return np.asarray(y)[:, 1].astype(np.int64)
