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
        dtype = next(iter(self.params.values())).dtype
        # All parameters as one (m, P) matrix: one reduction for the norms, one product for the sum.
        flat = torch.cat([episode_grads[k].detach().reshape(m, -1).to(dtype) for k in self.params], dim=1)
        squared = flat.pow(2).sum(1)
        # Bad episodes: NaN/inf, or so large that their squared norm overflows.
        finite = torch.isfinite(squared)
        if not bool(finite.all()):
            flat = torch.where(finite[:, None], flat, torch.zeros_like(flat))
            squared = torch.where(finite, squared, torch.zeros_like(squared))
        # Opacus' clip_and_accumulate, add_noise, scale_grad (loss_reduction "mean") and SGD's step.
        factor = (self.max_grad_norm / (squared.sqrt() + 1e-6)).clamp(max=1.0)
        summed = factor @ flat
        offset = 0
        for p in self.params.values():
            part = summed[offset:offset + p.numel()].view_as(p)
            offset += p.numel()
            noise = _generate_noise(std=self.noise_std, reference=part, generator=self.generator,
                                    secure_mode=self.secure_mode)
            p.add_((part + noise) / self.episodes, alpha=-self.lr)
