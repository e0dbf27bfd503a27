"""What the metric-based learners (prototypical, matching and relation networks) share: the model
is an embedding of ``meta.embedding`` outputs; an episode's class scores for a query come from its
embedding and the support set's (``class_logits``), so adaptation is reading the k shots, with no
SGD at evaluation. A binary task's single logit is ``logit_1 - logit_0``.

Record-level DP: per-episode clipping, as MAML: an episode's gradient is a function of that
episode alone, clipped and noised as a whole.
"""

from __future__ import annotations

from abc import abstractmethod

import torch
from torch import nn

from fedmeta.config import MetaConfig
from fedmeta.meta.algorithms.base import InnerLoop
from fedmeta.meta.algorithms.maml import SecondOrderMAML
from fedmeta.meta.functional import Params, episode_outputs, per_episode_copies
from fedmeta.tasks import Task
from fedmeta.tuning.space import FEDERATED_SPACE

__all__ = ["MetricLearner"]


class MetricLearner(SecondOrderMAML):
    predicts_unadapted = False
    tasks = ("binary", "multiclass")
    # No inner loop: a tuned inner rate or step count would change nothing a trial trains.
    search_space = tuple(p for p in FEDERATED_SPACE if p.key not in ("meta.inner_lr", "meta.inner_steps"))

    def model_outputs(self, task: Task, meta: MetaConfig) -> int:
        return meta.embedding

    @abstractmethod
    def class_logits(self, state: Params, support: torch.Tensor, y_support: torch.Tensor, query: torch.Tensor,
                     classes: int, weight: torch.Tensor | None) -> torch.Tensor:
        """``(m, n, classes)`` scores of query embeddings ``(m, n, D)`` given the support embeddings
        ``(m, s, D)``, their labels and weights (0: padding)."""

    def _embed(self, model: nn.Module, state: Params, inputs: torch.Tensor) -> torch.Tensor:
        """``(m, n, D)`` embeddings of ``(m, n, ...)`` inputs; a one-output model's ``(m, n)`` is D = 1."""
        out = episode_outputs(model, self.model_params(state), inputs)
        return out.unsqueeze(-1) if out.dim() == 2 else out.flatten(2)

    def _task_outputs(self, state: Params, support: torch.Tensor, y_support: torch.Tensor, query: torch.Tensor,
                      task: Task, weight: torch.Tensor | None) -> torch.Tensor:
        logits = self.class_logits(state, support, y_support, query, task.n_strata, weight)
        return logits[..., 1] - logits[..., 0] if task.n_outputs == 1 else logits

    def episode_outputs(self, model: nn.Module, state: Params, x_support: torch.Tensor, y_support: torch.Tensor,
                        x: torch.Tensor, task: Task, weight: torch.Tensor | None = None) -> torch.Tensor:
        """The task's outputs for ``x`` ``(m, n, ...)`` given each episode's support set."""
        return self._task_outputs(state, self._embed(model, state, x_support), y_support,
                                  self._embed(model, state, x), task, weight)

    def _episode_gradients(self, model, state, batch, inner):  # type: ignore[override]
        with torch.enable_grad():
            theta = per_episode_copies(state, batch.size)
            outputs = self.episode_outputs(model, theta, batch.x_support, batch.y_support, batch.x_query, inner.task,
                                           batch.support().get("weight"))
            losses = inner.task.episode_losses(outputs, batch.y_query, **batch.query())
            grads = torch.autograd.grad(losses.sum(), list(theta.values()))
        return dict(zip(theta, grads)), losses.detach()

    def adapted_forward(self, model, state, x_support, y_support, inner: InnerLoop):  # type: ignore[override]
        one = {k: v.detach()[None] for k, v in state.items()}
        with torch.no_grad():
            support = self._embed(model, one, x_support[None])
        return lambda x: self._task_outputs(one, support, y_support[None], self._embed(model, one, x[None]),
                                            inner.task, None)[0]

    def draw_outputs(self, model, state, x_support, y_support, x, inner: InnerLoop):  # type: ignore[override]
        # Nothing adapts: every draw's state is the same, so the scored split is embedded once.
        with torch.no_grad():
            query = self._embed(model, {k: v[:1] for k, v in state.items()}, x[None])
            outputs = self._task_outputs(state, self._embed(model, state, x_support), y_support,
                                         query.expand(x_support.shape[0], -1, -1), inner.task, None)
        return list(outputs)
