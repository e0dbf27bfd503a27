"""Record-level DP outer steps: per-episode meta-gradients clipped, summed and noised as Opacus'
``DPOptimizer`` does it.

The engine computes one meta-gradient per episode slot (exact second order for MAML); each is
clipped to ``C`` (Opacus' factor ``min(1, C / (|g| + 1e-6))``), they are summed, Gaussian noise is
added (Opacus' ``_generate_noise``, one draw per parameter in order, secure mode included) and the
sum is divided by the number of slots ``m`` (a constant). Because adding or removing one record can
change one slot's clipped gradient by up to ``2C`` (the slot's gradient goes from one vector of
norm <= C to another), the noise std is ``2 * sigma * C`` and the accountant is told ``sigma``.
See docs/privacy.md. The step is ``DPOptimizer`` over SGD, number for number
(``tests/test_privacy_mechanism.py``), without its per-step bookkeeping: a fifth of an outer step
of a small MLP went to it.
"""

from __future__ import annotations

import torch

from fedmeta.meta.functional import Params

__all__ = ["SENSITIVITY_FACTOR", "RecordLevelDPStep"]

# Sensitivity of the sum of per-slot clipped gradients to one record, in units of C.
SENSITIVITY_FACTOR = 2.0


class RecordLevelDPStep:
    """Local parameters stepped by private SGD on per-episode meta-gradients."""

    def __init__(self, params: Params, *, sigma: float, max_grad_norm: float, episodes: int, lr: float,
                 generator: torch.Generator | None = None, secure_mode: bool = False,
                 noise_scale: float = 1.0):
        self.params = {k: v.detach().clone() for k, v in params.items()}
        self.sigma = sigma
        self.max_grad_norm = max_grad_norm
        self.noise_std = SENSITIVITY_FACTOR * sigma * noise_scale * max_grad_norm  # 2 sigma C
        self.episodes = episodes
        self.lr = lr
        self.generator = generator
        self.secure_mode = secure_mode

    def current(self) -> Params:
        return {k: p.clone() for k, p in self.params.items()}

    def step(self, episode_grads: Params) -> None:
        """One private outer step from ``{name: (m, *shape)}`` per-episode meta-gradients.

        An episode whose gradient is not finite (an inner loop that overflowed) contributes zero:
        a function of that episode alone, so the sensitivity argument is unchanged.
        """
        from opacus.optimizers.optimizer import _generate_noise  # here: a run without DP does not load Opacus

        m = next(iter(episode_grads.values())).shape[0]
        # One reduction finds the bad episodes (NaN/inf, or so large their squared norm overflows).
        finite = torch.isfinite(sum(g.detach().reshape(m, -1).pow(2).sum(1) for g in episode_grads.values()))
        all_finite = bool(finite.all())
        grads = {}
        for k, p in self.params.items():
            g = episode_grads[k].detach().to(p.dtype)
            if not all_finite:
                g = torch.where(finite.view(m, *([1] * (g.dim() - 1))), g, torch.zeros_like(g))
            grads[k] = g
        # Opacus' clip_and_accumulate, add_noise, scale_grad (loss_reduction "mean") and SGD's step.
        norms = torch.stack([g.reshape(len(g), -1).norm(2, dim=-1) for g in grads.values()], dim=1).norm(2, dim=1)
        factor = (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
        for k, p in self.params.items():
            summed = torch.einsum("i,i...", factor.to(p.dtype), grads[k])
            noise = _generate_noise(std=self.noise_std, reference=summed, generator=self.generator,
                                    secure_mode=self.secure_mode)
            p.add_((summed + noise).view_as(p) / self.episodes, alpha=-self.lr)
