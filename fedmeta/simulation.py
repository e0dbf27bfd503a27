"""One federation on Flower's simulation engine (Ray backend), one virtual SuperNode per hospital.

Ray runs on this machine, or on an existing (multi-node) Ray cluster given by ``ray_address`` /
``RAY_ADDRESS`` (see docs/scale-out.md).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import warnings
from pathlib import Path
from typing import Any

from fedmeta.checkpoint import CHECKPOINT, load_checkpoint
from fedmeta.config import ExperimentConfig
from fedmeta.data.sources import load_federation
from fedmeta.errors import FedMetaError
from fedmeta.output_dir import claimed_output_dir
from fedmeta.privacy.preflight import check_resumed_ledgers, check_run
from fedmeta.ray_session import keep_python_signal_handlers

__all__ = ["connect_ray", "simulate", "resume_simulation"]


def _quiet_flower() -> None:
    """No usage events sent from a hospital's machine (unless the user asked for them), no update
    check, and Flower's console at ERROR."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    telemetry = sys.modules.get("flwr.supercore.telemetry")
    if telemetry is not None and os.environ["FLWR_TELEMETRY_ENABLED"] == "0":
        telemetry.FLWR_TELEMETRY_ENABLED = "0"  # Flower reads the variable once, when a caller first imported it
    from flwr.supercore.logger import update_console_handler

    # ERROR, not WARNING: `run_simulation` announces its own deprecation at WARNING on every call.
    update_console_handler(level=logging.ERROR, timestamps=False, colored=True)
    # Flower has its own console handler; without this its DEBUG records also reach any root
    # handler (Opacus installs one with logging.basicConfig on import).
    logging.getLogger("flwr").propagate = False
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message="Tip: In future versions of Ray", category=FutureWarning)


def _with_mods(app: Any, mods: list[Any]) -> Any:
    """A ClientApp that runs ``app`` inside Flower client ``mods`` (outermost first)."""
    from flwr.clientapp import ClientApp

    outer = ClientApp(mods=mods)
    for register in (outer.query, outer.train, outer.evaluate):
        register()(lambda msg, ctx: app(msg, ctx))
    return outer


def _probe(address: str, source: str) -> None:
    """Fail in seconds, not minutes (Ray retries an unreachable address for a long time)."""
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except ValueError:
        raise FedMetaError(f"{source} {address}: expected auto or HOST:PORT") from None
    except OSError as err:
        raise FedMetaError(f"{source} {address}: no Ray cluster answers there ({err.strerror or err})") from None


def connect_ray(address: str, source: str = "--ray-address") -> None:
    """Attach this process to the Ray cluster at ``address`` before Flower starts (it then uses it);
    nothing to do where it is attached already (``fedmeta.flower.kept_actors``)."""
    import ray

    if ray.is_initialized():
        return
    if address != "auto":
        _probe(address, source)

    # As Flower does when it starts Ray itself: actors must import what this process imports.
    pythonpath = os.pathsep.join([*sys.path, *filter(None, [os.environ.get("PYTHONPATH")])])
    try:
        ray.init(address=address, logging_level="error", log_to_driver=False, include_dashboard=False,
                 runtime_env={"env_vars": {"PYTHONPATH": pythonpath}})
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise FedMetaError(f"{source} {address}: cannot attach to a Ray cluster there: "
                           f"{str(err).splitlines()[0]}") from None


def _check_cpus(address: str, cfg: ExperimentConfig, source: str) -> None:
    import ray

    cpus = float(ray.cluster_resources().get("CPU", 0.0))
    if cpus < cfg.federation.client_cpus:
        ray.shutdown()
        raise FedMetaError(f"{source} {address}: the cluster has {cpus:g} CPU(s), fewer than "
                           f"federation.client_cpus={cfg.federation.client_cpus:g}")


def _describe_ray(attached: bool) -> dict[str, Any]:
    import ray

    if not ray.is_initialized():
        return {"engine": "ray"}
    ctx = ray.get_runtime_context()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return {"engine": "ray", "attached": attached, "address": ctx.gcs_address, "job_id": ctx.get_job_id(),
            "nodes": len(nodes), "cpus": float(ray.cluster_resources().get("CPU", 0.0))}


