"""Meta-learning algorithms behind one interface, looked up by name.

Each algorithm maps a meta-batch of episodes to **per-episode** meta-gradients (leading dimension =
episode), computed with ``vmap`` over episodes. The meta-gradient is their mean; keeping them apart
lets a privacy layer clip each episode's contribution.

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
from torch.func import grad_and_value, vmap

from fedmeta.data.episodes import EpisodeBatch
from fedmeta.meta.functional import Params, adapt, loss_fn

__all__ = ["InnerLoop", "MetaAlgorithm", "ALGORITHMS", "get_algorithm"]


@dataclass(frozen=True)
class InnerLoop:
    steps: int
    lr: float


class MetaAlgorithm(ABC):
    """Per-episode meta-gradients for a meta-batch; one subclass per algorithm."""

    name: str

    @abstractmethod
    def episode_step(
        self, model: nn.Module, params: Params, xs: torch.Tensor, ys: torch.Tensor,
        xq: torch.Tensor, yq: torch.Tensor, inner: InnerLoop,
    ) -> tuple[Params, torch.Tensor]:
        """Meta-gradient and training loss of ONE episode (un-batched tensors)."""

    def episode_gradients(
        self, model: nn.Module, params: Params, batch: EpisodeBatch, inner: InnerLoop
    ) -> tuple[Params, torch.Tensor]:
        """Per-episode meta-gradients ``{name: (m, *shape)}`` and losses ``(m,)``, vmapped."""

        def one(xs: torch.Tensor, ys: torch.Tensor, xq: torch.Tensor, yq: torch.Tensor) -> tuple[Params, torch.Tensor]:
            return self.episode_step(model, params, xs, ys, xq, yq, inner)

        return vmap(one)(batch.x_support, batch.y_support, batch.x_query, batch.y_query)

    def meta_gradient(
        self, model: nn.Module, params: Params, batch: EpisodeBatch, inner: InnerLoop
    ) -> tuple[Params, torch.Tensor]:
        """Mean meta-gradient over the meta-batch and the mean training loss."""
        grads, losses = self.episode_gradients(model, params, batch, inner)
        return {k: g.mean(0) for k, g in grads.items()}, losses.mean()


class SecondOrderMAML(MetaAlgorithm):
    name = "maml"

    def episode_step(self, model, params, xs, ys, xq, yq, inner):  # type: ignore[override]
        def query_loss(p: Params) -> torch.Tensor:
            return loss_fn(model, adapt(model, p, xs, ys, steps=inner.steps, lr=inner.lr), xq, yq)

        return grad_and_value(query_loss)(params)


class FirstOrderMAML(MetaAlgorithm):
    name = "fomaml"

    def episode_step(self, model, params, xs, ys, xq, yq, inner):  # type: ignore[override]
        adapted = adapt(model, params, xs, ys, steps=inner.steps, lr=inner.lr)
        adapted = {k: v.detach() for k, v in adapted.items()}
        return grad_and_value(lambda a: loss_fn(model, a, xq, yq))(adapted)


class Reptile(MetaAlgorithm):
    name = "reptile"

    def episode_step(self, model, params, xs, ys, xq, yq, inner):  # type: ignore[override]
        x, y = torch.cat([xs, xq]), torch.cat([ys, yq])
        adapted = adapt(model, params, x, y, steps=inner.steps, lr=inner.lr)
        direction = {k: (params[k] - adapted[k]).detach() for k in params}
        return direction, loss_fn(model, adapted, x, y).detach()


class FedAvgSGD(MetaAlgorithm):
    name = "fedavg"

    def episode_step(self, model, params, xs, ys, xq, yq, inner):  # type: ignore[override]
        x, y = torch.cat([xs, xq]), torch.cat([ys, yq])
        return grad_and_value(lambda p: loss_fn(model, p, x, y))(params)


ALGORITHMS: dict[str, MetaAlgorithm] = {
    a.name: a for a in (SecondOrderMAML(), FirstOrderMAML(), Reptile(), FedAvgSGD())
}


def get_algorithm(name: str) -> MetaAlgorithm:
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"unknown algorithm {name!r} (expected one of {', '.join(sorted(ALGORITHMS))})") from None
