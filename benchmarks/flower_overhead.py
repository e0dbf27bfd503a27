"""A Flower round against the bare computation it runs, in one run.

The same hospitals' local training (``fedmeta.local_round.train_hospital_round``, what each
ClientApp runs) is timed bare, in one process per CPU taking hospitals as they come (niced as Ray
niceses its workers, so that other load on the machine weighs on both sides alike), and through
``fedmeta simulate`` (Flower's simulation engine on Ray, one hospital actor per CPU). A steady-state
round (rounds 2 .. R-1; evaluation only in the last) is compared with a bare round; the bare
rounds run before and after the Flower ones, so that a drift of the machine weighs on both sides.

    .venv/bin/python benchmarks/flower_overhead.py [--hospitals 100] [--rounds 6]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch

from fedmeta.config import ExperimentConfig, config_from_json, load_config
from fedmeta.data.sources import load_federation
from fedmeta.local_round import train_hospital_round
from fedmeta.meta.algorithms import get_algorithm
from fedmeta.meta.functional import params_of
from fedmeta.models import build_model
from fedmeta.simulation import simulate
from fedmeta.tasks import build_task

ROOT = Path(__file__).resolve().parents[1]
RAY_WORKER_NICENESS = 15  # Ray's default worker_niceness


def _as_ray_worker() -> None:
    os.nice(max(0, RAY_WORKER_NICENESS - os.nice(0)))
    torch.set_num_threads(1)  # as each simulated hospital runs


def _train(cfg_json: str, index: int, server_round: int, ledgers: str) -> None:
    """One hospital's round, as its ClientApp computes it (model built, global state loaded)."""
    cfg = config_from_json(cfg_json)
    fed = load_federation(cfg)
    algorithm = get_algorithm(cfg.meta.algorithm)
    model = build_model(cfg.model, fed.input_shape, cfg.seed, algorithm.model_outputs(build_task(cfg.task), cfg.meta))
    params = algorithm.initial_state(params_of(model), cfg.meta)
    hospital = fed.hospitals[index]
    train_hospital_round(cfg, hospital, index, model, params, plan=None, server_round=server_round, run_id="bench",
                         ledger_path=Path(ledgers) / f"{hospital.name}.sqlite", device=torch.device("cpu"))


def _bare_rounds(cfg: ExperimentConfig, workers: int, rounds: int, ledgers: str) -> list[float]:
    n = cfg.data.synthetic.hospitals
    times = []
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_as_ray_worker) as pool:
        list(pool.map(_train, [cfg.to_json()] * workers, range(workers), [0] * workers, [ledgers] * workers))
        for r in range(1, rounds + 1):
            t0 = time.perf_counter()
            list(pool.map(_train, [cfg.to_json()] * n, range(n), [r] * n, [ledgers] * n))
            times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "default.toml"))
    ap.add_argument("--hospitals", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--bare-rounds", type=int, default=2)
    args = ap.parse_args()
    cfg = load_config(args.config, [f"data.synthetic.hospitals={args.hospitals}", f"federation.rounds={args.rounds}",
                                    "eval.every=1000", 'privacy.mode="none"'])
    workers = max(1, int((os.cpu_count() or 1) // cfg.federation.client_cpus))
    print(f"{args.hospitals} hospitals, {cfg.meta.algorithm}, {workers} workers; bare: {args.bare_rounds} rounds "
          f"in {workers} processes before and after; Flower: {args.rounds} rounds, steady-state rounds 2..{args.rounds - 1}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        before = _bare_rounds(cfg, workers, args.bare_rounds, tmp)
        t0 = time.perf_counter()
        results = simulate(cfg, Path(tmp) / "run", progress=False)
        total = time.perf_counter() - t0
        bare = before + _bare_rounds(cfg, workers, args.bare_rounds, tmp)  # before and after: the machine drifts
    steady = results["timings"]["round_s"][1:-1]
    flower, plain = statistics.median(steady), statistics.median(bare)
    print(f"  bare round on {workers} processes (median of {len(bare)}, half before and half after the Flower "
          f"rounds) {plain:.2f} s")
    print(f"  Flower round (median of {len(steady)}) {flower:.2f} s; setup {results['timings']['setup_s']:.1f} s; "
          f"whole simulate {total:.1f} s")
    print(f"  Flower round / bare round = {flower / plain:.2f}x")


if __name__ == "__main__":
    main()
