"""Audit of privacy ledgers: recompute every recorded epsilon from the mechanism history with
Opacus' accountant and flag each row that does not match (a tampered or buggy ledger)."""

from __future__ import annotations

import json
import math
import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fedmeta.errors import FedMetaError
from fedmeta.privacy.accounting import epsilon_of
from fedmeta.privacy.ledger import LedgerRow, PrivacyLedger

__all__ = ["RowCheck", "LedgerReport", "audit_ledger", "write_audit"]

# Recomputation runs the same deterministic accountant code on the same history: anything beyond
# floating-point noise is a different history or a different number.
REL_TOL = 1e-6


@dataclass(frozen=True)
class RowCheck:
    row: LedgerRow
    recomputed: float
    ok: bool


@dataclass(frozen=True)
class LedgerReport:
    path: str
    hospital: str
    checks: list[RowCheck]

    @property
    def epsilon(self) -> float:
        return self.checks[-1].recomputed if self.checks else 0.0

    @property
    def max_epsilon(self) -> float:
        return self.checks[-1].row.max_epsilon if self.checks else math.inf

    @property
    def mismatches(self) -> list[RowCheck]:
        return [c for c in self.checks if not c.ok]

    def to_dict(self) -> dict[str, Any]:
        return {
            "ledger": self.path, "hospital": self.hospital,
            "epsilon": self.epsilon, "max_epsilon": self.max_epsilon,
            "remaining": self.max_epsilon - self.epsilon,
            "mechanisms": sorted({c.row.mechanism for c in self.checks}),
            "rows": [{**asdict(c.row), "recomputed_epsilon": c.recomputed, "ok": c.ok} for c in self.checks],
            "mismatched_rows": [c.row.id for c in self.mismatches],
        }


def audit_ledger(path: str | Path) -> LedgerReport:
    path = Path(path)
    if not path.is_file():
        raise FedMetaError(f"{path}: ledger not found")
    try:
        rows = PrivacyLedger.read_only(path)
    except sqlite3.DatabaseError as err:
        raise FedMetaError(f"{path}: not a privacy ledger ({err})") from None
    checks = []
    for i, row in enumerate(rows):
        history = [r.as_mechanism for r in rows[: i + 1]]
        recomputed = epsilon_of(history, delta=row.delta, accountant=row.accountant)
        ok = math.isclose(recomputed, row.epsilon, rel_tol=REL_TOL, abs_tol=1e-12)
        checks.append(RowCheck(row, recomputed, ok))
    hospitals = sorted({r.hospital for r in rows})
    return LedgerReport(str(path), ", ".join(hospitals) or path.stem, checks)


def _plot(reports: list[LedgerReport], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for rep in reports:
        if not rep.checks:
            continue
        xs = list(range(1, len(rep.checks) + 1))
        line, = ax.plot(xs, [c.recomputed for c in rep.checks], marker="o", ms=3, label=rep.hospital)
        bad = [(x, c.row.epsilon) for x, c in zip(xs, rep.checks) if not c.ok]
        if bad:
            ax.scatter(*zip(*bad), marker="x", s=60, color="red", zorder=3)
        if math.isfinite(rep.max_epsilon):
            ax.axhline(rep.max_epsilon, ls=":", lw=1, color=line.get_color())
    ax.set_xlabel("ledger entry (one release kind of one round)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("epsilon (recomputed)")
    ax.set_title("privacy spent per hospital (dotted: cap, red x: mismatching row)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_audit(reports: list[LedgerReport], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "audit.json").write_text(json.dumps([r.to_dict() for r in reports], indent=2) + "\n",
                                        encoding="utf-8")
    _plot(reports, out_dir / "audit.png")
