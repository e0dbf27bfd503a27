"""Few-shot episodes from one hospital's train split.

An episode is a support set (``shots`` examples of each class) and a disjoint query set. Within one
hospital every episode has the same shapes, so a meta-batch is a stack that ``vmap`` can map over.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedmeta.tasks import Task

__all__ = ["EpisodeBatch", "EpisodeSampler", "sample_k_shot"]


@dataclass(frozen=True)
class EpisodeBatch:
    """``m`` episodes: support ``(m, s, d)``, query ``(m, q, d)``; labels float 0/1.

    Padded episodes (record-level DP draws episodes of random size) carry 0/1 weights per example
    and data-independent loss normalisers; plain episodes have neither and use the mean loss.
    """

    x_support: torch.Tensor
    y_support: torch.Tensor
    x_query: torch.Tensor
    y_query: torch.Tensor
    w_support: torch.Tensor | None = None
    w_query: torch.Tensor | None = None
    support_normaliser: float | None = None
    query_normaliser: float | None = None

    @property
    def size(self) -> int:
        return int(self.x_support.shape[0])

    def support(self) -> dict:
        """Keyword arguments of the support set for ``adapt`` / ``episode_losses``."""
        return {"weight": self.w_support, "normaliser": self.support_normaliser}

    def query(self) -> dict:
        return {"weight": self.w_query, "normaliser": self.query_normaliser}

    def joined(self) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Support and query as one set per episode (Reptile, FedAvg), with its weights."""
        x = torch.cat([self.x_support, self.x_query], dim=1)
        y = torch.cat([self.y_support, self.y_query], dim=1)
        if self.w_support is None or self.w_query is None:
            return x, y, {"weight": None, "normaliser": None}
        assert self.support_normaliser is not None and self.query_normaliser is not None
        return x, y, {"weight": torch.cat([self.w_support, self.w_query], dim=1),
                      "normaliser": self.support_normaliser + self.query_normaliser}


def sample_k_shot(y: np.ndarray, shots: int, rng: np.random.Generator, task: Task) -> np.ndarray:
    """Indices of ``shots`` examples of each of the task's strata (classes), drawn without replacement."""
    strata = task.strata(np.asarray(y))
    idx = [rng.choice(np.flatnonzero(strata == g), size=shots, replace=False) for g in range(task.n_strata)]
    return np.concatenate(idx)


class EpisodeSampler:
    """Draws meta-batches of episodes from one hospital's train split."""

    def __init__(self, x: np.ndarray, y: np.ndarray, *, task: Task, shots: int, query: int, device: torch.device):
        self.x = torch.as_tensor(x, device=device)
        self.y = torch.as_tensor(y, device=device)
        self._y_np = np.asarray(y)
        self.shots = shots
        self.task = task
        # Fixed per hospital so that every episode of a meta-batch has one shape.
        self.query_size = min(query, len(y) - task.n_strata * shots)
        if self.query_size < 1:
            raise ValueError(f"{len(y)} examples cannot hold {shots} shots per class and a query")

    def sample(self, m: int, rng: np.random.Generator) -> EpisodeBatch:
        sup, qry = [], []
        n = len(self._y_np)
        for _ in range(m):
            s = sample_k_shot(self._y_np, self.shots, rng, self.task)
            rest = np.setdiff1d(np.arange(n), s, assume_unique=True)
            sup.append(s)
            qry.append(rng.choice(rest, size=self.query_size, replace=False))
        s_idx = torch.as_tensor(np.stack(sup), device=self.x.device)
        q_idx = torch.as_tensor(np.stack(qry), device=self.x.device)
        return EpisodeBatch(self.x[s_idx], self.y[s_idx], self.x[q_idx], self.y[q_idx])
