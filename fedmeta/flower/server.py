"""The coordinator side: a Flower ServerApp that finds the hospitals, runs ``FedMeta`` and writes
the run's outputs. The server never sees data: it learns each node's hospital and the feature count
from a ``query`` message. A run killed mid-way continues from its checkpoint (``resume_from``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from flwr.app import ConfigRecord, Context, Message
from flwr.serverapp import Grid, ServerApp
from flwr.superlink.grid import InMemoryGrid
from tqdm import tqdm

from fedmeta.checkpoint import load_checkpoint
from fedmeta.config import ExperimentConfig
from fedmeta.errors import FedMetaError
from fedmeta.flower.membership import Identity, identify
from fedmeta.flower.records import params_to_record
from fedmeta.flower.run_config import config_from_run_config
from fedmeta.flower.selection import OnValidation
from fedmeta.flower.strategy import FederationStopped, FedMeta
from fedmeta.meta.algorithms import get_algorithm
from fedmeta.meta.functional import params_of
from fedmeta.models import build_model
from fedmeta.outputs import write_run_outputs
from fedmeta.tasks import build_task

__all__ = ["build_server_app", "run_federation", "discover_hospitals", "UNTRAINED"]

log = logging.getLogger("fedmeta.server")
# Flower's simulation grid sleeps 0.1 s between looks for replies: most of a small round's time.
# Each look walks every message in flight, so a large federation looks less often (0.1 s at 200).
SIMULATION_PULL_INTERVAL_S = 0.005


def simulation_pull_interval(nodes: int) -> float:
    return min(0.1, SIMULATION_PULL_INTERVAL_S * max(1.0, nodes / 10))


def _pull_as_often_as_awaited(grid: InMemoryGrid) -> None:
    """After each look, the next one waits as long as the replies still awaited allow: a look
    costs in proportion to them, so a round's last replies are looked for every 5 ms, not every
    50 ms as its first ones at 100 hospitals."""
    pull = grid.pull_messages

    def pull_messages(message_ids: Iterable[str]) -> Iterable[Message]:
        awaited = set(message_ids)
        replies = list(pull(awaited))
        grid.pull_interval = simulation_pull_interval(len(awaited) - len(replies))
        return replies

    grid.pull_messages = pull_messages  # type: ignore[method-assign]


def _wait_for_nodes(grid: Grid, expected: int, timeout_s: float) -> list[int]:
    """Nodes connected once ``expected`` are there (or, with ``expected = 0``, once the count is stable)."""
    deadline = time.monotonic() + timeout_s
    last, stable_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        nodes = sorted(grid.get_node_ids())
        if expected and len(nodes) >= expected:
            return nodes
        if len(nodes) != last:
            last, stable_since = len(nodes), time.monotonic()
        elif not expected and nodes and time.monotonic() - stable_since > 3.0:
            return nodes
        time.sleep(0.2)
    raise FedMetaError(f"federation: only {max(last, 0)} of {expected or 'the'} hospital node(s) connected "
                       f"within {timeout_s:.0f}s")


def discover_hospitals(grid: Grid, expected: int, timeout_s: float) -> dict[int, Identity]:
    """``node_id -> Identity`` from each node's reply to a ``query``, once ``expected`` nodes are there."""
    nodes = _wait_for_nodes(grid, expected, timeout_s)
    out, failed = identify(grid, nodes, timeout_s)
    if failed:
        node, why = sorted(failed.items())[0]
        raise FedMetaError(f"node {node} failed to identify itself: {why}")
    names = [v.hospital for v in out.values()]
    if len(set(names)) != len(names):
        raise FedMetaError(f"federation: two nodes claim the same hospital: {sorted(names)}")
    shapes = {v.shape for v in out.values()}
    if len(shapes) != 1:
        raise FedMetaError("federation: hospitals disagree on their data: "
                           + "; ".join(sorted(f"{v.hospital} has {v.shape}" for v in out.values())))
    return out


class SimulatedCrash(RuntimeError):
    """Raised by the test switch ``_stop_after_round``."""


def _round_done(server_round: int, bar: tqdm, stop_after: int) -> None:
    bar.update(1)
    if stop_after and server_round >= stop_after:
        raise SimulatedCrash(f"stopped after round {server_round} (test switch)")


