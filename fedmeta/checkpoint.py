"""The server's checkpoint: everything a killed run needs to continue from its last completed round.

Written atomically at the end of every round (after its evaluation). It holds the global parameters
and the server optimizer's state, the round number, the history so far, the hospitals that declined
for good (privacy cap) and the resolved config. No random state is saved because there is none to
save: the server samples round ``r`` with a generator seeded from ``(seed, r)`` and each hospital
trains round ``r`` with one seeded from ``(seed, r, hospital index)``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedmeta.config import ExperimentConfig
from fedmeta.errors import FedMetaError
from fedmeta.history import RunHistory

__all__ = ["CHECKPOINT", "Checkpoint", "save_checkpoint", "load_checkpoint", "config_difference"]

CHECKPOINT = "checkpoint.pt"
FORMAT = 2

# Settings that change how a run is executed, not what it computes: they may differ on resume.
IGNORED_ON_RESUME = frozenset({
    "federation.reply_timeout_s", "federation.connect_timeout_s", "federation.client_cpus",
    "federation.client_gpus",
})


@dataclass(frozen=True)
class Checkpoint:
    round: int
    server: dict[str, Any]  # ServerMetaOptimizer.state_dict()
    history: RunHistory
    declined: list[str]
    config: dict[str, Any]
    best: dict[str, Any] | None = None  # RoundSelection.state(): the best validation round so far


def save_checkpoint(directory: Path, *, server_round: int, server: dict[str, Any], history: RunHistory,
                    declined: list[str], cfg: ExperimentConfig, best: dict[str, Any] | None = None) -> Path:
    """Atomic: a crash leaves the previous checkpoint or the new one, never half of one."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CHECKPOINT
    tmp = path.with_suffix(".pt.tmp")
    torch.save({"format": FORMAT, "round": server_round, "server": server,
                "history": json.loads(json.dumps(history.to_dict())), "declined": sorted(declined),
                "config": cfg.to_json(), "best": best}, tmp)
    os.replace(tmp, path)
    return path


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): data}


def config_difference(saved: dict[str, Any], now: dict[str, Any]) -> str:
    """The first setting that matters and differs, as ``key (checkpoint X, now Y)``; "" if none."""
    a, b = _flatten(saved), _flatten(now)
    for key in sorted(set(a) | set(b)):
        if key not in IGNORED_ON_RESUME and a.get(key, "<unset>") != b.get(key, "<unset>"):
            return f"{key} (checkpoint {a.get(key, '<unset>')!r}, now {b.get(key, '<unset>')!r})"
    return ""


def load_checkpoint(directory: Path, cfg: ExperimentConfig) -> Checkpoint:
    """The checkpoint in ``directory``, refused with a one-line error if it is not one of ``cfg``'s run."""
    path = directory / CHECKPOINT
    if not path.is_file():
        raise FedMetaError(f"{path}: no checkpoint to resume from")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
        if raw.get("format") != FORMAT:
            raise ValueError(f"checkpoint format {raw.get('format')!r}, expected {FORMAT}")
        saved = json.loads(raw["config"])
        history = RunHistory.from_dict(raw["history"])
        ckpt = Checkpoint(round=int(raw["round"]), server=raw["server"], history=history,
                          declined=list(raw["declined"]), config=saved, best=raw.get("best"))
    except FedMetaError:
        raise
    except Exception as err:  # a truncated or foreign file
        raise FedMetaError(f"{path}: not a readable fedmeta checkpoint: {err}") from None
    diff = config_difference(saved, json.loads(cfg.to_json()))
    if diff:
        raise FedMetaError(f"{path}: the config differs from the checkpointed run's in {diff}; "
                           "resume with the same config")
    return ckpt
