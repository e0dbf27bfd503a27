"""The server meta-optimizer: treats the aggregated meta-update as a gradient for the global model.

SGD with ``lr = 1`` and no momentum turns a mean of model deltas into their average model (FedAvg);
Adam gives FedAdam-style adaptive server steps (Reddi et al. 2021).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from fedmeta.config import ServerConfig
from fedmeta.meta.functional import Params

__all__ = ["ServerMetaOptimizer", "SERVER_OPTIMIZERS"]

SERVER_OPTIMIZERS: dict[str, Callable[[list[nn.Parameter], ServerConfig], torch.optim.Optimizer]] = {
    "sgd": lambda ps, c: torch.optim.SGD(ps, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay),
    "adam": lambda ps, c: torch.optim.Adam(ps, lr=c.lr, betas=(c.beta1, c.beta2), weight_decay=c.weight_decay),
}


class ServerMetaOptimizer:
    """Holds the global parameters and steps them with a torch optimizer."""

    def __init__(self, params: Params, cfg: ServerConfig):
        self.params = {k: nn.Parameter(v.detach().clone().cpu()) for k, v in params.items()}
        self.optimizer = SERVER_OPTIMIZERS[cfg.optimizer](list(self.params.values()), cfg)

    def current(self) -> Params:
        return {k: p.detach().clone() for k, p in self.params.items()}

    def step(self, meta_update: Params) -> Params:
        """One step on the parameters ``meta_update`` names; the others (what hospitals keep, e.g.
        FedRep's head) get no gradient, so no step, decay or moment change."""
        for k, p in self.params.items():
            p.grad = meta_update[k].to(p.dtype).clone() if k in meta_update else None
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return self.current()

    def state_dict(self) -> dict[str, Any]:
        # Deep copy: torch returns live references to its moment tensors, which the next step mutates.
        return {"params": self.current(), "optimizer": copy.deepcopy(self.optimizer.state_dict())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state["params"]) != set(self.params):
            raise ValueError("checkpoint parameters do not match the model")
        with torch.no_grad():
            for k, p in self.params.items():
                p.copy_(state["params"][k])
        self.optimizer.load_state_dict(state["optimizer"])
