"""What a hospital keeps for itself across rounds and restarts and never sends: a personal model
(Ditto). One file next to the hospital's ledger, tied to the run's resolved config (another
config starts afresh), written atomically before the hospital replies.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from fedmeta.config import ExperimentConfig
from fedmeta.meta.functional import Params

__all__ = ["PersonalStore"]


class PersonalStore:
    def __init__(self, ledger_path: Path, cfg: ExperimentConfig):
        self.path = ledger_path.with_name(f"{ledger_path.stem}.{cfg.meta.algorithm}-personal.pt")
        self.key = hashlib.sha256(cfg.to_json().encode()).hexdigest()

    def load(self, device: torch.device) -> Params | None:
        """The kept state of this run's config, if any."""
        if not self.path.is_file():
            return None
        saved = torch.load(self.path, map_location=device)
        return saved["state"] if saved.get("config") == self.key else None

    def save(self, state: Params, server_round: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        torch.save({"config": self.key, "round": server_round,
                    "state": {k: v.detach().cpu() for k, v in state.items()}}, tmp)
        os.replace(tmp, self.path)
