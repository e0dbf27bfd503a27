"""A hospital's privacy plan for a run: noise multiplier, sampling rate, delta, cap.

Computed by the hospital itself from the run config and its own data size, so nothing the server
sends can change it (the server cannot raise a hospital's cap or lower its noise).
"""

from __future__ import annotations

from dataclasses import dataclass

from fedmeta.config import ExperimentConfig
from fedmeta.privacy.accounting import calibrate_noise_multiplier, default_delta
from fedmeta.privacy.client_dp import CLIENT_MECHANISM

__all__ = ["PrivacyPlan", "plan_privacy", "RECORD_MECHANISM"]

RECORD_MECHANISM = "record:episode-clipping"


@dataclass(frozen=True)
class PrivacyPlan:
    mechanism: str
    sigma: float
    sample_rate: float
    steps_per_round: int
    delta: float
    max_grad_norm: float
    accountant: str
    max_epsilon: float
    support_fraction: float


def plan_privacy(cfg: ExperimentConfig, *, hospital: str, n_train: int, max_epsilon: float | None = None
                 ) -> PrivacyPlan:
    """The plan of ``hospital`` for ``privacy.mode`` (``max_epsilon`` from node config overrides the config).

    ``record``: ``outer_steps`` releases a round, records sampled at ``q``. ``client``: one release a
    round, the hospital sampled at the participation rate ``federation.fraction_train``.
    """
    p, meta = cfg.privacy, cfg.meta
    episode_records = 2 * meta.shots + meta.query
    if p.mode == "client":
        mechanism, q, steps, delta = CLIENT_MECHANISM, cfg.federation.fraction_train, 1, p.delta or 1e-5
    else:
        mechanism, steps = RECORD_MECHANISM, meta.outer_steps
        q = p.sample_rate or min(1.0, meta.meta_batch * episode_records / n_train)
        delta = p.delta or default_delta(n_train)
    sigma = p.noise_multiplier or calibrate_noise_multiplier(
        target_epsilon=p.target_epsilon, delta=delta, sample_rate=q,
        steps=cfg.federation.rounds * steps, accountant=p.accountant)
    cap = max_epsilon if max_epsilon is not None else p.hospital_max_epsilon.get(hospital, p.max_epsilon)
    return PrivacyPlan(
        mechanism=mechanism, sigma=sigma, sample_rate=q, steps_per_round=steps, delta=delta,
        max_grad_norm=p.max_grad_norm, accountant=p.accountant, max_epsilon=float(cap),
        support_fraction=2 * meta.shots / episode_records,
    )
