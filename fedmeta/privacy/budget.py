"""A hospital's own budget keeper: one round's spend is checked against the cap and written to the
ledger in ONE write transaction, before training. Two processes on one ledger are serialised by
SQLite's write lock, so together they can never pass the cap; a process that dies after the write
has its round counted (over-count, never under-count)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedmeta.privacy.accounting import epsilon_of
from fedmeta.privacy.ledger import PrivacyLedger, verify_anchor
from fedmeta.privacy.plan import PrivacyPlan

__all__ = ["Decision", "HospitalBudget"]


@dataclass(frozen=True)
class Decision:
    allowed: bool
    epsilon_before: float
    epsilon_after: float
    reason: str = ""
    rows: int = 0  # ledger rows after the spend (when allowed)
    head: str = ""  # the hash of the last of them


class HospitalBudget:
    def __init__(self, plan: PrivacyPlan, *, hospital: str, algorithm: str, ledger_path: str | Path):
        self.plan = plan
        self.hospital = hospital
        self.algorithm = algorithm
        self.ledger = PrivacyLedger(ledger_path)

    def spend(self, *, run_id: str, round: int, anchor: tuple[int, str] = (0, "")) -> Decision:
        """Reserve one round: allowed only if the ledger is intact, still holds ``anchor`` (the
        ``(rows, head)`` this run last recorded) and the round keeps epsilon within the cap. Each
        release kind is one row carrying the epsilon after it. Raises ``LedgerError``."""
        p = self.plan
        with self.ledger.transaction() as txn:
            verify_anchor(txn.rows, *anchor, where=f"hospital {self.hospital}'s ledger {self.ledger.path}")
            history = [r.as_mechanism for r in txn.rows]
            before = epsilon_of(history, delta=p.delta, accountant=p.accountant)
            spends = []
            for release, mechanism in zip(p.releases, p.round_history()):
                history.append(mechanism)
                spends.append(dict(
                    run_id=run_id, round=round, hospital=self.hospital, algorithm=self.algorithm,
                    mechanism=release.mechanism, sigma=p.sigma, sample_rate=release.sample_rate,
                    steps=release.steps_per_round, max_grad_norm=p.max_grad_norm, delta=p.delta,
                    accountant=p.accountant, epsilon=epsilon_of(history, delta=p.delta, accountant=p.accountant),
                    max_epsilon=p.max_epsilon))
            after = float(spends[-1]["epsilon"])  # type: ignore[arg-type]
            if after > p.max_epsilon:
                return Decision(False, before, after,
                                f"hospital {self.hospital} declines to train: epsilon would reach {after:.3f} "
                                f"> its cap {p.max_epsilon:g} (spent {before:.3f}, delta {p.delta:.2e})")
            added = txn.append(*spends)
            return Decision(True, before, after, rows=len(txn.rows), head=added[-1].row_hash)
