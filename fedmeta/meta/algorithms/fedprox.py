"""FedProx (Li et al. 2020): FedAvg whose local objective adds a proximal term
``mu/2 * ||theta - theta_global||^2`` (``meta.prox_mu``), which keeps each hospital's local steps
near the round's global model when hospitals differ. At evaluation it fine-tunes like FedAvg.

Record-level DP: FedAvg's per-record DP-SGD; the proximal term does not read data, so adding it
to each released gradient is post-processing.
"""

from __future__ import annotations

from fedmeta.config import MetaConfig
from fedmeta.meta.algorithms.fedavg import FedAvgSGD
from fedmeta.meta.functional import Params
from fedmeta.tuning.space import FEDERATED_SPACE, Param

__all__ = ["FedProx", "proximal_step"]


def proximal_step(local: Params, anchor: Params, gradient: Params, lr: float, weight: float) -> Params:
    """One SGD step on the loss plus ``weight/2 * ||local - anchor||^2``."""
    return {k: local[k] - lr * (gradient[k] + weight * (local[k] - anchor[k])) for k in local}


class FedProx(FedAvgSGD):
    name = "fedprox"
    family = "personalised-fl"
    search_space = (*FEDERATED_SPACE, Param("meta.prox_mu", 1e-3, 1.0, log=True))

    def local_step(self, local: Params, global_params: Params, gradient: Params, meta: MetaConfig) -> Params:
        return proximal_step(local, global_params, gradient, meta.outer_lr, meta.prox_mu)
