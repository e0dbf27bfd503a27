"""One federation on Flower's simulation engine (Ray backend), one virtual SuperNode per hospital."""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from fedmeta.config import ExperimentConfig
from fedmeta.data.sources import load_federation

__all__ = ["simulate"]


def _quiet_flower() -> None:
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    from flwr.supercore.logger import update_console_handler

    # ERROR, not WARNING: `run_simulation` announces its own deprecation at WARNING on every call.
    update_console_handler(level=logging.ERROR, timestamps=False, colored=True)
    # Flower has its own console handler; without this its DEBUG records also reach any root
    # handler (Opacus installs one with logging.basicConfig on import).
    logging.getLogger("flwr").propagate = False
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message="Tip: In future versions of Ray", category=FutureWarning)


def simulate(cfg: ExperimentConfig, out_dir: Path, *, progress: bool = True,
             _noise_scale: float = 1.0) -> dict[str, Any]:
    """Run ``cfg`` on Ray and return the parsed ``results.json`` written into ``out_dir``.

    ``_noise_scale`` multiplies the DP noise; anything but 1 breaks the privacy guarantee and
    exists only for tests that check the empirical audit catches a wrong constant.
    """
    _quiet_flower()
    fed = load_federation(cfg)  # bad data fails here, before Ray starts
    # Imported late: Flower and Ray are heavy and the CLI validates input before paying for them.
    from flwr.simulation import run_simulation

    from fedmeta.flower.client import build_client_app
    from fedmeta.flower.server import build_server_app

    n = len(fed.hospitals)
    backend_config = {
        "client_resources": {"num_cpus": cfg.federation.client_cpus, "num_gpus": cfg.federation.client_gpus},
        "init_args": {"num_cpus": os.cpu_count() or 1, "logging_level": "error", "log_to_driver": False},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    if progress:
        held = len(cfg.data.held_out)
        print(f"starting Flower simulation on Ray: {n} hospitals ({held} held out), "
              f"{cfg.meta.algorithm}, {cfg.federation.rounds} rounds, seed {cfg.seed}", file=sys.stderr, flush=True)
    run_simulation(
        server_app=build_server_app(cfg, out_dir, expected_nodes=n, progress=progress),
        client_app=build_client_app(cfg, ledger_dir=out_dir / "ledgers", _noise_scale=_noise_scale),
        num_supernodes=n,
        backend_config=backend_config,  # type: ignore[arg-type]
    )
    results_path = out_dir / "results.json"
    if not results_path.is_file():
        raise RuntimeError(f"the simulation ended without writing {results_path}")
    return json.loads(results_path.read_text(encoding="utf-8"))
