"""The coordinator side: a Flower ServerApp that finds the hospitals, runs ``FedMeta`` and writes
the run's outputs. The server never sees data: it learns each node's hospital and the feature count
from a ``query`` message."""

from __future__ import annotations

import logging
import time
from datetime import datetime
from pathlib import Path

import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp
from tqdm import tqdm

from fedmeta.config import ExperimentConfig
from fedmeta.errors import FedMetaError
from fedmeta.flower.records import params_to_record
from fedmeta.flower.run_config import config_from_run_config
from fedmeta.flower.strategy import FederationStopped, FedMeta
from fedmeta.meta.functional import params_of
from fedmeta.models import build_model
from fedmeta.outputs import write_run_outputs

__all__ = ["build_server_app", "run_federation", "discover_hospitals"]

log = logging.getLogger("fedmeta.server")


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


def discover_hospitals(grid: Grid, expected: int, timeout_s: float) -> dict[int, tuple[str, str, int, str]]:
    """``node_id -> (hospital, role, n_features, device)`` from each node's reply to a ``query``."""
    nodes = _wait_for_nodes(grid, expected, timeout_s)
    messages = [Message(RecordDict({"config": ConfigRecord({"ask": "identity"})}), dst_node_id=n,
                        message_type=MessageType.QUERY) for n in nodes]
    out: dict[int, tuple[str, str, int, str]] = {}
    for reply in grid.send_and_receive(messages, timeout=timeout_s):
        if reply.has_error():
            raise FedMetaError(f"node {reply.metadata.src_node_id} failed to identify itself: {reply.error.reason}")
        ident, sizes = reply.content["identity"], reply.content["sizes"]
        out[reply.metadata.src_node_id] = (str(ident["hospital"]), str(ident["role"]), int(sizes["n-features"]),
                                           str(ident["device"]))
    names = [v[0] for v in out.values()]
    if len(set(names)) != len(names):
        raise FedMetaError(f"federation: two nodes claim the same hospital: {sorted(names)}")
    if len({v[2] for v in out.values()}) != 1:
        raise FedMetaError("federation: hospitals disagree on the number of features")
    return out


def run_federation(grid: Grid, cfg: ExperimentConfig, out_dir: Path, expected_nodes: int = 0,
                   progress: bool = True) -> None:
    t0 = time.perf_counter()
    identities = discover_hospitals(grid, expected_nodes, timeout_s=cfg.federation.reply_timeout_s)
    hospital_of = {n: v[0] for n, v in identities.items()}
    train_nodes = [n for n, v in identities.items() if v[1] == "train"]
    if not train_nodes:
        raise FedMetaError("federation: no hospital is allowed to train (all held out)")
    n_features = next(iter(identities.values()))[2]
    model = build_model(cfg.model, n_features, cfg.seed)
    bar = tqdm(total=cfg.federation.rounds, desc=f"{cfg.meta.algorithm} rounds", unit="round",
               disable=not progress)
    strategy = FedMeta(
        cfg=cfg, hospital_of=hospital_of, train_nodes=train_nodes, initial_params=params_of(model),
        checkpoint_dir=out_dir, on_round_end=lambda r: bar.update(1),
    )
    strategy.history.devices = {v[0]: v[3] for v in identities.values()}
    log.info("hospital devices: %s", strategy.history.devices)
    t_setup = time.perf_counter() - t0
    try:
        strategy.start(
            grid=grid,
            initial_arrays=params_to_record(params_of(model)),
            num_rounds=cfg.federation.rounds,
            timeout=cfg.federation.reply_timeout_s,
            train_config=ConfigRecord({"algorithm": cfg.meta.algorithm}),
            evaluate_config=ConfigRecord(),
        )
    except FederationStopped as stop:
        log.warning("%s", stop)
    bar.close()
    if strategy.audit_trace:
        torch.save(strategy.audit_trace, out_dir / "audit_trace.pt")
    model.load_state_dict(strategy.optimizer.current())
    write_run_outputs(
        out_dir, cfg=cfg, history=strategy.history, model=model,
        timings={"setup_s": t_setup, "total_s": time.perf_counter() - t0},
        stop_reason=strategy.stop_reason,
    )


def build_server_app(config: ExperimentConfig | None = None, out_dir: Path | None = None,
                     expected_nodes: int = 0, progress: bool = True) -> ServerApp:
    """A ServerApp for ``config`` writing to ``out_dir``; both default to the run config."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        cfg = config or config_from_run_config(context.run_config)
        out = out_dir or Path(str(context.run_config.get("out-dir", "") or "")
                              or f"runs/flwr-{datetime.now():%Y%m%d-%H%M%S}")
        out.mkdir(parents=True, exist_ok=True)
        run_federation(grid, cfg, out, expected_nodes=expected_nodes, progress=progress)

    return app
