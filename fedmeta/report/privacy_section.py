"""The privacy part of both reports: each hospital's spend as its ledger records it, recomputed and
checked against the run (``fedmeta audit``'s check)."""

from __future__ import annotations

import math
from typing import Any

from fedmeta.finished_run import FinishedRun
from fedmeta.report.html import table

__all__ = ["privacy_spend", "spend_table"]


def privacy_spend(run: FinishedRun) -> dict[str, Any]:
    """The federation's spend per hospital, from the ledgers the run left (simulation)."""
    from fedmeta.privacy.ledger_audit import audit_ledger, load_run_record

    ledgers = sorted((run.path / "ledgers").glob("*.sqlite"))
    if run.cfg.privacy.mode == "none":
        note = "The federation trained without differential privacy (privacy.mode = \"none\"): no ledger records a spend."
    elif not ledgers:
        note = ("No ledger in the run directory: deployed hospitals keep their ledgers; each can show its spend "
                "with `fedmeta audit LEDGER`.")
    else:
        note = "Each hospital's spend as its ledger records it, recomputed and checked against the run."
    record = load_run_record(run.path) if ledgers else None
    rows = [audit_ledger(p, record).to_dict() for p in ledgers]
    capped = [math.isfinite(r["max_epsilon"]) for r in rows]  # JSON has no infinity: no cap is null
    return {"mode": run.cfg.privacy.mode, "note": note,
            "hospitals": [{**{k: r[k] for k in ("hospital", "rounds", "epsilon", "ok", "problems", "mechanisms")},
                           "max_epsilon": r["max_epsilon"] if cap else None,
                           "remaining": r["remaining"] if cap else None} for r, cap in zip(rows, capped)]}


def spend_table(hospitals: list[dict[str, Any]]) -> str:
    return table(["hospital", "rounds", "epsilon", "cap", "remaining", "ledger check"],
                 [[h["hospital"], h["rounds"], h["epsilon"], "none" if h["max_epsilon"] is None else h["max_epsilon"],
                   "–" if h["remaining"] is None else h["remaining"],
                   "ok" if h["ok"] else "FAILED: " + "; ".join(h["problems"])] for h in hospitals])
