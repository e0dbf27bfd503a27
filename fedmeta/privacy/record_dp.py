"""Record-level DP outer steps: per-episode meta-gradients through Opacus' ``DPOptimizer``.

The engine computes one meta-gradient per episode slot (exact second order for MAML); they are
handed to ``DPOptimizer`` as its per-unit gradients (``p.grad_sample``), which clips each to ``C``,
sums, adds Gaussian noise and divides by the number of slots ``m`` (a constant). Because adding or
removing one record can change one slot's clipped gradient by up to ``2C`` (the slot's gradient
goes from one vector of norm <= C to another), the noise std is ``2 * sigma * C`` and the
accountant is told ``sigma``. See docs/privacy.md.
"""

from __future__ import annotations

import torch
from torch import nn

from fedmeta.meta.functional import Params

__all__ = ["SENSITIVITY_FACTOR", "RecordLevelDPStep"]

# Sensitivity of the sum of per-slot clipped gradients to one record, in units of C.
SENSITIVITY_FACTOR = 2.0


class RecordLevelDPStep:
    """Local parameters stepped by a DPOptimizer-wrapped SGD on per-episode meta-gradients."""

    def __init__(self, params: Params, *, sigma: float, max_grad_norm: float, episodes: int, lr: float,
                 generator: torch.Generator | None = None, secure_mode: bool = False,
                 noise_scale: float = 1.0):
        from opacus.optimizers import DPOptimizer  # here: a run without DP does not load Opacus

        self.params = {k: nn.Parameter(v.detach().clone()) for k, v in params.items()}
        self.sigma = sigma
        self.optimizer = DPOptimizer(
            torch.optim.SGD(list(self.params.values()), lr=lr),
            # DPOptimizer's noise std is noise_multiplier * max_grad_norm: ask for 2 sigma C.
            noise_multiplier=SENSITIVITY_FACTOR * sigma * noise_scale,
            max_grad_norm=max_grad_norm,
            expected_batch_size=episodes,
            loss_reduction="mean",
            generator=generator,
            secure_mode=secure_mode,
        )

    def current(self) -> Params:
        return {k: p.detach().clone() for k, p in self.params.items()}

    def step(self, episode_grads: Params) -> None:
        """One private outer step from ``{name: (m, *shape)}`` per-episode meta-gradients.

        An episode whose gradient is not finite (an inner loop that overflowed) contributes zero:
        a function of that episode alone, so the sensitivity argument is unchanged.
        """
        m = next(iter(episode_grads.values())).shape[0]
        # One reduction finds the bad episodes (NaN/inf, or so large their squared norm overflows).
        finite = torch.isfinite(sum(g.detach().reshape(m, -1).pow(2).sum(1) for g in episode_grads.values()))
        all_finite = bool(finite.all())
        for k, p in self.params.items():
            g = episode_grads[k].detach().to(p.dtype)
            if not all_finite:
                g = torch.where(finite.view(m, *([1] * (g.dim() - 1))), g, torch.zeros_like(g))
            p.grad_sample = g
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
