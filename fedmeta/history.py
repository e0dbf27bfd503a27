"""What happened in each round, per hospital: the raw material of results.json and the plots."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["MISS_KINDS", "RoundRecord", "RunHistory", "validation_score"]

# Why a hospital that was sent work contributed nothing to a round.
MISS_KINDS = ("no-reply", "error", "dropped", "declined", "refused")


def validation_score(rows: list[dict[str, Any]], primary: str = "auc") -> float | None:
    """The within-hospital validation score of hospital rows: each hospital's validation ``primary``
    metric weighted by the pairs it compared (for AUC its (positive, negative) pairs: the fraction of
    same-hospital pairs ranked right). A split with one negative patient counts as the few pairs it
    has, not as a quarter of the verdict. None if a row lacks a validation score."""
    key = f"val_{primary}"
    if any(r.get(key) is None or not r.get("val_pairs") for r in rows):
        return None
    pairs = sum(r["val_pairs"] for r in rows)
    return sum(r[key] * r["val_pairs"] for r in rows) / pairs


@dataclass
class RoundRecord:
    round: int
    sampled: list[str] = field(default_factory=list)  # hospitals sent training work
    replied: list[str] = field(default_factory=list)  # ... of which these sent a reply (usable or not)
    train: dict[str, dict[str, float]] = field(default_factory=dict)  # replies used in the update
    eval: dict[str, dict[str, float]] = field(default_factory=dict)
    missed: dict[str, dict[str, str]] = field(default_factory=dict)  # hospital -> {"kind", "reason"}
    eval_missed: dict[str, str] = field(default_factory=dict)  # hospital -> why it has no score
    offline: list[str] = field(default_factory=list)  # training hospitals not connected at the start
    rejoined: list[str] = field(default_factory=list)  # hospitals back this round (new node, or listed again)
    aggregated: bool = False  # False: too few usable replies, the global model is unchanged
    seconds: float = 0.0

    def miss(self, hospital: str, kind: str, reason: str) -> None:
        assert kind in MISS_KINDS, kind
        self.missed[hospital] = {"kind": kind, "reason": reason}


@dataclass
class RunHistory:
    hospitals: dict[str, str]  # name -> role ("train" / "held-out")
    rounds: list[RoundRecord] = field(default_factory=list)
    devices: dict[str, str] = field(default_factory=dict)  # name -> torch device it trained on
    # name -> the spend it last reported: round, epsilon, delta, sigma, accountant, ledger rows and
    # head, the ledger run ids of this run. Sent back with the next round's work: a ledger that no
    # longer holds that head (deleted, rolled back, rewritten) is refused by its hospital.
    ledgers: dict[str, dict[str, Any]] = field(default_factory=dict)
    kept_round: int = 0  # the round whose model the run ended with (eval.keep = "best"); 0: the last
    primary: str = "auc"  # the task's primary metric, which validation selects on

    def counted(self) -> list[str]:
        """The hospitals a run is judged on: the held-out ones when any are held out, else all."""
        held = [h for h, role in self.hospitals.items() if role == "held-out"]
        return held or list(self.hospitals)

    def round_validation(self, r: int) -> float | None:
        """The validation score of round ``r`` over the counted hospitals; None if one lacks it."""
        scores = self.round(r).eval
        return validation_score([scores.get(h, {}) for h in self.counted()], self.primary)

    def round(self, r: int) -> RoundRecord:
        for rec in self.rounds:
            if rec.round == r:
                return rec
        rec = RoundRecord(round=r)
        self.rounds.append(rec)
        return rec

    def final_eval(self) -> dict[str, dict[str, float]]:
        """Scores of the kept round, else of the last evaluated one (a hospital that failed to
        evaluate then is absent)."""
        if self.kept_round:
            return dict(self.round(self.kept_round).eval)
        evaluated = [rec for rec in self.rounds if rec.eval]
        return dict(evaluated[-1].eval) if evaluated else {}

    def to_dict(self) -> dict[str, Any]:
        return {
            "hospitals": self.hospitals,
            "devices": self.devices,
            "ledgers": self.ledgers,
            "kept_round": self.kept_round,
            "primary": self.primary,
            "rounds": [vars(r) for r in self.rounds],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunHistory":
        return cls(hospitals=dict(data["hospitals"]), devices=dict(data.get("devices", {})),
                   ledgers={h: dict(v) for h, v in data.get("ledgers", {}).items()},
                   kept_round=int(data.get("kept_round", 0)), primary=str(data.get("primary", "auc")),
                   rounds=[RoundRecord(**r) for r in data["rounds"]])
