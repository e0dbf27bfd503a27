"""A hospital's privacy plan for a run: which releases it makes each round, their noise multiplier
and sampling rates, delta and its cap.

Computed by the hospital itself from the run config and its own data size, so nothing the server
sends can change it (the server cannot raise a hospital's cap or lower its noise).

Record-level constructions (docs/privacy.md): each algorithm declares its own
(``MetaAlgorithm.record_releases``, in its file under ``fedmeta/meta/algorithms/``); an algorithm
that declares none cannot run with ``privacy.mode = "record"``.
Per-record DP-SGD gave the better utility at equal epsilon for the first-order methods
(``benchmarks/dp_first_order_constructions.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from fedmeta.config import ExperimentConfig
from fedmeta.errors import FedMetaError
from fedmeta.privacy.accounting import Mechanism, calibrate_noise_multiplier, default_delta, epsilon_of
from fedmeta.privacy.client_dp import CLIENT_DELTA, CLIENT_MECHANISM
from fedmeta.tasks import build_task

__all__ = ["Release", "PrivacyPlan", "plan_privacy", "support_records", "EPISODE_CLIPPING", "DP_SGD",
           "DP_SGD_SUPPORT", "DP_SGD_QUERY", "calibrate_for_releases"]

EPISODE_CLIPPING = "record:episode-clipping"
DP_SGD = "record:dp-sgd"
DP_SGD_SUPPORT = "record:dp-sgd-support"
DP_SGD_QUERY = "record:dp-sgd-query"


@dataclass(frozen=True)
class Release:
    """``steps_per_round`` releases of one Gaussian mechanism on Poisson samples of rate ``sample_rate``."""

    mechanism: str
    sample_rate: float
    steps_per_round: int


@dataclass(frozen=True)
class PrivacyPlan:
    releases: tuple[Release, ...]
    sigma: float
    delta: float
    max_grad_norm: float
    accountant: str
    max_epsilon: float
    support_fraction: float
    # Record sampling, slot assignment and noise drawn from OS entropy, never from the run seed:
    # whoever knows the seed could otherwise replay the noise and the Poisson coins.
    secure_randomness: bool = False

    def round_history(self) -> list[Mechanism]:
        """What one round adds to the hospital's accountant, in ledger order."""
        return [Mechanism(self.sigma, r.sample_rate, r.steps_per_round) for r in self.releases]

    def release(self, mechanism: str) -> Release:
        return next(r for r in self.releases if r.mechanism == mechanism)


def support_records(cfg: ExperimentConfig) -> int:
    """Records in an episode's support set: ``meta.shots`` of each of the task's classes."""
    return build_task(cfg.task).n_strata * cfg.meta.shots


def _record_releases(cfg: ExperimentConfig, n_train: int) -> tuple[Release, ...]:
    from fedmeta.meta.algorithms import get_algorithm  # imported here: the algorithms import this module

    releases = get_algorithm(cfg.meta.algorithm).record_releases(cfg.meta, support_records(cfg), n_train,
                                                                   cfg.privacy.sample_rate)
    if not releases:
        raise FedMetaError(f"meta.algorithm: {cfg.meta.algorithm!r} has no record-level DP construction; "
                           "use privacy.mode = \"client\" or \"none\"")
    return releases


@lru_cache(maxsize=64)
def calibrate_for_releases(*, target_epsilon: float, delta: float, rounds: int,
                           releases: tuple[tuple[float, int], ...], accountant: str) -> float:
    """The sigma whose composed history (``rounds`` x the ``(q, steps)`` releases) reaches the target.

    One release kind: Opacus' own calibration. Several: bisection on Opacus' accountant, ending
    within 0.01 below the target (Opacus' tolerance), never above it.
    """
    if len(releases) == 1:
        (q, steps), = releases
        return calibrate_noise_multiplier(target_epsilon=target_epsilon, delta=delta, sample_rate=q,
                                          steps=rounds * steps, accountant=accountant)

    def eps(sigma: float) -> float:
        return epsilon_of([Mechanism(sigma, q, rounds * s) for q, s in releases], delta=delta, accountant=accountant)

    lo, hi = 0.0, 10.0
    while eps(hi) > target_epsilon:
        lo, hi = hi, 2 * hi
        if hi > 1e6:
            raise ValueError(f"no noise multiplier reaches epsilon {target_epsilon}")
    while True:
        mid = 0.5 * (lo + hi)
        e = eps(mid)
        if e > target_epsilon:
            lo = mid
        else:
            hi = mid
            if target_epsilon - e < 0.01:
                return hi


def plan_privacy(cfg: ExperimentConfig, *, hospital: str, n_train: int) -> PrivacyPlan:
    """The plan of ``hospital`` for ``privacy.mode``, as the run config asks (``fedmeta.privacy.policy``
    makes it the stricter of this and the hospital's own policy).

    ``client``: one release a round in which the hospital takes part, accounted at sampling rate 1:
    the server's choice of hospitals is neither Poisson nor secret (a seeded draw of a fixed number),
    so no amplification by subsampling is claimed. Raises ``FedMetaError`` for a delta above ``1 / n_train`` (record
    mode: a mechanism that may publish a whole record) or a target epsilon no noise reaches.
    """
    p, meta = cfg.privacy, cfg.meta
    if p.mode == "record" and cfg.task.kind == "survival":  # the config refuses it too; never plan it
        raise FedMetaError("privacy.mode = \"record\" cannot protect a Cox partial likelihood (docs/privacy.md)")
    episode_records = support_records(cfg) + meta.query
    if p.mode == "client":
        releases, delta = (Release(CLIENT_MECHANISM, 1.0, 1),), p.delta or CLIENT_DELTA
    else:
        releases, delta = _record_releases(cfg, n_train), p.delta or default_delta(n_train)
        if delta > 1.0 / n_train:
            raise FedMetaError(f"privacy.delta: {delta:g} is above 1/n = {1.0 / n_train:.3g} for hospital {hospital} "
                               f"({n_train} train records); use at most that (default min(1e-5, 0.1/n))")
    sigma = p.noise_multiplier
    if not sigma:
        try:
            sigma = calibrate_for_releases(
                target_epsilon=p.target_epsilon, delta=delta, rounds=cfg.federation.rounds,
                releases=tuple((r.sample_rate, r.steps_per_round) for r in releases), accountant=p.accountant)
        except ValueError as err:
            raise FedMetaError(f"privacy.target_epsilon: {p.target_epsilon:g} cannot be reached by hospital {hospital} "
                               f"in {cfg.federation.rounds} rounds at delta {delta:.3g} ({err})") from None
    cap = p.hospitals[hospital].max_epsilon if hospital in p.hospitals else p.max_epsilon
    return PrivacyPlan(
        releases=releases, sigma=sigma, delta=delta, max_grad_norm=p.max_grad_norm, accountant=p.accountant,
        max_epsilon=float(min(cap, p.max_epsilon)), support_fraction=support_records(cfg) / episode_records,
        secure_randomness=p.secure_mode,
    )
