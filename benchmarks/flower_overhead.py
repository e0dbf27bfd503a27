"""A Flower round against the bare computation it runs, in one run.

The same hospitals' local training (``fedmeta.local_round.train_hospital_round``, what each
ClientApp runs) is timed bare, in one process per CPU taking hospitals as they come (niced as Ray
niceses its workers, so that other load on the machine weighs on both sides alike), and through
``fedmeta simulate`` (Flower's simulation engine on Ray, one hospital actor per CPU). The two
alternate: after each Flower round, while the hospitals' actors wait, one bare round runs. A
steady-state Flower round (rounds 2 .. R-1; evaluation only in the last) is paired with the mean of
the bare rounds just before and just after it, since this machine's speed drifts by up to ±10% within
a minute; the median of the paired ratios is the figure.

    .venv/bin/python benchmarks/flower_overhead.py [--hospitals 100] [--rounds 12]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from multiprocessing import get_context
from pathlib import Path

import torch

from fedmeta.config import ExperimentConfig, config_from_json, load_config
from fedmeta.data.sources import load_federation
from fedmeta.flower import server
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


def _bare_round(pool: ProcessPoolExecutor, cfg: ExperimentConfig, server_round: int, ledgers: str) -> float:
    n = cfg.data.synthetic.hospitals
    t0 = time.perf_counter()
    list(pool.map(_train, [cfg.to_json()] * n, range(n), [server_round] * n, [ledgers] * n))
    return time.perf_counter() - t0


@contextmanager
def _bare_round_after_each_round(pool: ProcessPoolExecutor, cfg: ExperimentConfig, ledgers: str,
                                 times: list[float]) -> Iterator[None]:
    """Within the block, every Flower round of this process is followed by a bare round (timed into
    ``times``), outside the Flower round's own timing."""
    original = server._round_done

    def round_done(server_round: int, *args: object) -> None:
        original(server_round, *args)
        times.append(_bare_round(pool, cfg, 1000 + server_round, ledgers))

    server._round_done = round_done
    try:
        yield
    finally:
        server._round_done = original


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "default.toml"))
    ap.add_argument("--hospitals", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=12)
    args = ap.parse_args()
    if args.rounds < 3:
        ap.error(f"--rounds {args.rounds}: at least 3 (the first and the last round are not steady-state)")
    cfg = load_config(args.config, [f"data.synthetic.hospitals={args.hospitals}", f"federation.rounds={args.rounds}",
                                    "eval.every=1000", 'privacy.mode="none"'])
    workers = max(1, int((os.cpu_count() or 1) // cfg.federation.client_cpus))
    print(f"{args.hospitals} hospitals, {cfg.meta.algorithm}, {workers} workers; {args.rounds} Flower rounds, a bare "
          f"round before each and after the last", flush=True)
    bare: list[float] = []
    with tempfile.TemporaryDirectory() as tmp, \
            ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_as_ray_worker) as pool:
        bare.append(_bare_round(pool, cfg, 0, tmp))  # warms the processes, and precedes round 1
        with _bare_round_after_each_round(pool, cfg, tmp, bare):
            t0 = time.perf_counter()
            results = simulate(cfg, Path(tmp) / "run", progress=False)
            total = time.perf_counter() - t0
    rounds = results["timings"]["round_s"]
    steady = range(1, len(rounds) - 1)  # 0-based: rounds 2 .. R-1
    paired = [rounds[i] / ((bare[i] + bare[i + 1]) / 2) for i in steady]
    print(f"  Flower rounds 2..{len(rounds) - 1}: {' '.join(f'{rounds[i]:.2f}' for i in steady)} s; setup "
          f"{results['timings']['setup_s']:.1f} s; whole simulate with the bare rounds {total:.1f} s")
    print(f"  bare rounds around them ({workers} processes): {' '.join(f'{t:.2f}' for t in bare[1:-1])} s")
    print(f"  Flower round / bare round = {statistics.median(paired):.2f}x (median of {len(paired)} paired ratios, "
          f"{min(paired):.2f}-{max(paired):.2f})")


if __name__ == "__main__":
    main()
