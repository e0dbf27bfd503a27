"""Per-record DP-SGD releases for first-order MAML, Reptile and FedAvg.

Every data-touching step is its own release. For each of ``m`` episodes at once: a FRESH Poisson
sample of the hospital's records (rate ``q``), the loss gradient of each sampled record at that
episode's current weights, clipped to ``C`` by Opacus' ``DPOptimizer``, summed, Gaussian noise of
std ``sigma * C`` added, divided by the expected sample size ``q * n`` (a constant).

One record changes one episode's sum by at most ``C`` (it is in that sample or not), so each
episode's release is a subsampled Gaussian mechanism with multiplier ``sigma``; the ``m`` releases
of a step use independent samples and are counted as ``m`` releases. Samples are padded to the
largest of the step, never cut, so no record can displace another.

Each episode has its own ``DPOptimizer`` (its own parameter slot), so clipping, summing and noise
are Opacus' and the noise is independent across episodes.
"""

from __future__ import annotations

import numpy as np
import torch
from opacus.optimizers import DPOptimizer
from torch import nn

from fedmeta.meta.functional import Params, episode_losses
from fedmeta.tasks import Task
from fedmeta.privacy.canaries import GradientCanaries

__all__ = ["PerRecordRelease"]


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
        self.slots = [{k: nn.Parameter(torch.zeros_like(v)) for k, v in shapes.items()} for _ in range(episodes)]
        self.optimizers = [
            DPOptimizer(torch.optim.SGD(list(slot.values()), lr=0.0),
                        noise_multiplier=sigma * noise_scale, max_grad_norm=max_grad_norm,
                        expected_batch_size=sample_rate * self.n, loss_reduction="mean",
                        generator=generator, secure_mode=secure_mode)
            for slot in self.slots
        ]

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
        """Each sampled record's gradient ``{k: (m * width, *shape)}`` (zeros for padding)."""
        width = idx.shape[1]
        copies = {k: v.detach().repeat_interleave(width, 0).requires_grad_() for k, v in params.items()}
        x, y = self.x[idx.reshape(-1)][:, None, :], self.y[idx.reshape(-1)][:, None]
        with torch.enable_grad():
            losses = episode_losses(self.model, copies, x, y, self.task)
            grads = torch.autograd.grad((losses * mask.reshape(-1)).sum(), list(copies.values()))
        return {k: g.contiguous() for k, g in zip(copies, grads)}

    def _canary_rows(self, canaries: GradientCanaries, rng: np.random.Generator, like: torch.Tensor
                     ) -> list[Params]:
        """This step's sampled "in" canaries as records of gradient ``C * e_j``, per episode."""
        members = canaries.coords[canaries.included]
        hits = rng.uniform(size=(self.m, len(members))) < self.q
        n_params = sum(int(np.prod(s)) for s in self.shapes.values())
        out = []
        for e in range(self.m):
            chosen = members[hits[e]]
            flat = torch.zeros(len(chosen), n_params, dtype=like.dtype, device=like.device)
            flat[torch.arange(len(chosen)), torch.as_tensor(chosen, dtype=torch.long)] = self.clip
            rows, offset = {}, 0
            for k, shape in self.shapes.items():
                size = int(np.prod(shape))
                rows[k] = flat[:, offset:offset + size].reshape(len(chosen), *shape)
                offset += size
            out.append(rows)
        return out

    def release(self, params: Params, rng: np.random.Generator,
                canaries: GradientCanaries | None = None) -> Params:
        """Noised mean gradient of each episode ``{k: (m, *shape)}`` at its weights ``params[k][e]``."""
        idx, mask = self._sample(rng)
        width = idx.shape[1]
        per_record = self._record_gradients(params, idx, mask)
        extra = self._canary_rows(canaries, rng, next(iter(per_record.values()))) if canaries is not None else None
        out: dict[str, list[torch.Tensor]] = {k: [] for k in self.shapes}
        for e, (slot, optimizer) in enumerate(zip(self.slots, self.optimizers)):
            for k, p in slot.items():
                rows = per_record[k][e * width:(e + 1) * width]
                p.grad_sample = rows if extra is None else torch.cat([rows, extra[e][k]])
            optimizer.pre_step()
            if not all(bool(torch.isfinite(p.grad).all()) for p in slot.values()):
                # A non-finite record gradient (diverged weights): release again with such records
                # contributing zero, a function of each record alone. Fresh noise; the first draw is discarded.
                optimizer.zero_grad(set_to_none=True)
                for k, p in slot.items():
                    p.grad_sample = _zero_non_finite_rows(slot, per_record, k, e, width, extra)
                optimizer.pre_step()
            for k, p in slot.items():
                out[k].append(p.grad.detach().clone())
            optimizer.zero_grad(set_to_none=True)
        return {k: torch.stack(v) for k, v in out.items()}


def _zero_non_finite_rows(slot: dict[str, nn.Parameter], per_record: Params, key: str, e: int, width: int,
                          extra: list[Params] | None) -> torch.Tensor:
    rows = {k: per_record[k][e * width:(e + 1) * width] for k in slot}
    if extra is not None:
        rows = {k: torch.cat([rows[k], extra[e][k]]) for k in slot}
    ok = torch.stack([torch.isfinite(r.reshape(len(r), -1)).all(1) for r in rows.values()]).all(0)
    g = rows[key]
    return torch.where(ok.view(-1, *([1] * (g.dim() - 1))), g, torch.zeros_like(g))
