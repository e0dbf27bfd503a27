"""Hospital-level DP of the meta-update (DP-FedAvg style, McMahan et al. 2018), noised by the hospital.

The unit is a whole hospital. Its meta-update is handed to Opacus' ``DPOptimizer`` as a single
per-unit gradient: clipped to norm ``S`` and given Gaussian noise of std ``sigma * S`` before it
leaves. Adding or removing a hospital changes the server's sum of clipped updates by at most ``S``,
so each round is a Gaussian mechanism with multiplier ``sigma`` on a hospital sampled with the
participation rate ``q`` (``federation.fraction_train``); the hospital's accountant composes these.
With a handful of hospitals ``q`` is near 1 and there is little to average the noise over, so ε is
large for any useful noise level: this mode protects whole hospitals only in large federations.
"""

from __future__ import annotations

import torch
from torch import nn

from fedmeta.meta.functional import Params

__all__ = ["CLIENT_MECHANISM", "CLIENT_DELTA", "privatize_update"]

CLIENT_MECHANISM = "client:update-clipping"
CLIENT_DELTA = 1e-5  # the default delta of hospital-level DP


def privatize_update(update: Params, *, sigma: float, clip_norm: float, generator: torch.Generator | None,
                     secure_mode: bool) -> Params:
    """``clip(update, S) + N(0, (sigma S)^2)``, computed by Opacus."""
    from opacus.optimizers import DPOptimizer  # here: a run without DP does not load Opacus

    params = {k: nn.Parameter(torch.zeros_like(v)) for k, v in update.items()}
    opt = DPOptimizer(torch.optim.SGD(list(params.values()), lr=1.0), noise_multiplier=sigma,
                      max_grad_norm=clip_norm, expected_batch_size=1, loss_reduction="sum",
                      generator=generator, secure_mode=secure_mode)
    for k, p in params.items():
        p.grad_sample = update[k].detach().unsqueeze(0).to(p.dtype)
    opt.step()  # p = 0 - 1.0 * (clipped update + noise)
    return {k: -p.detach() for k, p in params.items()}
