"""A hospital's own budget keeper: before a round it computes the epsilon it would reach and
declines past its cap; after training it commits the spend to its ledger before anything leaves."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedmeta.config import ExperimentConfig
from fedmeta.privacy.accounting import Mechanism, epsilon_of
from fedmeta.privacy.ledger import PrivacyLedger
from fedmeta.privacy.plan import PrivacyPlan, plan_privacy

__all__ = ["Decision", "HospitalBudget"]


@dataclass(frozen=True)
class Decision:
    allowed: bool
    epsilon_before: float
    epsilon_after: float
    reason: str


class HospitalBudget:
    def __init__(self, cfg: ExperimentConfig, *, hospital: str, n_train: int, ledger_path: str | Path,
                 max_epsilon: float | None = None):
        self.cfg = cfg
        self.hospital = hospital
        self.plan: PrivacyPlan = plan_privacy(cfg, hospital=hospital, n_train=n_train, max_epsilon=max_epsilon)
        self.ledger = PrivacyLedger(ledger_path)

    def _round_mechanism(self) -> Mechanism:
        return Mechanism(self.plan.sigma, self.plan.sample_rate, self.plan.steps_per_round)

    def decide(self) -> Decision:
        """Whether one more round keeps the hospital within its cap (history from the ledger)."""
        history = self.ledger.history()
        kw = {"delta": self.plan.delta, "accountant": self.plan.accountant}
        before = epsilon_of(history, **kw)
        after = epsilon_of([*history, self._round_mechanism()], **kw)
        if after > self.plan.max_epsilon:
            return Decision(False, before, after,
                            f"hospital {self.hospital} declines to train: epsilon would reach {after:.3f} "
                            f"> its cap {self.plan.max_epsilon:g} (spent {before:.3f}, delta {self.plan.delta:.2e})")
        return Decision(True, before, after, "")

    def commit(self, *, run_id: str, round: int, epsilon_after: float) -> None:
        """Write-ahead: durable before the update is sent."""
        p = self.plan
        self.ledger.record(run_id=run_id, round=round, hospital=self.hospital, algorithm=self.cfg.meta.algorithm,
                           mechanism=p.mechanism, sigma=p.sigma, sample_rate=p.sample_rate,
                           steps=p.steps_per_round, max_grad_norm=p.max_grad_norm, delta=p.delta,
                           accountant=p.accountant, epsilon=epsilon_after, max_epsilon=p.max_epsilon)
