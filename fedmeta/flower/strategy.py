"""``FedMeta``: a Flower strategy that aggregates hospitals' meta-updates and steps a server
meta-optimizer.

It differs from FedAvg in what comes back (a meta-update, not weights), in who trains (only
hospitals that are not held out) and in what it keeps (per-hospital metrics, a checkpoint per round).
Replies with wrong shapes or non-finite values are dropped and logged with the hospital's name.

Faults: a round goes on with the hospitals that replied within the reply timeout, and changes the
model only if at least ``min_train_nodes`` usable updates came back. Before each round the server
learns nodes it has not seen, so a restarted SuperNode rejoins under its new node id. The history
says, per round, who was sent work, who replied, and why each of the others contributed nothing.
A checkpoint written at the end of every round lets a killed run resume (``start(first_round=...)``).
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result

from fedmeta.checkpoint import Checkpoint, save_checkpoint
from fedmeta.config import ExperimentConfig
from fedmeta.flower.membership import Membership, Shape, reply_node
from fedmeta.flower.records import RecordError, params_to_record, record_to_params
from fedmeta.flower.reply_codes import BUDGET_EXHAUSTED, REFUSALS
from fedmeta.flower.selection import OnValidation, RoundSelection, StopRun
from fedmeta.history import RunHistory
from fedmeta.meta.functional import Params
from fedmeta.server_optimizer import ServerMetaOptimizer
from fedmeta.tasks import build_task, wire_name

__all__ = ["FedMeta", "FederationStopped", "short_reason"]


class FederationStopped(Exception):
    """Too few hospitals can train (privacy caps reached, or not connected): end the run."""

log = logging.getLogger("fedmeta.server")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def short_reason(reason: str, limit: int = 300) -> str:
    """The last line of an error reason (Flower puts a whole remote traceback there), uncoloured."""
    lines = [line.strip() for line in _ANSI.sub("", reason).splitlines() if line.strip()]
    text = lines[-1] if lines else ""
    if text.endswith("'>"):  # Flower wraps a remote exception as "<class ...>:<'...'>"
        text = text[:-2]
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
        shape: Shape | None = None,
        on_validation: OnValidation | None = None,
        kept_at_hospitals: frozenset[str] = frozenset(),
    ):
        super().__init__(
            fraction_train=cfg.federation.fraction_train,
            min_train_nodes=cfg.federation.min_train_nodes,
            min_available_nodes=1,
            fraction_evaluate=1.0,
            min_evaluate_nodes=1,
        )
        self.cfg = cfg
        roles = {h: "train" if n in train_nodes else "held-out" for n, h in hospital_of.items()}
        self.members = Membership({h: n for n, h in hospital_of.items()}, roles, shape)
        self.trainers = sorted(h for h, role in roles.items() if role == "train")
        self.optimizer = ServerMetaOptimizer(initial_params, cfg.server)
        # What a hospital's reply holds: the state without what hospitals keep (FedRep's head).
        self.replied_names = [k for k in initial_params if k not in kept_at_hospitals]
        self.task = build_task(cfg.task)
        self.history = RunHistory(hospitals=dict(sorted(roles.items())), primary=self.task.primary)
        self.checkpoint_dir = checkpoint_dir
        self.selection = RoundSelection(cfg, on_validation)
        self.on_round_end = on_round_end
        self._round_start = time.perf_counter()
        self._eval_sent: list[str] = []
        self._sent: list[Message] = []  # the messages of the last send_and_receive (ids set by the grid)
        self.declined: set[str] = set()  # hospitals that reached their privacy cap, for good
        self.refused: set[str] = set()  # hospitals whose policy or ledger refuses this run (asked again on resume)
        self.stop_reason = ""
        self.first_round = 1
        # What the audited hospital released each round, and the model it was sent (audit runs only).
        self.audit_trace: list[dict] = []

    def restore(self, ckpt: Checkpoint) -> None:
        """Continue after the checkpointed round: same model, optimizer state, history and refusals."""
        self.optimizer.load_state_dict(ckpt.server)
        # A hospital whose node is down at the restart stays in the federation and may rejoin.
        unknown = set(self.members.roles) - set(ckpt.history.hospitals)
        if unknown:
            raise ValueError(f"hospitals {sorted(unknown)} are not in the checkpointed run")
        self.members.roles = dict(ckpt.history.hospitals)
        self.trainers = sorted(h for h, role in self.members.roles.items() if role == "train")
        devices = self.history.devices
        self.history = ckpt.history
        self.history.devices = {**ckpt.history.devices, **devices}
        self.declined = set(ckpt.declined)
        self.selection.restore(ckpt.best)
        self.first_round = ckpt.round + 1

    # -- the loop ------------------------------------------------------------------------------
    def start(  # type: ignore[override]
        self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3, timeout: float = 3600,
        train_config: ConfigRecord | None = None, evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    ) -> Result:
        """Rounds ``first_round .. num_rounds``; one checkpoint at the end of each.

        The model sent in the first of them is the server optimizer's (``initial_arrays`` at a fresh
        start, the checkpoint's after ``restore``).
        """
        arrays = params_to_record(self.optimizer.current())
        result = Result(arrays=arrays)
        for server_round in range(self.first_round, num_rounds + 1):
            self._round_start = time.perf_counter()
            messages = list(self.configure_train(server_round, arrays, train_config or ConfigRecord(), grid))
            replies = grid.send_and_receive(messages, timeout=timeout)
            self._sent = messages
            new_arrays, metrics = self.aggregate_train(server_round, replies)
            if new_arrays is not None:
                arrays = result.arrays = new_arrays
            if metrics is not None:
                result.train_metrics_clientapp[server_round] = metrics
            if self._evaluates(server_round):
                messages = list(self.configure_evaluate(server_round, arrays, evaluate_config or ConfigRecord(), grid))
                replies = grid.send_and_receive(messages, timeout=timeout)
                self._sent = messages
                evaluated = self.aggregate_evaluate(server_round, replies)
                if evaluated is not None:
                    result.evaluate_metrics_clientapp[server_round] = evaluated
            if evaluate_fn is not None and (res := evaluate_fn(server_round, arrays)) is not None:
                result.evaluate_metrics_serverapp[server_round] = res
            stop = None
            if self._evaluates(server_round):
                try:
                    self.selection.observe(self.history, server_round, self.optimizer.current)
                except StopRun as err:
                    stop = err
            self._end_round(server_round)
            if stop is not None:
                self.stop_reason = str(stop)
                log.info("%s", stop)
                break
        return result

    # -- training ------------------------------------------------------------------------------
    def _available(self, grid: Grid | None, server_round: int) -> tuple[list[str], list[str]]:
        """``(hospitals that can train now, rejoined ones)``; waits up to the reply timeout for too few."""
        deadline = time.monotonic() + self.cfg.federation.reply_timeout_s
        rejoined: list[str] = []
        while True:
            if grid is not None:
                rejoined += self.members.refresh(grid, timeout=self.cfg.federation.reply_timeout_s)
            willing = [h for h in self.trainers if h not in self.declined and h not in self.refused]
            available = [h for h in willing if h in self.members.connected]
            if len(available) >= self.min_train_nodes or grid is None or time.monotonic() > deadline \
                    or len(willing) < self.min_train_nodes:
                break
            time.sleep(1.0)
        if len(available) < self.min_train_nodes:
            offline = sorted(set(willing) - set(available))
            self.stop_reason = (
                f"stopped before round {server_round}: {len(available)} hospital(s) can train, fewer than "
                f"federation.min_train_nodes={self.min_train_nodes} "
                f"(privacy cap reached: {', '.join(sorted(self.declined)) or 'none'}; "
                + (f"refused by their policy or ledger: {', '.join(sorted(self.refused))}; " if self.refused else "") +
                f"not connected: {', '.join(offline) or 'none'})")
            raise FederationStopped(self.stop_reason)
        return available, sorted(set(rejoined))

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid | None
    ) -> Iterable[Message]:
        available, rejoined = self._available(grid, server_round)
        rng = np.random.default_rng([self.cfg.seed, server_round, 17])
        k = min(len(available), max(self.min_train_nodes, math.ceil(self.fraction_train * len(available))))
        chosen = sorted(available[int(i)] for i in rng.choice(len(available), size=k, replace=False))
        rec = self.history.round(server_round)
        rec.sampled, rec.rejoined = chosen, rejoined
        rec.offline = sorted(h for h in self.trainers if h not in self.declined and h not in self.refused
                             and h not in self.members.connected)
        messages = []
        for h in chosen:  # each hospital is sent the ledger head it last reported, to check it still holds it
            anchor = self.history.ledgers.get(h, {})
            own = ConfigRecord({**config, "server-round": server_round, "ledger-rows": int(anchor.get("rows", 0)),
                                "ledger-head": str(anchor.get("head", ""))})
            record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: own})
            messages += self._construct_messages(record, [self.members.node_of[h]], MessageType.TRAIN)
        return messages

    def _record_spend(self, hospital: str, server_round: int, msg: Message, metrics: dict[str, float]) -> None:
        """Keep a private reply's spend; refuse one whose ledger went back (fewer rows, lower epsilon)."""
        try:
            ledger = msg.content["ledger"]
            rows, head = int(ledger["rows"]), str(ledger["head"])  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError):
            raise RecordError("a private reply without its ledger rows and head") from None
        last = self.history.ledgers.get(hospital)
        if last and (rows <= int(last["rows"]) or metrics["epsilon"] < float(last["epsilon"])):
            raise RecordError(f"its ledger went back: {rows} rows and epsilon {metrics['epsilon']:.4g} after "
                              f"{last['rows']} rows and epsilon {float(last['epsilon']):.4g} in round {last['round']}")
        run_ids = sorted({*(last or {}).get("run_ids", []), str(ledger.get("run-id", ""))})
        self.history.ledgers[hospital] = {
            "round": server_round, "epsilon": metrics["epsilon"], "delta": metrics.get("delta"),
            "sigma": metrics.get("noise-multiplier"), "accountant": str(ledger.get("accountant", "")),
            "rows": rows, "head": head, "run_ids": run_ids}

    def _accept(self, msg: Message, server_round: int) -> tuple[str, Params, float, dict[str, float]] | None:
        hospital = self.members.hospital(reply_node(msg, self._sent))
        rec = self.history.round(server_round)
        rec.replied = sorted({*rec.replied, hospital})
        if msg.has_error():
            reason = short_reason(msg.error.reason)
            if msg.error.code == BUDGET_EXHAUSTED:
                self.declined.add(hospital)
                rec.miss(hospital, "declined", reason)
            elif msg.error.code in REFUSALS:
                self.refused.add(hospital)
                rec.miss(hospital, "refused", reason)
            else:
                rec.miss(hospital, "error", f"error reply (code {msg.error.code}): {reason}")
            log.warning("round %d: hospital %s replied with an error: %s", server_round, hospital, reason)
            return None
        try:
            current = self.optimizer.current()
            update = record_to_params(msg.content["arrays"], {k: current[k] for k in self.replied_names})
            metrics = {k: float(v) for k, v in msg.content["metrics"].items()}  # type: ignore[arg-type]
            n = metrics["num-examples"]
            if not (math.isfinite(n) and n > 0):
                raise RecordError(f"num-examples must be a positive number, got {n}")
            if "epsilon" in metrics:
                self._record_spend(hospital, server_round, msg, metrics)
        except (RecordError, KeyError, TypeError, ValueError) as err:
            rec.miss(hospital, "dropped", str(err))
            log.warning("round %d: dropped the reply of hospital %s: %s", server_round, hospital, err)
            return None
        return hospital, update, n, metrics

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        accepted = [a for a in (self._accept(m, server_round) for m in replies) if a is not None]
        accepted.sort(key=lambda a: a[0])  # replies arrive in any order; the sum must not depend on it
        rec = self.history.round(server_round)
        for name in rec.sampled:
            if name not in rec.replied:
                rec.miss(name, "no-reply", f"no reply within {self.cfg.federation.reply_timeout_s:g}s")
                log.warning("round %d: no reply from hospital %s", server_round, name)
        for hospital, _, _, metrics in accepted:
            rec.train[hospital] = metrics
        if len(accepted) < self.min_train_nodes:
            log.warning("round %d: %d usable update(s), fewer than federation.min_train_nodes=%d; "
                        "the global model is unchanged", server_round, len(accepted), self.min_train_nodes)
            return None, None
        if self.cfg.audit.canaries:
            sent = self.optimizer.current()
            self.audit_trace += [{"round": server_round, "theta": sent, "update": a[1]}
                                 for a in accepted if a[0] == self.cfg.audit.hospital]
        total = sum(a[2] for a in accepted)
        names = accepted[0][1].keys()
        meta_update = {k: sum(a[1][k] * (a[2] / total) for a in accepted) for k in names}
        new_params = self.optimizer.step(meta_update)
        rec.aggregated = True
        loss = sum(a[3].get("train-loss", 0.0) * a[2] for a in accepted) / total
        return params_to_record(new_params), MetricRecord({"train-loss": loss, "hospitals": len(accepted)})

    # -- evaluation ----------------------------------------------------------------------------
    def _evaluates(self, server_round: int) -> bool:
        return server_round % self.cfg.eval.every == 0 or server_round == self.cfg.federation.rounds

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid | None
    ) -> Iterable[Message]:
        if not self._evaluates(server_round):
            return []
        self._eval_sent = sorted(self.members.connected)
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        nodes = [self.members.node_of[h] for h in self._eval_sent]
        return self._construct_messages(record, nodes, MessageType.EVALUATE)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        rec = self.history.round(server_round)
        for msg in replies:
            hospital = self.members.hospital(reply_node(msg, self._sent))
            if msg.has_error():
                rec.eval_missed[hospital] = f"error reply (code {msg.error.code}): {short_reason(msg.error.reason)}"
                log.warning("round %d: evaluation failed at hospital %s: %s", server_round, hospital,
                            rec.eval_missed[hospital])
                continue
            try:
                scores = self._scores(msg.content["metrics"])
            except (KeyError, TypeError, ValueError) as err:
                rec.eval_missed[hospital] = f"dropped: {err}"
                log.warning("round %d: dropped the evaluation of hospital %s: %s", server_round, hospital, err)
                continue
            rec.eval[hospital] = scores
        for hospital in self._eval_sent:
            if hospital not in rec.eval and hospital not in rec.eval_missed:
                rec.eval_missed[hospital] = f"no reply within {self.cfg.federation.reply_timeout_s:g}s"
        if not rec.eval:
            return None
        primary = [v[self.task.primary] for v in rec.eval.values()]
        name = wire_name(self.task.primary)
        return MetricRecord({f"mean-{name}": float(np.mean(primary)), f"worst-{name}": float(np.min(primary))})

    def _scores(self, m: MetricRecord) -> dict[str, float]:
        """The task's metrics in an evaluation reply (before adaptation too, and on validation when
        sent, with the positive count of pairs its validation score weighs by); each metric must be a
        number in [0, 1]."""
        names, primary = self.task.metric_names, wire_name(self.task.primary)
        scores: dict[str, float] = {k: float(m[wire_name(k)]) for k in names}  # type: ignore[arg-type]
        if f"{primary}-unadapted" in m:  # absent for metric-based learners: their state predicts nothing alone
            scores[f"{self.task.primary}_unadapted"] = float(m[f"{primary}-unadapted"])  # type: ignore[arg-type]
        validated = f"val-{primary}" in m
        if validated:
            scores |= {f"val_{k}": float(m[f"val-{wire_name(k)}"]) for k in names}  # type: ignore[arg-type]
        if not all(0.0 <= v <= 1.0 for v in scores.values()):
            raise ValueError(f"metrics outside [0, 1]: {scores}")
        if validated:
            pairs = m["val-pairs"]
            if not isinstance(pairs, int) or isinstance(pairs, bool) or pairs < 1:
                raise ValueError(f"val-pairs must be a positive integer, got {pairs!r}")
            scores["val_pairs"] = pairs
        return scores

    # -- bookkeeping ---------------------------------------------------------------------------
    def _end_round(self, server_round: int) -> None:
        self.history.round(server_round).seconds = time.perf_counter() - self._round_start
        save_checkpoint(self.checkpoint_dir, server_round=server_round, server=self.optimizer.state_dict(),
                        history=self.history, declined=sorted(self.declined), cfg=self.cfg,
                        best=self.selection.state())
        if self.on_round_end is not None:
            self.on_round_end(server_round)
