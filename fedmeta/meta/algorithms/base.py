"""What every algorithm declares, in its own file: the state the federation learns, its per-episode
gradient, its adaptation (in training and at evaluation), its search space for ``fedmeta tune``
and its record-level private construction.

Per-episode gradients have a leading episode dimension and are computed for all episodes at once
(``fedmeta.meta.functional``); the meta-gradient is their mean, and keeping them apart lets a
privacy layer clip each episode's contribution.

Notation: ``theta`` = the learned state (the shared initialisation, and whatever else the
algorithm learns with it), ``U_k(theta; D)`` = the algorithm's ``k``-step adaptation on ``D``,
``S``/``Q`` = an episode's support/query set.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from fedmeta.config import MetaConfig
from fedmeta.data.episodes import EpisodeBatch, EpisodeSampler
from fedmeta.meta.chunking import chunk_size, chunks
from fedmeta.meta.functional import Params, adapt, per_episode_copies
from fedmeta.privacy.plan import Release
from fedmeta.tasks import Task
from fedmeta.tuning.space import FEDERATED_SPACE, SearchSpace

__all__ = ["InnerLoop", "MetaAlgorithm", "Releaser", "release_rate"]

# ``release(mechanism, params with a leading episode dim) -> the private per-episode gradients``
Releaser = Callable[[str, Params], Params]


@dataclass(frozen=True)
class InnerLoop:
    """``steps`` SGD steps of size ``lr`` on the task's loss (which the outer loss is as well);
    ``chunk`` episodes are differentiated together (0: automatic, ``fedmeta.meta.chunking``)."""

    steps: int
    lr: float
    task: Task
    chunk: int = 0


def release_rate(records: float, n_train: int, override: float) -> float:
    """The Poisson sampling rate of a release that draws ``records`` of ``n_train`` (or ``override``)."""
    return override or min(1.0, records / n_train)


class MetaAlgorithm(ABC):
    """One subclass per algorithm, one instance in the registry."""

    name: str
    search_space: SearchSpace = FEDERATED_SPACE  # what ``fedmeta tune`` may change
    # "meta-learning", "federated" (FedAvg) or "personalised-fl": which rows a comparison holds against which
    family: str = "meta-learning"

    # ----- state: what the server holds, aggregates, checkpoints and sends -----
    def initial_state(self, params: Params, meta: MetaConfig) -> Params:
        """The learned state at round 0 from the model's initial parameters (default: just those)."""
        return params

    def model_params(self, state: Params) -> Params:
        """The model's parameters within ``state`` (what the model is called with)."""
        return state

    # ----- adaptation: the inner loop in training, and what a hospital does at evaluation -----
    def adapt(self, model: nn.Module, state: Params, x: torch.Tensor, y: torch.Tensor, inner: InnerLoop, *,
              create_graph: bool, weight: torch.Tensor | None = None, normaliser: float | None = None) -> Params:
        """``U_k``: the adapted model parameters of each episode (``state`` has a leading episode dim)."""
        return adapt(model, self.model_params(state), x, y, inner.task, steps=inner.steps, lr=inner.lr,
                     create_graph=create_graph, weight=weight, normaliser=normaliser)

    def draw_outputs(self, model: nn.Module, state: Params, x_support: torch.Tensor, y_support: torch.Tensor,
                     x: torch.Tensor, inner: InnerLoop) -> list[torch.Tensor]:
        """At evaluation: for each draw (leading dim of ``state`` and the support sets), the model's
        outputs for ``x`` after adapting on that draw's support set."""
        adapted = self.adapt(model, state, x_support, y_support, inner, create_graph=False)
        with torch.no_grad():
            return [functional_call(model, {k: v[i].detach() for k, v in adapted.items()}, (x,))
                    for i in range(x_support.shape[0])]

    def adapted_forward(self, model: nn.Module, state: Params, x_support: torch.Tensor, y_support: torch.Tensor,
                        inner: InnerLoop) -> Callable[[torch.Tensor], torch.Tensor]:
        """One hospital's adapted model, as a differentiable function of its inputs: ``state`` and
        the support set without an episode dim. What ``fedmeta onboard`` scores and attributes;
        its outputs equal ``draw_outputs``' for a single draw."""
        adapted = self.adapt(model, per_episode_copies(state, 1), x_support[None], y_support[None], inner,
                             create_graph=False)
        params = {k: v[0].detach() for k, v in adapted.items()}
        return lambda x: functional_call(model, params, (x,))

    def check_model(self, model: nn.Module) -> None:
        """Raises ``FedMetaError`` (one line) for a model this algorithm cannot train."""

    def model_outputs(self, task: Task, meta: MetaConfig) -> int:
        """The model's outputs per example (the task's, or an embedding's size)."""
        return task.n_outputs

    # ----- what a hospital keeps and never sends (Ditto's personal model, FedRep's head) -----
    personal: bool = False  # whether each hospital keeps a personal state (``update_personal``)

    def kept_at_hospital(self, model: nn.Module) -> frozenset[str]:
        """Keys of the state that hospitals never send; the server leaves them as they are."""
        return frozenset()

    def initial_personal(self, model: nn.Module, params: Params) -> Params:
        """A hospital's personal state before its first round, from the global state it was sent."""
        return params

    def update_personal(self, model: nn.Module, personal: Params, global_params: Params, sampler: EpisodeSampler,
                        meta: MetaConfig, rng: np.random.Generator) -> Params:
        """A hospital's personal state after this round (``personal`` algorithms only), computed
        before its shared update."""
        raise NotImplementedError(f"{self.name} keeps no personal state")

    def personal_params(self, params: Params, personal: Params) -> Params:
        """The state a hospital evaluates with: the global one with its personal part in place."""
        return {**params, **personal}

    def training_start(self, params: Params, personal: Params) -> Params:
        """Where the shared update of the round starts (Ditto: the global state as sent)."""
        return params

    # Whether the learned state is a model that predicts without adapting (reported as ``*_unadapted``).
    predicts_unadapted: bool = True
    tasks: tuple[str, ...] = ("binary", "multiclass", "survival")  # task kinds it supports

    # ----- training -----
    def episode_gradients(
        self, model: nn.Module, state: Params, batch: EpisodeBatch, inner: InnerLoop
    ) -> tuple[Params, torch.Tensor]:
        """Per-episode meta-gradients ``{name: (m, *shape)}`` for every key of ``state`` and
        training losses ``(m,)``, the episodes taken in chunks that fit in memory."""
        size = chunk_size(model, batch, inner.steps, inner.chunk)
        if size >= batch.size:
            return self._episode_gradients(model, state, batch, inner)
        parts = [self._episode_gradients(model, state, part, inner) for part in chunks(batch, size)]
        return {k: torch.cat([g[k] for g, _ in parts]) for k in state}, torch.cat([loss for _, loss in parts])

    @abstractmethod
    def _episode_gradients(
        self, model: nn.Module, state: Params, batch: EpisodeBatch, inner: InnerLoop
    ) -> tuple[Params, torch.Tensor]:
        """``episode_gradients`` for a batch that is differentiated at once."""

    def local_step(self, local: Params, global_params: Params, gradient: Params, meta: MetaConfig) -> Params:
        """One local outer step from the meta-batch's mean gradient (``global_params``: the round's
        starting point; a data-independent change of the step is post-processing under DP)."""
        return {k: local[k] - meta.outer_lr * gradient[k] for k in local}

    def meta_gradient(
        self, model: nn.Module, state: Params, batch: EpisodeBatch, inner: InnerLoop
    ) -> tuple[Params, torch.Tensor]:
        """Mean meta-gradient over the meta-batch and the mean training loss."""
        grads, losses = self.episode_gradients(model, state, batch, inner)
        return {k: g.mean(0) for k, g in grads.items()}, losses.mean()

    # ----- record-level differential privacy (``privacy.mode = "record"``) -----
    def record_releases(self, meta: MetaConfig, support: int, n_train: int, rate: float) -> tuple[Release, ...]:
        """What one round releases, for the accountant (``support`` records per support set, ``rate``
        a configured sampling rate or 0). Empty: the algorithm has no record-level construction, and
        the config check refuses it."""
        return ()

    def private_outer_step(self, local: Params, release: Releaser, meta: MetaConfig, global_params: Params) -> Params:
        """One outer step built from per-record DP-SGD releases only (constructions without per-episode
        clipping); everything else in it is post-processing."""
        raise NotImplementedError(f"{self.name} has no per-record DP-SGD construction")
