"""``FedMeta``: a Flower strategy that aggregates hospitals' meta-updates and steps a server
meta-optimizer.

It differs from FedAvg in what comes back (a meta-update, not weights), in who trains (only
hospitals that are not held out) and in what it keeps (per-hospital metrics, a checkpoint per round).
Replies with wrong shapes or non-finite values are dropped and logged with the hospital's name.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedmeta.config import ExperimentConfig
from fedmeta.flower.records import RecordError, params_to_record, record_to_params
from fedmeta.flower.reply_codes import BUDGET_EXHAUSTED
from fedmeta.history import RunHistory
from fedmeta.meta.functional import Params
from fedmeta.server_optimizer import ServerMetaOptimizer

__all__ = ["FedMeta", "FederationStopped"]


class FederationStopped(Exception):
    """Too few hospitals are willing to train (their privacy caps are reached): end the run."""

log = logging.getLogger("fedmeta.server")


class FedMeta(FedAvg):
    """Meta-update aggregation weighted by example count, then a server optimizer step."""

    def __init__(
        self,
        *,
        cfg: ExperimentConfig,
        hospital_of: dict[int, str],
        train_nodes: list[int],
        initial_params: Params,
        checkpoint_dir: Path,
        on_round_end: Callable[[int], None] | None = None,
    ):
        super().__init__(
            fraction_train=cfg.federation.fraction_train,
            min_train_nodes=cfg.federation.min_train_nodes,
            min_available_nodes=1,
            fraction_evaluate=1.0,
            min_evaluate_nodes=1,
        )
        self.cfg = cfg
        self.hospital_of = hospital_of
        self.train_nodes = sorted(train_nodes)
        self.optimizer = ServerMetaOptimizer(initial_params, cfg.server)
        roles = {h: "train" if n in train_nodes else "held-out" for n, h in hospital_of.items()}
        self.history = RunHistory(hospitals=dict(sorted(roles.items())))
        self.checkpoint_dir = checkpoint_dir
        self.on_round_end = on_round_end
        self._round_start = time.perf_counter()
        self.declined: set[int] = set()  # hospitals that reached their privacy cap
        self.stop_reason = ""
        # What the audited hospital released each round, and the model it was sent (audit runs only).
        self.audit_trace: list[dict] = []

    # -- training ------------------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._round_start = time.perf_counter()
        willing = [n for n in self.train_nodes if n not in self.declined]
        if len(willing) < self.min_train_nodes:
            names = ", ".join(sorted(self.hospital_of[n] for n in self.declined))
            self.stop_reason = (f"stopped before round {server_round}: {len(willing)} hospital(s) can still train, "
                                f"fewer than federation.min_train_nodes={self.min_train_nodes} "
                                f"(privacy cap reached: {names})")
            raise FederationStopped(self.stop_reason)
        rng = np.random.default_rng([self.cfg.seed, server_round, 17])
        k = max(self.min_train_nodes, math.ceil(self.fraction_train * len(willing)))
        k = min(k, len(willing))
        nodes = sorted(willing[int(i)] for i in rng.choice(len(willing), size=k, replace=False))
        self.history.round(server_round).sampled = [self.hospital_of[n] for n in nodes]
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return self._construct_messages(record, nodes, MessageType.TRAIN)

    def _accept(self, msg: Message, server_round: int) -> tuple[str, Params, float, dict[str, float]] | None:
        hospital = self.hospital_of.get(msg.metadata.src_node_id, f"node-{msg.metadata.src_node_id}")
        rec = self.history.round(server_round)
        if msg.has_error():
            if msg.error.code == BUDGET_EXHAUSTED:
                self.declined.add(msg.metadata.src_node_id)
            rec.failed[hospital] = f"error reply: {msg.error.reason}"
            log.warning("round %d: hospital %s replied with an error: %s", server_round, hospital, msg.error.reason)
            return None
        try:
            update = record_to_params(msg.content["arrays"], self.optimizer.current())
            metrics = {k: float(v) for k, v in msg.content["metrics"].items()}  # type: ignore[arg-type]
            n = metrics["num-examples"]
            if not (math.isfinite(n) and n > 0):
                raise RecordError(f"num-examples must be a positive number, got {n}")
        except (RecordError, KeyError, TypeError, ValueError) as err:
            rec.failed[hospital] = f"dropped: {err}"
            log.warning("round %d: dropped the reply of hospital %s: %s", server_round, hospital, err)
            return None
        return hospital, update, n, metrics

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        accepted = [a for a in (self._accept(m, server_round) for m in replies) if a is not None]
        rec = self.history.round(server_round)
        for name in rec.sampled:
            if name not in rec.failed and name not in {a[0] for a in accepted}:
                rec.failed[name] = "no reply"
        if not accepted:
            log.warning("round %d: no usable reply; the global model is unchanged", server_round)
            self._save_checkpoint(server_round)
            return None, None
        if self.cfg.audit.canaries:
            sent = self.optimizer.current()
            self.audit_trace += [{"round": server_round, "theta": sent, "update": a[1]}
                                 for a in accepted if a[0] == self.cfg.audit.hospital]
        total = sum(a[2] for a in accepted)
        names = accepted[0][1].keys()
        meta_update = {k: sum(a[1][k] * (a[2] / total) for a in accepted) for k in names}
        new_params = self.optimizer.step(meta_update)
        for hospital, _, _, metrics in accepted:
            rec.train[hospital] = metrics
        self._save_checkpoint(server_round)
        loss = sum(a[3].get("train-loss", 0.0) * a[2] for a in accepted) / total
        return params_to_record(new_params), MetricRecord({"train-loss": loss, "hospitals": len(accepted)})

    # -- evaluation ----------------------------------------------------------------------------
    def _evaluates(self, server_round: int) -> bool:
        return server_round % self.cfg.eval.every == 0 or server_round == self.cfg.federation.rounds

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if not self._evaluates(server_round):
            self._end_round(server_round)
            return []
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return self._construct_messages(record, sorted(self.hospital_of), MessageType.EVALUATE)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        rec = self.history.round(server_round)
        for msg in replies:
            hospital = self.hospital_of.get(msg.metadata.src_node_id, f"node-{msg.metadata.src_node_id}")
            if msg.has_error():
                log.warning("round %d: evaluation failed at hospital %s: %s", server_round, hospital, msg.error.reason)
                continue
            try:
                m = msg.content["metrics"]
                scores = {"auc": float(m["auc"]), "accuracy": float(m["accuracy"]),  # type: ignore[arg-type]
                          "auc_unadapted": float(m["auc-unadapted"])}  # type: ignore[arg-type]
                if not all(0.0 <= v <= 1.0 for v in scores.values()):
                    raise ValueError(f"metrics outside [0, 1]: {scores}")
            except (KeyError, TypeError, ValueError) as err:
                log.warning("round %d: dropped the evaluation of hospital %s: %s", server_round, hospital, err)
                continue
            rec.eval[hospital] = scores
        self._end_round(server_round)
        if not rec.eval:
            return None
        aucs = [v["auc"] for v in rec.eval.values()]
        return MetricRecord({"mean-auc": float(np.mean(aucs)), "worst-auc": float(np.min(aucs))})

    # -- bookkeeping ---------------------------------------------------------------------------
    def _end_round(self, server_round: int) -> None:
        self.history.round(server_round).seconds = time.perf_counter() - self._round_start
        if self.on_round_end is not None:
            self.on_round_end(server_round)

    def _save_checkpoint(self, server_round: int) -> None:
        """Atomic: a crash leaves the previous checkpoint or the new one, never half of one."""
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        path = self.checkpoint_dir / "checkpoint.pt"
        tmp = path.with_suffix(".pt.tmp")
        torch.save({"round": server_round, "server": self.optimizer.state_dict(),
                    "history": self.history.to_dict()}, tmp)
        os.replace(tmp, path)
