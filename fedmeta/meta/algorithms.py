"""Meta-learning algorithms behind one interface, looked up by name.

Each algorithm maps a meta-batch of episodes to **per-episode** meta-gradients (leading dimension =
episode), computed for all episodes at once (see ``fedmeta.meta.functional``). The meta-gradient is
their mean; keeping them apart lets a privacy layer clip each episode's contribution.

Definitions (``theta`` = shared initialisation, ``U_k(theta; D)`` = ``k`` SGD steps of size ``alpha``
on ``D``, ``S``/``Q`` = support/query set of an episode):

* ``maml``    : ``d/dtheta L_Q(U_k(theta; S))`` — exact, differentiating through the inner loop.
* ``fomaml``  : ``grad L_Q`` evaluated at ``U_k(theta; S)`` (inner loop treated as constant).
* ``reptile`` : ``theta - U_k(theta; S u Q)`` (Nichol et al. 2018; outer step ``theta -= eps * mean``).
* ``fedavg``  : ``grad L_{S u Q}(theta)`` — plain supervised training, no inner loop; used as the
  FedAvg baseline in the same harness (local SGD, then the server averages the model deltas).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import nn

from fedmeta.data.episodes import EpisodeBatch
from fedmeta.meta.chunking import chunk_size, chunks
from fedmeta.meta.functional import Params, adapt, episode_losses, per_episode_copies
from fedmeta.tasks import Task
from fedmeta.tuning.space import FEDERATED_SPACE, SearchSpace

__all__ = ["InnerLoop", "MetaAlgorithm", "ALGORITHMS", "get_algorithm"]


@dataclass(frozen=True)
class InnerLoop:
    """``steps`` SGD steps of size ``lr`` on the task's loss (which the outer loss is as well);
    ``chunk`` episodes are differentiated together (0: automatic, ``fedmeta.meta.chunking``)."""

    steps: int
    lr: float
    task: Task
    chunk: int = 0


class MetaAlgorithm(ABC):
    """Per-episode meta-gradients for a meta-batch; one subclass per algorithm."""

    name: str
    search_space: SearchSpace = FEDERATED_SPACE  # what ``fedmeta tune`` may change

    def episode_gradients(
        self, model: nn.Module, params: Params, batch: EpisodeBatch, inner: InnerLoop
    ) -> tuple[Params, torch.Tensor]:
        """Per-episode meta-gradients ``{name: (m, *shape)}`` and training losses ``(m,)``, the
        episodes taken in chunks that fit in memory."""
        size = chunk_size(model, batch, inner.steps, inner.chunk)
        if size >= batch.size:
            return self._episode_gradients(model, params, batch, inner)
        parts = [self._episode_gradients(model, params, part, inner) for part in chunks(batch, size)]
        return {k: torch.cat([g[k] for g, _ in parts]) for k in params}, torch.cat([loss for _, loss in parts])

    @abstractmethod
    def _episode_gradients(
        self, model: nn.Module, params: Params, batch: EpisodeBatch, inner: InnerLoop
    ) -> tuple[Params, torch.Tensor]:
        """``episode_gradients`` for a batch that is differentiated at once."""

    def meta_gradient(
        self, model: nn.Module, params: Params, batch: EpisodeBatch, inner: InnerLoop
    ) -> tuple[Params, torch.Tensor]:
        """Mean meta-gradient over the meta-batch and the mean training loss."""
        grads, losses = self.episode_gradients(model, params, batch, inner)
        return {k: g.mean(0) for k, g in grads.items()}, losses.mean()


class SecondOrderMAML(MetaAlgorithm):
    name = "maml"

    def _episode_gradients(self, model, params, batch, inner):  # type: ignore[override]
        with torch.enable_grad():
            theta = per_episode_copies(params, batch.size)
            fast = adapt(model, theta, batch.x_support, batch.y_support, inner.task,
                         steps=inner.steps, lr=inner.lr, create_graph=True, **batch.support())
            losses = episode_losses(model, fast, batch.x_query, batch.y_query, inner.task, **batch.query())
            grads = torch.autograd.grad(losses.sum(), list(theta.values()))
        return dict(zip(theta, grads)), losses.detach()


class FirstOrderMAML(MetaAlgorithm):
    name = "fomaml"

    def _episode_gradients(self, model, params, batch, inner):  # type: ignore[override]
        with torch.enable_grad():
            theta = per_episode_copies(params, batch.size)
            fast = adapt(model, theta, batch.x_support, batch.y_support, inner.task,
                         steps=inner.steps, lr=inner.lr, create_graph=False, **batch.support())
            losses = episode_losses(model, fast, batch.x_query, batch.y_query, inner.task, **batch.query())
            grads = torch.autograd.grad(losses.sum(), list(fast.values()))
        return dict(zip(fast, grads)), losses.detach()


class Reptile(MetaAlgorithm):
    name = "reptile"

    def _episode_gradients(self, model, params, batch, inner):  # type: ignore[override]
        x, y, w = batch.joined()
        theta = per_episode_copies(params, batch.size)
        fast = adapt(model, theta, x, y, inner.task, steps=inner.steps, lr=inner.lr, create_graph=False, **w)
        with torch.no_grad():
            direction = {k: theta[k] - fast[k] for k in theta}
            losses = episode_losses(model, fast, x, y, inner.task, **w)
        return direction, losses


class FedAvgSGD(MetaAlgorithm):
    name = "fedavg"

    def _episode_gradients(self, model, params, batch, inner):  # type: ignore[override]
        x, y, w = batch.joined()
        with torch.enable_grad():
            theta = per_episode_copies(params, batch.size)
            losses = episode_losses(model, theta, x, y, inner.task, **w)
            grads = torch.autograd.grad(losses.sum(), list(theta.values()))
        return dict(zip(theta, grads)), losses.detach()


ALGORITHMS: dict[str, MetaAlgorithm] = {
    a.name: a for a in (SecondOrderMAML(), FirstOrderMAML(), Reptile(), FedAvgSGD())
}


def get_algorithm(name: str) -> MetaAlgorithm:
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"unknown algorithm {name!r} (expected one of {', '.join(sorted(ALGORITHMS))})") from None
