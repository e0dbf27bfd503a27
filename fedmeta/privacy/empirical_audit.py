"""One-run empirical privacy audit (Steinke, Nasr, Jagielski 2023, "Privacy Auditing with One (1)
Training Run").

``m`` gradient canaries (``fedmeta.privacy.canaries``) each join one hospital's records with
probability 1/2; the federation runs once. The auditor sees what that hospital released each round
(its meta-update) and scores each canary white-box: the sum over rounds of the update's coordinate
on the canary's own Dirac direction. It guesses "in" for the ``k`` highest scores and "out" for the ``k``
lowest. With ``v`` correct of ``r`` guesses, any (ε, δ)-DP mechanism gives
``P[correct >= v] <= P[Bin(r, e^ε/(1+e^ε)) >= v] + 2mδ·α`` (the paper's Theorem 3.1, with its
α term); the lower bound is the largest ε whose p-value is below 1 − confidence.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import scipy.stats
import torch

from fedmeta.privacy.canaries import GradientCanaries

__all__ = ["p_value", "epsilon_lower_bound", "canary_scores", "AuditOutcome", "audit_outcome"]


def p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """Probability of at least ``v`` correct of ``r`` guesses on ``m`` canaries under (eps, delta)-DP."""
    if not (0 <= v <= r <= m):
        raise ValueError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    q = 1.0 / (1.0 + math.exp(-eps))
    beta = float(scipy.stats.binom.sf(v - 1, r, q))
    alpha, tail = 0.0, 0.0
    for i in range(1, v + 1):
        tail += float(scipy.stats.binom.pmf(v - i, r, q))
        alpha = max(alpha, tail / i)
    return min(1.0, beta + alpha * delta * 2 * m)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, confidence: float = 0.95) -> float:
    """Largest eps rejected at ``confidence`` (0 when nothing is rejected)."""
    level = 1.0 - confidence
    if r == 0 or p_value(m, r, v, 0.0, delta) >= level:
        return 0.0
    lo, hi = 0.0, 1.0
    while p_value(m, r, v, hi, delta) < level:
        lo, hi = hi, 2 * hi
        if hi > 200:
            return lo
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        if p_value(m, r, v, mid, delta) < level:
            lo = mid
        else:
            hi = mid
    return lo


def canary_scores(trace: list[dict], canaries: GradientCanaries) -> np.ndarray:
    """Sum over released rounds of the update's coordinate on each canary's Dirac direction
    (higher = more likely trained on: the update is the learning rate times the summed gradients)."""
    scores = np.zeros(len(canaries.coords))
    for rec in trace:
        update = torch.cat([rec["update"][k].reshape(-1) for k in rec["theta"]]).double().numpy()
        scores += update[canaries.coords]
    return scores


@dataclass(frozen=True)
class AuditOutcome:
    canaries: int
    included: int
    guesses: int
    correct: int
    epsilon_lower_bound: float
    confidence: float
    delta: float

    def to_dict(self) -> dict:
        return asdict(self)


def audit_outcome(scores: np.ndarray, included: np.ndarray, *, guess_fraction: float, delta: float,
                  confidence: float = 0.95) -> AuditOutcome:
    """Guess in/out for the top and bottom ``guess_fraction / 2`` of canaries; bound epsilon."""
    m = len(scores)
    k = max(1, int(round(m * guess_fraction / 2)))
    order = np.argsort(scores)
    guessed_in, guessed_out = order[-k:], order[:k]
    correct = int(included[guessed_in].sum() + (~included[guessed_out]).sum())
    eps = epsilon_lower_bound(m, 2 * k, correct, delta, confidence)
    return AuditOutcome(m, int(included.sum()), 2 * k, correct, eps, confidence, delta)
