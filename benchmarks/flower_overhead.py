"""A Flower round against the bare computation it runs, in one run.

The same hospitals' local training (``fedmeta.local_round.train_hospital_round``, what each
ClientApp runs) is timed in a plain sequential loop and through ``fedmeta simulate`` (Flower's
simulation engine on Ray, one hospital per CPU). A steady-state round (rounds 2 .. R-1; evaluation
only in the last) is compared with the bare time of a round divided by the workers.

    .venv/bin/python benchmarks/flower_overhead.py [--hospitals 100] [--rounds 6]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from fedmeta.config import load_config
from fedmeta.data.sources import load_federation
from fedmeta.local_round import train_hospital_round
from fedmeta.meta.algorithms import get_algorithm
from fedmeta.meta.functional import params_of
from fedmeta.models import build_model
from fedmeta.simulation import simulate
from fedmeta.tasks import build_task

ROOT = Path(__file__).resolve().parents[1]


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
    fed = load_federation(cfg)
    algorithm = get_algorithm(cfg.meta.algorithm)
    model = build_model(cfg.model, fed.input_shape, cfg.seed, algorithm.model_outputs(build_task(cfg.task), cfg.meta))
    params = algorithm.initial_state(params_of(model), cfg.meta)
    torch.set_num_threads(1)  # as each simulated hospital runs
    print(f"{args.hospitals} hospitals, {cfg.meta.algorithm}, {workers} workers; bare: {args.bare_rounds} rounds "
          f"in a sequential loop; Flower: {args.rounds} rounds, steady-state rounds 2..{args.rounds - 1}", flush=True)
    bare = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(1, args.bare_rounds + 1):
            t0 = time.perf_counter()
            for i, hospital in enumerate(fed.hospitals):
                train_hospital_round(cfg, hospital, i, model, params, plan=None, server_round=r, run_id="bench",
                                     ledger_path=Path(tmp) / f"{hospital.name}.sqlite", device=torch.device("cpu"))
            bare.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        results = simulate(cfg, Path(tmp) / "run", progress=False)
        total = time.perf_counter() - t0
    steady = results["timings"]["round_s"][1:-1]
    per_worker = statistics.median(bare) / workers
    flower = statistics.median(steady)
    print(f"  bare round (sequential) {statistics.median(bare):.2f} s -> {per_worker:.2f} s per round on {workers} workers")
    print(f"  Flower round (median of {len(steady)}) {flower:.2f} s; setup {results['timings']['setup_s']:.1f} s; "
          f"whole simulate {total:.1f} s")
    print(f"  Flower round / (bare / workers) = {flower / per_worker:.2f}x")


if __name__ == "__main__":
    main()
