"""Per-FedAvg (Fallah, Mokhtari, Ozdaglar 2020), Hessian-free variant: the one-step MAML objective
``L_Q(theta - alpha grad L_S(theta))`` with its Hessian-vector product replaced by a central
difference of gradients::

    theta~ = theta - alpha * grad L_S(theta)
    g      = grad L_Q(theta~)
    h      = (grad L_S(theta + delta g) - grad L_S(theta - delta g)) / (2 delta)   ~ Hess L_S(theta) g
    direction = g - alpha * h

``alpha`` = ``meta.inner_lr``. The Hessian is taken on the support set, the batch of the inner
step (the paper allows an independent third batch), so as ``delta -> 0`` the direction is
second-order MAML's with one inner step. Training always takes one inner step, as the objective
does; ``meta.inner_steps`` is the adaptation at evaluation.

No record-level construction: the two extra gradient evaluations on perturbed weights would each
need their own release; ``privacy.mode = "client"`` protects it.
"""

from __future__ import annotations

import torch

from fedmeta.meta.algorithms.base import MetaAlgorithm
from fedmeta.meta.functional import Params, episode_losses, per_episode_copies

__all__ = ["PerFedAvg", "DELTA"]

DELTA = 1e-3  # the finite-difference step of the Hessian-vector product (the paper's delta)


def _gradients(model, params: Params, x, y, task, kwargs) -> Params:
    with torch.enable_grad():
        p = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        grads = torch.autograd.grad(episode_losses(model, p, x, y, task, **kwargs).sum(), list(p.values()))
    return dict(zip(p, grads))


class PerFedAvg(MetaAlgorithm):
    name = "perfedavg"
    family = "personalised-fl"
    delta = DELTA

    def _episode_gradients(self, model, state, batch, inner):  # type: ignore[override]
        theta = per_episode_copies(state, batch.size, requires_grad=False)
        s, q, task, alpha = batch.support(), batch.query(), inner.task, inner.lr
        inner_grad = _gradients(model, theta, batch.x_support, batch.y_support, task, s)
        adapted = {k: theta[k] - alpha * inner_grad[k] for k in theta}
        g = _gradients(model, adapted, batch.x_query, batch.y_query, task, q)
        plus = _gradients(model, {k: theta[k] + self.delta * g[k] for k in theta}, batch.x_support, batch.y_support,
                          task, s)
        minus = _gradients(model, {k: theta[k] - self.delta * g[k] for k in theta}, batch.x_support, batch.y_support,
                           task, s)
        direction = {k: g[k] - alpha * (plus[k] - minus[k]) / (2 * self.delta) for k in theta}
        with torch.no_grad():
            losses = episode_losses(model, adapted, batch.x_query, batch.y_query, task, **q)
        return direction, losses
