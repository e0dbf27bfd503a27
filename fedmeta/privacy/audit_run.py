"""``fedmeta audit --empirical``: run the federation once with canaries, then bound epsilon from
below and set it next to the accountant's epsilon for the audited hospital."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from fedmeta.config import ExperimentConfig
from fedmeta.data.sources import load_federation, training_hospitals
from fedmeta.errors import FedMetaError
from fedmeta.meta.algorithms import get_algorithm
from fedmeta.meta.functional import params_of
from fedmeta.models import build_model
from fedmeta.privacy.accounting import default_delta
from fedmeta.privacy.canaries import make_canaries
from fedmeta.privacy.empirical_audit import audit_outcome, canary_scores
from fedmeta.privacy.ledger import PrivacyLedger
from fedmeta.tasks import build_task

__all__ = ["run_empirical_audit"]


def run_empirical_audit(cfg: ExperimentConfig, out_dir: Path,
                        simulate_fn: Callable[[ExperimentConfig, Path], dict[str, Any]],
                        guess_fraction: float = 0.2) -> dict[str, Any]:
    if cfg.audit.canaries < 10:
        raise FedMetaError("audit.canaries: an empirical audit needs at least 10 canaries")
    fed = load_federation(cfg)
    if cfg.audit.hospital not in training_hospitals(fed, cfg):
        raise FedMetaError(f"audit.hospital: {cfg.audit.hospital!r} is not a training hospital "
                           f"(training hospitals: {', '.join(training_hospitals(fed, cfg))})")
    algorithm = get_algorithm(cfg.meta.algorithm)
    model = build_model(cfg.model, fed.input_shape, cfg.seed, algorithm.model_outputs(build_task(cfg.task), cfg.meta))
    # What a hospital releases (and its canaries live in): the algorithm's whole state, not only the model's
    # parameters (Meta-SGD's rates, a relation module): the same count the hospital draws its canaries from.
    n_params = sum(v.numel() for v in algorithm.initial_state(params_of(model), cfg.meta).values())
    if cfg.audit.canaries > n_params:
        raise FedMetaError(f"audit.canaries: {cfg.audit.canaries} gradient canaries need as many model parameters; "
                           f"the model has {n_params} (use fewer canaries or a larger model.hidden)")
    run_dir = out_dir / "run"
    simulate_fn(cfg, run_dir)
    trace_path = run_dir / "audit_trace.pt"
    trace = torch.load(trace_path) if trace_path.is_file() else []
    canaries = make_canaries(cfg.audit, n_params)
    scores = canary_scores(trace, canaries)
    ledger_path = run_dir / "ledgers" / f"{cfg.audit.hospital}.sqlite"
    rows = PrivacyLedger.read_only(ledger_path) if ledger_path.is_file() else []
    delta = rows[-1].delta if rows else default_delta(fed.get(cfg.audit.hospital).n_train)
    claimed = rows[-1].epsilon if rows else math.inf
    outcome = audit_outcome(scores, canaries.included, guess_fraction=guess_fraction, delta=delta)
    report = {
        "hospital": cfg.audit.hospital,
        "privacy_mode": cfg.privacy.mode,
        "rounds_released": len(trace),
        "epsilon_claimed": claimed,
        **outcome.to_dict(),
        "consistent": outcome.epsilon_lower_bound <= claimed,
    }
    (out_dir / "empirical_audit.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report
