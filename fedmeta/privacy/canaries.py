"""Canary records for the one-run audit (Steinke, Nasr, Jagielski 2023).

Canaries are random records of large feature norm with random labels, drawn from the audit seed;
each is included in the audited hospital's train split with probability 1/2, independently. The
auditor knows every canary and its coin; the hospital trains on whatever its split holds.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from fedmeta.config import AuditConfig
from fedmeta.data.hospital import Hospital

__all__ = ["Canaries", "make_canaries", "insert_canaries"]


@dataclass(frozen=True)
class Canaries:
    x: np.ndarray  # (m, d) float32
    y: np.ndarray  # (m,) float32
    included: np.ndarray  # (m,) bool: the auditor's secret coins


def make_canaries(cfg: AuditConfig, n_features: int) -> Canaries:
    rng = np.random.default_rng([cfg.seed, 31_337])
    x = rng.normal(size=(cfg.canaries, n_features))
    x *= cfg.canary_norm / np.linalg.norm(x, axis=1, keepdims=True)
    y = (rng.uniform(size=cfg.canaries) < 0.5).astype(np.float32)
    included = rng.uniform(size=cfg.canaries) < 0.5
    return Canaries(x.astype(np.float32), y, included)


def insert_canaries(hospital: Hospital, canaries: Canaries) -> Hospital:
    """The hospital with its included canaries appended to its train split."""
    keep = canaries.included
    return replace(hospital,
                   x_train=np.concatenate([hospital.x_train, canaries.x[keep]]),
                   y_train=np.concatenate([hospital.y_train, canaries.y[keep]]))
