"""One hospital's training round, as its ClientApp runs it: private or not, budget first.

Kept apart from Flower so that the order of operations a privacy officer cares about reads in one
place: check the ledger and reserve the round's spend against the cap (one write transaction),
train, and only then return the update.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedmeta.config import ExperimentConfig
from fedmeta.data.episodes import EpisodeSampler
from fedmeta.data.hospital import Hospital
from fedmeta.meta.algorithms import get_algorithm
from fedmeta.meta.functional import Params
from fedmeta.meta.local_training import LocalResult, meta_train_locally
from fedmeta.personal_state import PersonalStore
from fedmeta.privacy.budget import HospitalBudget
from fedmeta.privacy.canaries import GradientCanaries, add_canaries, make_canaries
from fedmeta.privacy.client_dp import privatize_update
from fedmeta.privacy.plan import PrivacyPlan, support_records
from fedmeta.privacy.private_training import meta_train_privately
from fedmeta.tasks import build_task

__all__ = ["RoundOutcome", "train_hospital_round"]


@dataclass(frozen=True)
class RoundOutcome:
    result: LocalResult | None  # None: the hospital declined
    declined: str = ""
    privacy: dict[str, float] = field(default_factory=dict)
    ledger: tuple[int, str] = (0, "")  # (rows, head) of the hospital's ledger after this round's spend


def train_hospital_round(
    cfg: ExperimentConfig, hospital: Hospital, index: int, model: nn.Module, params: Params, *,
    plan: PrivacyPlan | None, server_round: int, run_id: str, ledger_path: Path, device: torch.device,
    anchor: tuple[int, str] = (0, ""), noise_scale: float = 1.0,
) -> RoundOutcome:
    """``plan``: what the hospital agreed to (``fedmeta.privacy.policy.negotiate``); ``None`` trains
    without privacy. ``anchor``: the ledger ``(rows, head)`` the run recorded for this hospital.
    Raises ``LedgerError`` when the ledger cannot be trusted."""
    rng = np.random.default_rng([cfg.seed, server_round, index])
    canaries = None
    if cfg.audit.canaries and hospital.name == cfg.audit.hospital:
        canaries = make_canaries(cfg.audit, sum(p.numel() for p in params.values()))
    if plan is None:
        start = _personal_round(cfg, hospital, index, model, params, server_round, ledger_path, device)
        return RoundOutcome(_shared(_train_plainly(cfg, hospital, model, start, rng, canaries, device), model, cfg))
    budget = HospitalBudget(plan, hospital=hospital.name, algorithm=cfg.meta.algorithm, ledger_path=ledger_path)
    decision = budget.spend(run_id=run_id, round=server_round, anchor=anchor)
    if not decision.allowed:
        return RoundOutcome(None, declined=decision.reason)
    secure = plan.secure_randomness
    if secure:  # nothing the run config holds (its seed) may predict the Poisson coins or the noise
        rng = np.random.default_rng(secrets.randbits(128))
    noise_seed = secrets.randbits(63) if secure else int(
        np.random.default_rng([cfg.seed, server_round, index, 1]).integers(2**62))
    noise = torch.Generator(device=device).manual_seed(noise_seed)
    start = _personal_round(cfg, hospital, index, model, params, server_round, ledger_path, device)
    if cfg.privacy.mode == "record":
        result = _shared(meta_train_privately(model, start, hospital, cfg.meta, plan, task=build_task(cfg.task),
                                              rng=rng, noise_generator=noise, secure_mode=secure, device=device,
                                              noise_scale=noise_scale, canaries=canaries), model, cfg)
    else:
        plain = _shared(_train_plainly(cfg, hospital, model, start, rng, canaries, device), model, cfg)
        update = privatize_update(plain.update, sigma=plan.sigma * noise_scale, clip_norm=plan.max_grad_norm,
                                  generator=noise, secure_mode=secure)
        result = LocalResult(update=update, train_loss=plain.train_loss, episodes=plain.episodes)
    return RoundOutcome(result, privacy={"epsilon": decision.epsilon_after, "delta": plan.delta,
                                         "noise-multiplier": plan.sigma}, ledger=(decision.rows, decision.head))


def _personal_round(cfg: ExperimentConfig, hospital: Hospital, index: int, model: nn.Module, params: Params,
                    server_round: int, ledger_path: Path, device: torch.device) -> Params:
    """A personal algorithm's own state (Ditto's model, FedRep's head): updated and written before
    the hospital trains its shared update and replies; never part of the reply. Returns where the
    shared update starts."""
    algorithm = get_algorithm(cfg.meta.algorithm)
    if not algorithm.personal:
        return params
    store = PersonalStore(ledger_path, cfg)
    personal = store.load(device) or algorithm.initial_personal(model, params)
    sampler = EpisodeSampler(hospital.x_train, hospital.y_train, task=build_task(cfg.task), shots=cfg.meta.shots,
                             query=cfg.meta.query, device=device)
    rng = np.random.default_rng([cfg.seed, server_round, index, 2])
    personal = algorithm.update_personal(model, personal, params, sampler, cfg.meta, rng)
    store.save(personal, server_round)
    return algorithm.training_start(params, personal)


def _shared(result: LocalResult, model: nn.Module, cfg: ExperimentConfig) -> LocalResult:
    """The update without what the hospital keeps (FedRep's head)."""
    kept = get_algorithm(cfg.meta.algorithm).kept_at_hospital(model)
    return replace(result, update={k: v for k, v in result.update.items() if k not in kept}) if kept else result


def _train_plainly(cfg: ExperimentConfig, hospital: Hospital, model: nn.Module, params: Params,
                   rng: np.random.Generator, canaries: GradientCanaries | None, device: torch.device) -> LocalResult:
    sampler = EpisodeSampler(hospital.x_train, hospital.y_train, task=build_task(cfg.task), shots=cfg.meta.shots,
                             query=cfg.meta.query, device=device)
    hook = None
    if canaries is not None:
        rate = min(1.0, cfg.meta.meta_batch * (support_records(cfg) + cfg.meta.query) / hospital.n_train)
        hook = partial(add_canaries, canaries=canaries, sample_rate=rate, magnitude=cfg.privacy.max_grad_norm,
                       rng=rng)
    return meta_train_locally(model, params, sampler, cfg.meta, rng, episode_hook=hook)
