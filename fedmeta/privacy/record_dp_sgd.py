"""Per-record DP-SGD releases for first-order MAML, Reptile and FedAvg.

Every data-touching step is its own release. For each of ``m`` episodes at once: a FRESH Poisson
sample of the hospital's records (rate ``q``), the loss gradient of each sampled record at that
episode's current weights, clipped to ``C``, summed, Gaussian noise of std ``sigma * C`` added,
divided by the expected sample size ``q * n`` (a constant).

One record changes one episode's sum by at most ``C`` (it is in that sample or not), so each
episode's release is a subsampled Gaussian mechanism with multiplier ``sigma``; the ``m`` releases
of a step use independent samples and are counted as ``m`` releases. Samples are padded to the
largest of the step, never cut, so no record can displace another.

All episodes and records are computed at once: for fedmeta's MLP, the clipped sums without
per-record gradients (``fedmeta.privacy.ghost_clipping``); for any other model, per-record
gradients with ``torch.func`` (a vmap over episodes of a vmap over their records); clipping and
summing as tensor operations with
Opacus' ``DPOptimizer`` formulas (its ``1e-6`` in the clip factor, the flat norm over all
parameters), and the noise drawn by Opacus' own generator function (secure mode included), one
draw per parameter for all episodes. With one episode and the same generator the release equals
Opacus' ``DPOptimizer``; with several, each episode's noise is independent with std ``sigma * C``
(``tests/test_privacy_per_record.py`` holds both).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from fedmeta.meta.functional import Params
from fedmeta.privacy.canaries import GradientCanaries
from fedmeta.privacy.ghost_clipping import GhostClipping
from fedmeta.tasks import Task

__all__ = ["PerRecordRelease", "clip_and_sum"]


def clip_and_sum(per_record: Params, clip: float) -> Params:
    """``sum_i min(1, C / (|g_i| + 1e-6)) g_i`` per episode, ``|g_i|`` the norm of record ``i``'s
    gradient over all parameters (Opacus' ``clip_and_accumulate``); ``per_record[k]``: ``(m, r, *shape)``."""
    first = next(iter(per_record.values()))
    m, r = first.shape[:2]
    norms = torch.stack([g.reshape(m, r, -1).norm(2, dim=-1) for g in per_record.values()], dim=-1).norm(2, dim=-1)
    factor = (clip / (norms + 1e-6)).clamp(max=1.0)
    return {k: torch.einsum("er,er...->e...", factor.to(g.dtype), g) for k, g in per_record.items()}


class PerRecordRelease:
    """``m`` parallel per-record DP-SGD releases at sample rate ``q`` on one hospital's records."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, task: Task, shapes: Params, episodes: int,
                 sample_rate: float, sigma: float, max_grad_norm: float,
                 generator: torch.Generator | None, secure_mode: bool, noise_scale: float = 1.0):
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        self.model, self.x, self.y, self.task = model, x, y, task
        self.n, self.m, self.q, self.clip = len(y), episodes, sample_rate, max_grad_norm
        self.shapes = {k: v.shape for k, v in shapes.items()}
        self.std = sigma * noise_scale * max_grad_norm
        self.generator, self.secure_mode = generator, secure_mode

        def record_loss(params: Params, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
            outputs = functional_call(model, params, (x.unsqueeze(0),))
            return weight * task.example_losses(outputs, y.unsqueeze(0)).sum()

        # Outer vmap: each episode's weights and its sample; inner: each record of the sample.
        self._gradients = vmap(vmap(grad(record_loss), in_dims=(None, 0, 0, 0)))
        self.ghost = GhostClipping(model, task)

    def _sample(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Record indices ``(m, width)`` of independent Poisson samples and their 0/1 mask."""
        rows, cols = np.nonzero(rng.uniform(size=(self.m, self.n)) < self.q)
        counts = np.bincount(rows, minlength=self.m)
        width = max(1, int(counts.max(initial=0)))
        position = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
        idx = np.zeros((self.m, width), dtype=np.int64)
        mask = np.zeros((self.m, width), dtype=bool)
        idx[rows, position], mask[rows, position] = cols, True
        device = self.x.device
        return torch.as_tensor(idx, device=device), torch.as_tensor(mask, device=device)

    def _record_gradients(self, params: Params, idx: torch.Tensor, mask: torch.Tensor) -> Params:
        """Each sampled record's gradient ``{k: (m, width, *shape)}`` (zeros for padding)."""
        weights = {k: v.detach() for k, v in params.items()}
        with torch.enable_grad():
            grads = self._gradients(weights, self.x[idx], self.y[idx], mask.to(self.x.dtype))
        return {k: g.detach() for k, g in grads.items()}

    def _canary_rows(self, canaries: GradientCanaries, rng: np.random.Generator, like: torch.Tensor) -> Params:
        """This step's sampled "in" canaries as records of gradient ``C * e_j`` ``{k: (m, c, *shape)}``,
        each episode's padded with zero rows (which clipping and summing leave out)."""
        members = canaries.coords[canaries.included]
        hits = rng.uniform(size=(self.m, len(members))) < self.q
        n_params = sum(int(np.prod(s)) for s in self.shapes.values())
        width = max(1, int(hits.sum(1).max(initial=0)))
        flat = torch.zeros(self.m, width, n_params, dtype=like.dtype, device=like.device)
        for e in range(self.m):
            chosen = torch.as_tensor(members[hits[e]], dtype=torch.long)
            flat[e, torch.arange(len(chosen)), chosen] = self.clip
        rows, offset = {}, 0
        for k, shape in self.shapes.items():
            size = int(np.prod(shape))
            rows[k] = flat[:, :, offset:offset + size].reshape(self.m, width, *shape)
            offset += size
        return rows

    def _noise(self, like: Params) -> Params:
        from opacus.optimizers.optimizer import _generate_noise  # here: a run without DP does not load Opacus

        return {k: _generate_noise(self.std, like[k], self.generator, self.secure_mode) for k in self.shapes}

    def _mean(self, summed: Params, noise: Params) -> Params:
        """``(sum + noise) / (q n)``, in place: the sums are this release's own tensors."""
        expected = self.q * self.n
        return {k: summed[k].add_(noise[k]).div_(expected) for k in summed}

    def _ghost_sums(self, params: Params, idx: torch.Tensor, mask: torch.Tensor, extra: Params | None
                    ) -> Params | None:
        """The clipped sums without per-record gradients where the model allows (``GhostClipping``);
        None where it does not, or where a record's gradient is not finite (handled below)."""
        if not self.ghost.applies:
            return None
        ghost = self.ghost.clipped_sums(params, self.x[idx], self.y[idx], mask.to(self.x.dtype), self.clip)
        if ghost is None or not bool(torch.isfinite(ghost[1]).all()):
            return None
        sums = ghost[0]
        if extra is not None:
            canary_sums = clip_and_sum(extra, self.clip)
            sums = {k: v + canary_sums[k] for k, v in sums.items()}
        return sums

    def release(self, params: Params, rng: np.random.Generator,
                canaries: GradientCanaries | None = None) -> Params:
        """Noised mean gradient of each episode ``{k: (m, *shape)}`` at its weights ``params[k][e]``."""
        idx, mask = self._sample(rng)
        like = next(iter(params.values()))
        extra = self._canary_rows(canaries, rng, like) if canaries is not None else None
        summed = self._ghost_sums(params, idx, mask, extra)
        if summed is not None:
            noise = self._noise(summed)
            return self._mean(summed, noise)
        per_record = self._record_gradients(params, idx, mask)
        if extra is not None:
            per_record = {k: torch.cat([per_record[k], extra[k]], dim=1) for k in per_record}
        summed = clip_and_sum(per_record, self.clip)
        noise = self._noise(summed)
        finite = torch.stack([torch.isfinite(v.flatten(1)).all(1) for v in summed.values()]).all(0)
        if not bool(finite.all()):
            # A non-finite record gradient (diverged weights): release again with such records
            # contributing zero, a function of each record alone. Fresh noise; the first draw is discarded.
            ok = torch.stack([torch.isfinite(g.flatten(2)).all(-1) for g in per_record.values()]).all(0)
            rows = {k: torch.where(ok.view(*ok.shape, *([1] * (g.dim() - 2))), g, torch.zeros_like(g))
                    for k, g in per_record.items()}
            summed = clip_and_sum(rows, self.clip)
            noise = self._noise(summed)
        return self._mean(summed, noise)