def run_federation(grid: Grid, cfg: ExperimentConfig, out_dir: Path, expected_nodes: int = 0,
                   progress: bool = True, resume_from: Path | None = None,
                   describe_runtime: Callable[[], dict[str, Any]] | None = None,
                   on_validation: OnValidation | None = None, plots: bool = True, _stop_after_round: int = 0) -> None:
    """Find the hospitals, run the rounds (from a checkpoint with ``resume_from``), write the outputs
    (``plots``: with a PNG per metric, half a second of a short run).

    ``describe_runtime`` (called once the hospitals answered) says where the run executes; its
    result goes into results.json. ``on_validation(round, validation AUC)`` is called after each
    evaluated round that has one; returning True ends the run there. ``_stop_after_round`` ends the run abruptly after that round's
    checkpoint, as a crash would (tests of ``resume`` only).
    """
    t0 = time.perf_counter()
    ckpt = None
    if resume_from is not None:
        if cfg.audit.canaries:
            raise FedMetaError("resume: an empirical audit run cannot be resumed; start it again")
        ckpt = load_checkpoint(resume_from, cfg)
        log.warning("resuming after round %d of %d from %s", ckpt.round, cfg.federation.rounds, resume_from)
    identities = discover_hospitals(grid, expected_nodes, timeout_s=cfg.federation.connect_timeout_s)
    hospital_of = {n: v.hospital for n, v in identities.items()}
    train_nodes = [n for n, v in identities.items() if v.role == "train"]
    if not train_nodes:
        raise FedMetaError("federation: no hospital is allowed to train (all held out)")
    shape = next(iter(identities.values())).shape
    task = build_task(cfg.task)
    if (shape.task, shape.n_outputs) != (cfg.task.kind, task.n_outputs):
        raise FedMetaError(f"federation: the hospitals report {shape}; this run's task.kind is {cfg.task.kind!r} "
                           f"with {task.n_outputs} output(s)")
    algorithm = get_algorithm(cfg.meta.algorithm)
    model = build_model(cfg.model, shape.input_shape, cfg.seed, algorithm.model_outputs(task, cfg.meta))
    algorithm.check_model(model)
    kept = algorithm.kept_at_hospital(model)
    if kept and cfg.audit.canaries:
        raise FedMetaError(f"audit.canaries: {cfg.meta.algorithm!r} sends part of its state; the empirical audit "
                           "measures algorithms that send all of it")
    start = ckpt.round if ckpt else 0
    bar = tqdm(total=cfg.federation.rounds, initial=start, desc=f"{cfg.meta.algorithm} rounds", unit="round",
               disable=not progress)
    strategy = FedMeta(
        cfg=cfg, hospital_of=hospital_of, train_nodes=train_nodes, initial_params=algorithm.initial_state(params_of(model), cfg.meta),
        checkpoint_dir=out_dir, on_round_end=lambda r: _round_done(r, bar, _stop_after_round), shape=shape,
        on_validation=on_validation, kept_at_hospitals=kept,
    )
    strategy.history.devices = {v.hospital: v.device for v in identities.values()}
    if ckpt is not None:
        strangers = sorted(set(strategy.history.hospitals) - set(ckpt.history.hospitals))
        if strangers:
            raise FedMetaError(f"resume: {', '.join(strangers)} connected but took no part in the checkpointed run")
        strategy.restore(ckpt)  # hospitals not connected yet may rejoin in a later round
    log.info("hospital devices: %s", strategy.history.devices)
    runtime = describe_runtime() if describe_runtime is not None else {}
    t_setup = time.perf_counter() - t0
    try:
        strategy.start(
            grid=grid,
            initial_arrays=params_to_record(strategy.optimizer.current()),
            num_rounds=cfg.federation.rounds,
            timeout=cfg.federation.reply_timeout_s,
            train_config=ConfigRecord({"algorithm": cfg.meta.algorithm}),
            evaluate_config=ConfigRecord(),
        )
    except FederationStopped as stop:
        log.warning("%s", stop)
    bar.close()
    if not any(r.aggregated for r in strategy.history.rounds):
        reason = _why_untrained(strategy)
        (out_dir / UNTRAINED).write_text(reason + "\n", encoding="utf-8")
        raise FedMetaError(reason)
    if strategy.audit_trace:
        torch.save(strategy.audit_trace, out_dir / "audit_trace.pt")
    strategy.history.kept_round, kept = strategy.selection.kept(strategy.optimizer.current())
    # Buffers are part of the model's definition (built alike on every node from the seed), never
    # trained or sent: the kept parameters replace the parameters, and only those.
    weights = algorithm.model_params(kept)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or set(missing) - {name for name, _ in model.named_buffers()}:
        raise RuntimeError(f"the kept model does not fit the architecture: missing {missing}, unexpected {unexpected}")
    write_run_outputs(
        out_dir, cfg=cfg, history=strategy.history, model=model,
        timings={"setup_s": t_setup, "total_s": time.perf_counter() - t0},
        stop_reason=strategy.stop_reason, resumed_from_round=start, runtime=runtime,
        algorithm_state={k: v for k, v in kept.items() if k not in weights}, schema=shape.schema(), plots=plots,
    )


UNTRAINED = "untrained.txt"  # why a run that changed the model in no round wrote no outputs


def _why_untrained(strategy: FedMeta) -> str:
    """The first reason a hospital contributed nothing, else the stop reason."""
    for rec in strategy.history.rounds:
        for hospital, miss in sorted(rec.missed.items()):
            return (f"no round changed the model: nothing was trained (round {rec.round}, hospital {hospital}: "
                    f"{miss['kind']}: {miss['reason']})")
    return f"no round changed the model: nothing was trained ({strategy.stop_reason or 'no usable update'})"


def build_server_app(config: ExperimentConfig | None = None, out_dir: Path | None = None,
                     expected_nodes: int = 0, progress: bool = True, resume_from: Path | None = None,
                     describe_runtime: Callable[[], dict[str, Any]] | None = None,
                     on_validation: OnValidation | None = None, plots: bool = True,
                     _stop_after_round: int = 0) -> ServerApp:
    """A ServerApp for ``config`` writing to ``out_dir``; both default to the run config.

    ``resume_from`` (run config ``resume-from``) is the output directory of a killed run: the run
    continues after its last checkpointed round and, unless ``out-dir`` is set, writes there.
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        if isinstance(grid, InMemoryGrid):  # the simulation engine's: replies are in memory, look often
            grid.pull_interval = simulation_pull_interval(expected_nodes or len(grid.get_node_ids()))
            _pull_as_often_as_awaited(grid)
        cfg = config or config_from_run_config(context.run_config)
        text = str(context.run_config.get("resume-from", "") or "")
        resume = resume_from or (Path(text) if text else None)
        out = out_dir or Path(str(context.run_config.get("out-dir", "") or "") or resume
                              or f"runs/flwr-{datetime.now():%Y%m%d-%H%M%S}")
        out.mkdir(parents=True, exist_ok=True)
        run_federation(grid, cfg, out, expected_nodes=expected_nodes, progress=progress, resume_from=resume,
                       describe_runtime=describe_runtime, on_validation=on_validation, plots=plots,
                       _stop_after_round=_stop_after_round)

    return app