def simulate(cfg: ExperimentConfig, out_dir: Path, *, progress: bool = True, resume: bool = False,
             ray_address: str = "", on_validation: Any = None, plots: bool = True, _noise_scale: float = 1.0,
             _client_mods: list[Any] | None = None,
             _stop_after_round: int = 0) -> dict[str, Any]:
    """Run ``cfg`` on Ray and return the parsed ``results.json`` written into ``out_dir``.

    ``resume``: ``out_dir`` holds the checkpoint of a killed run of ``cfg``; continue it.
    ``ray_address`` (or the ``RAY_ADDRESS`` environment variable): attach to that existing Ray
    cluster (``auto`` or ``HOST:PORT``) instead of starting one on this machine.

    ``on_validation(round, validation AUC) -> stop?`` hears each evaluated round (``fedmeta tune``);
    ``plots=False`` leaves out the per-metric PNGs (a tuning trial's).

    ``_noise_scale`` multiplies the DP noise; anything but 1 breaks the privacy guarantee and
    exists only for tests that check the empirical audit catches a wrong constant.
    ``_client_mods`` wraps each hospital's ClientApp in Flower mods and ``_stop_after_round`` ends
    the server abruptly after that round (tests only).
    """
    _quiet_flower()
    fed = load_federation(cfg)  # bad data fails here, before Ray starts
    check_run(cfg, fed)  # so does a model it cannot feed and a run no hospital could train
    if resume:  # an incompatible checkpoint, or ledgers that lost what the run recorded, fail here too
        check_resumed_ledgers(load_checkpoint(out_dir, cfg).history.ledgers, out_dir / "ledgers")
    # Imported late: Flower and Ray are heavy and the CLI validates input before paying for them.
    from flwr.simulation import run_simulation

    from fedmeta.flower.actor_batches import install as install_actor_batches
    from fedmeta.flower.message_pump import install as install_message_pump

    keep_python_signal_handlers()
    install_message_pump()
    install_actor_batches()

    from fedmeta.flower.client import build_client_app
    from fedmeta.flower.server import UNTRAINED, build_server_app

    n = len(fed.hospitals)
    address = ray_address or os.environ.get("RAY_ADDRESS", "")
    init_args: dict[str, Any] = {"logging_level": "error", "log_to_driver": False}
    if address:
        source = "--ray-address" if ray_address else "RAY_ADDRESS"
        connect_ray(address, source)
        _check_cpus(address, cfg, source)
    else:
        init_args["num_cpus"] = os.cpu_count() or 1
    backend_config = {
        "client_resources": {"num_cpus": cfg.federation.client_cpus, "num_gpus": cfg.federation.client_gpus},
        "init_args": init_args,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    if progress:
        held = len(cfg.data.held_out)
        where = f"the Ray cluster at {address}" if address else "Ray"
        print(f"starting Flower simulation on {where}: {n} hospitals ({held} held out), "
              f"{cfg.meta.algorithm}, {cfg.federation.rounds} rounds, seed {cfg.seed}"
              + (" (resuming)" if resume else ""), file=sys.stderr, flush=True)
    client_app = build_client_app(cfg, ledger_dir=out_dir / "ledgers", _noise_scale=_noise_scale)
    run_simulation(
        server_app=build_server_app(cfg, out_dir, expected_nodes=n, progress=progress,
                                    resume_from=out_dir if resume else None,
                                    describe_runtime=lambda: _describe_ray(bool(address)), on_validation=on_validation,
                                    plots=plots,
                                    _stop_after_round=_stop_after_round),
        client_app=_with_mods(client_app, _client_mods) if _client_mods else client_app,
        num_supernodes=n,
        backend_config=backend_config,  # type: ignore[arg-type]
    )
    results_path = out_dir / "results.json"
    if (out_dir / UNTRAINED).is_file():
        raise FedMetaError((out_dir / UNTRAINED).read_text(encoding="utf-8").strip())
    if not results_path.is_file():
        raise RuntimeError(f"the simulation ended without writing {results_path}")
    return json.loads(results_path.read_text(encoding="utf-8"))


def resume_simulation(cfg: ExperimentConfig, out: Path, *, progress: bool = True,
                      ray_address: str = "") -> dict[str, Any]:
    """Continue the killed run whose output directory is ``out`` from its checkpoint, in ``out``.

    A killed ``fedmeta simulate --out DIR`` leaves DIR with its checkpoint and a stale claim (see
    ``claimed_output_dir``), which is taken over unless the run holding it is still alive. A
    resumed run that fails keeps everything: it can be resumed again.
    """
    shown = str(out)
    if (out / "results.json").is_file():
        raise FedMetaError(f"--resume {shown}: that run finished (results.json exists); nothing to resume")
    if not (out / CHECKPOINT).is_file():
        raise FedMetaError(f"--resume {shown}: no {CHECKPOINT} there; nothing to resume")
    with claimed_output_dir(out, resume=True, flag="--resume") as run_dir:
        return simulate(cfg, run_dir, progress=progress, resume=True, ray_address=ray_address)
