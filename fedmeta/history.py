"""What happened in each round, per hospital: the raw material of results.json and the plots."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["RoundRecord", "RunHistory"]


@dataclass
class RoundRecord:
    round: int
    sampled: list[str] = field(default_factory=list)
    train: dict[str, dict[str, float]] = field(default_factory=dict)
    eval: dict[str, dict[str, float]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # hospital -> why its reply was not used
    seconds: float = 0.0


@dataclass
class RunHistory:
    hospitals: dict[str, str]  # name -> role ("train" / "held-out")
    rounds: list[RoundRecord] = field(default_factory=list)
    devices: dict[str, str] = field(default_factory=dict)  # name -> torch device it trained on

    def round(self, r: int) -> RoundRecord:
        for rec in self.rounds:
            if rec.round == r:
                return rec
        rec = RoundRecord(round=r)
        self.rounds.append(rec)
        return rec

    def final_eval(self) -> dict[str, dict[str, float]]:
        """Scores of the last evaluated round (a hospital that failed to evaluate then is absent)."""
        evaluated = [rec for rec in self.rounds if rec.eval]
        return dict(evaluated[-1].eval) if evaluated else {}

    def to_dict(self) -> dict[str, Any]:
        return {
            "hospitals": self.hospitals,
            "devices": self.devices,
            "rounds": [vars(r) for r in self.rounds],
        }
