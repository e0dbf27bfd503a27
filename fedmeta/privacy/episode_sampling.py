"""Episodes for record-level DP: Poisson sampling of records, then an independent random slot.

Each outer step every record of the hospital's train split is included independently with
probability ``q``; every included record is then put, independently of all other records, into one
of ``m`` episode slots and into that episode's support (probability ``support_fraction``) or query
set. Adding or removing one record therefore changes at most one episode. Episodes are padded to a
fixed capacity with 0/1 weights; a slot holding more records than its capacity keeps a random
subset (this only changes that slot's own episode). Losses are normalised by the expected slot
size, a constant that does not depend on the data.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from fedmeta.data.episodes import EpisodeBatch

__all__ = ["PoissonEpisodeSampler"]


# Expected share of a slot's sampled records that its capacity may drop.
DROPPED_SHARE = 0.005


@functools.lru_cache(maxsize=256)
def _capacity(expected: float) -> int:
    """The smallest capacity that drops at most ``DROPPED_SHARE`` of a slot's records on average.

    A slot's count is Binomial(n, q f / m), bounded here by a Poisson of the same mean (larger
    variance, so a safe bound); for Poisson ``N`` of mean ``l``, ``E[(N - c)+] = l P(N >= c) -
    c P(N > c)``. Padding costs compute on every step, overflow only a few records in a crowded
    slot; privacy is unaffected either way (see the module docstring). The capacity depends on the
    expected count alone, never on the draw."""
    from scipy.stats import poisson  # scikit-learn's dependency; only record-level DP needs it

    mean = max(expected, 1e-9)
    candidates = np.arange(math.floor(mean), math.ceil(mean + 6.0 * math.sqrt(mean) + 10.0))
    dropped = mean * poisson.sf(candidates - 1, mean) - candidates * poisson.sf(candidates, mean)
    return max(1, int(candidates[np.argmax(dropped <= DROPPED_SHARE * mean)]))


class PoissonEpisodeSampler:
    """Draws ``m`` padded episodes from a Poisson sample of one hospital's records."""

    def __init__(self, x: np.ndarray, y: np.ndarray, *, sample_rate: float, episodes: int,
                 support_fraction: float, device: torch.device):
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        if not 0 < support_fraction < 1:
            raise ValueError(f"support_fraction must be in (0, 1), got {support_fraction}")
        self.x = torch.as_tensor(x, device=device)
        self.y = torch.as_tensor(y, device=device)
        self.n = len(y)
        self.q = sample_rate
        self.m = episodes
        self.support_fraction = support_fraction
        per_slot = self.n * sample_rate / episodes
        self.support_normaliser = per_slot * support_fraction
        self.query_normaliser = per_slot * (1.0 - support_fraction)
        self.support_capacity = _capacity(self.support_normaliser)
        self.query_capacity = _capacity(self.query_normaliser)

    def _pack(self, members: np.ndarray, slot: np.ndarray, capacity: int
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Scatter records into ``(m, capacity)`` slots; ``members`` arrive in random order, so a
        slot that overflows keeps a random subset of its own records."""
        order = np.argsort(slot, kind="stable")
        members, slot = members[order], slot[order]
        starts = np.searchsorted(slot, np.arange(self.m))
        position = np.arange(len(slot)) - starts[slot]
        keep = position < capacity
        idx = np.zeros((self.m, capacity), dtype=np.int64)
        weight = np.zeros((self.m, capacity), dtype=np.float32)
        idx[slot[keep], position[keep]] = members[keep]
        weight[slot[keep], position[keep]] = 1.0
        t_idx = torch.as_tensor(idx, device=self.x.device)
        return self.x[t_idx], self.y[t_idx], torch.as_tensor(weight, device=self.x.device, dtype=self.x.dtype)

    def sample(self, rng: np.random.Generator) -> EpisodeBatch:
        included = np.flatnonzero(rng.uniform(size=self.n) < self.q)
        included = included[rng.permutation(len(included))]
        slot = rng.integers(0, self.m, size=len(included))
        in_support = rng.uniform(size=len(included)) < self.support_fraction
        xs, ys, ws = self._pack(included[in_support], slot[in_support], self.support_capacity)
        xq, yq, wq = self._pack(included[~in_support], slot[~in_support], self.query_capacity)
        return EpisodeBatch(xs, ys, xq, yq, w_support=ws, w_query=wq,
                            support_normaliser=self.support_normaliser, query_normaliser=self.query_normaliser)
