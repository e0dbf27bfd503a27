"""A hospital's own budget keeper: before a round it computes the epsilon it would reach and
declines past its cap; after training it commits the spend to its ledger before anything leaves."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedmeta.config import ExperimentConfig
from fedmeta.privacy.accounting import epsilon_of
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

    def decide(self) -> Decision:
        """Whether one more round keeps the hospital within its cap (history from the ledger)."""
        history = self.ledger.history()
        kw = {"delta": self.plan.delta, "accountant": self.plan.accountant}
        before = epsilon_of(history, **kw)
        after = epsilon_of([*history, *self.plan.round_history()], **kw)
        if after > self.plan.max_epsilon:
            return Decision(False, before, after,
                            f"hospital {self.hospital} declines to train: epsilon would reach {after:.3f} "
                            f"> its cap {self.plan.max_epsilon:g} (spent {before:.3f}, delta {self.plan.delta:.2e})")
        return Decision(True, before, after, "")

    def commit(self, *, run_id: str, round: int) -> float:
        """Write-ahead: the round's releases, one row each, durable (one transaction) before the
        update is sent. Each row carries the epsilon after it; returns the round's final epsilon."""
        p = self.plan
        history = self.ledger.history()
        rows = []
        for release, mechanism in zip(p.releases, p.round_history()):
            history.append(mechanism)
            rows.append(dict(
                run_id=run_id, round=round, hospital=self.hospital, algorithm=self.cfg.meta.algorithm,
                mechanism=release.mechanism, sigma=p.sigma, sample_rate=release.sample_rate,
                steps=release.steps_per_round, max_grad_norm=p.max_grad_norm, delta=p.delta,
                accountant=p.accountant, epsilon=epsilon_of(history, delta=p.delta, accountant=p.accountant),
                max_epsilon=p.max_epsilon))
        self.ledger.record(*rows)
        return rows[-1]["epsilon"]
