"""Checks made before any process starts: a run that no hospital could train, or one resumed on
ledgers that no longer hold what the run recorded, fails in one line instead of running."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedmeta.config import ExperimentConfig
from fedmeta.data.hospital import Federation
from fedmeta.data.sources import training_hospitals
from fedmeta.errors import FedMetaError
from fedmeta.privacy.ledger import LedgerError, PrivacyLedger, verify_anchor
from fedmeta.privacy.policy import PolicyRefusal, negotiate, policy_from_config

__all__ = ["check_run", "check_resumed_ledgers"]


def check_run(cfg: ExperimentConfig, fed: Federation) -> None:
    """The model can take this data and the algorithm train it; per-hospital settings name real hospitals; every training
    hospital can plan its privacy (delta within bounds, target epsilon reachable); enough of them
    accept the run to train."""
    from fedmeta.meta.algorithms import get_algorithm
    from fedmeta.models import build_model
    from fedmeta.tasks import build_task

    algorithm = get_algorithm(cfg.meta.algorithm)
    algorithm.check_model(build_model(cfg.model, fed.input_shape, cfg.seed,
                                      algorithm.model_outputs(build_task(cfg.task), cfg.meta)))
    unknown = sorted(set(cfg.privacy.hospitals) - set(fed.names))
    if unknown:
        raise FedMetaError(f"privacy.hospitals: unknown hospital {unknown[0]!r} (hospitals: {', '.join(fed.names)})")
    trainers = training_hospitals(fed, cfg)
    p = cfg.privacy
    if p.mode == "client" and p.delta and p.delta > 1.0 / len(fed.names):
        raise FedMetaError(f"privacy.delta: {p.delta:g} is above 1/hospitals = {1.0 / len(fed.names):.3g}, the bound "
                           "for hospital-level DP")
    willing = []
    for name in trainers:
        try:
            negotiate(policy_from_config(cfg, name), cfg, hospital=name, n_train=fed.get(name).n_train)
            willing.append(name)
        except PolicyRefusal:
            pass
    need = cfg.federation.min_train_nodes
    if len(willing) < need:
        refused = sorted(set(trainers) - set(willing))
        raise FedMetaError(f"federation.min_train_nodes: {need}, but only {len(willing)} hospital(s) can train "
                           f"({len(trainers)} training, {len(refused)} refusing the run by their privacy.hospitals "
                           f"policy{': ' + ', '.join(refused) if refused else ''})")


def check_resumed_ledgers(anchors: Mapping[str, Mapping[str, Any]], ledger_dir: Path) -> None:
    """Each hospital's ledger still holds the head the checkpointed run recorded for it."""
    for hospital, anchor in sorted(anchors.items()):
        path = ledger_dir / f"{hospital}.sqlite"
        where = f"--resume: hospital {hospital}'s ledger {path}"
        if not path.is_file():
            raise FedMetaError(f"{where} is missing, but the run recorded {anchor['rows']} row(s) in it "
                               f"(epsilon {float(anchor['epsilon']):.3f}): its spent budget would be lost")
        try:
            verify_anchor(PrivacyLedger(path).rows(), int(anchor["rows"]), str(anchor["head"]), where)
        except LedgerError as err:
            raise FedMetaError(str(err)) from None
