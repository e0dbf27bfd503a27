"""Record-level DP local training vs the non-private one, per algorithm, timed alternately in one run.

Both sides run fedmeta's own code for one outer step on one hospital: non-private
``meta_train_locally`` (stratified episodes, mean meta-gradient) against ``meta_train_privately``
with the algorithm's record-level construction (``fedmeta.privacy.plan``): per-episode clipping
for second-order MAML, per-record DP-SGD releases for first-order MAML, Reptile and FedAvg.
Same model, same expected number of records, one thread, median over repeats.

    .venv/bin/python benchmarks/dp_step.py [--repeats 30] [--algorithms maml fomaml]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from fedmeta.config import ExperimentConfig
from fedmeta.data.episodes import EpisodeSampler
from fedmeta.data.hospital import Hospital
from fedmeta.meta.algorithms import ALGORITHMS
from fedmeta.meta.functional import params_of
from fedmeta.meta.local_training import meta_train_locally
from fedmeta.models import MLP
from fedmeta.privacy.plan import plan_privacy
from fedmeta.privacy.private_training import meta_train_privately
from fedmeta.tasks import BinaryTask


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1000)
    ap.add_argument("--features", type=int, default=30)
    ap.add_argument("--meta-batch", type=int, default=8)
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--query", type=int, default=20)
    ap.add_argument("--inner-steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--algorithms", nargs="*", help="only these (default: every algorithm)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.records, args.features)).astype(np.float32)
    y = (rng.uniform(size=args.records) < 0.4).astype(np.float32)
    hospital = Hospital("bench", x, y, x[:10], y[:10], x[:0], y[:0])
    cpu = torch.device("cpu")
    sampler = EpisodeSampler(x, y, task=BinaryTask(), shots=args.shots, query=args.query, device=cpu)
    print(f"one outer step, MLP {args.features}-64-64-1, {args.records} records, {args.meta_batch} episodes of "
          f"{2 * args.shots + args.query} records, {args.inner_steps} inner steps, 1 thread, median of {args.repeats}")
    print(f"  {'algorithm':<11} {'construction':<22} {'non-DP ms':>10} {'DP ms':>8} {'DP / non-DP':>12}")
    for name, algorithm in ALGORITHMS.items():
        if args.algorithms and name not in args.algorithms:
            continue
        cfg = ExperimentConfig.model_validate({
            "meta": {"algorithm": name, "inner_steps": args.inner_steps, "shots": args.shots, "query": args.query,
                     "meta_batch": args.meta_batch, "outer_steps": 1},
            "privacy": {"mode": "record", "noise_multiplier": 1.0}})
        if not algorithm.record_releases(cfg.meta, 2 * args.shots, args.records, 0.0):
            print(f"  {name:<11} no record-level construction (refused in record mode)")
            continue
        plan = plan_privacy(cfg, hospital="bench", n_train=args.records)
        model = MLP(args.features, [64, 64], n_outputs=algorithm.model_outputs(BinaryTask(), cfg.meta))
        params = algorithm.initial_state(params_of(model), cfg.meta)

        def plain() -> None:
            meta_train_locally(model, params, sampler, cfg.meta, rng)

        def private() -> None:
            meta_train_privately(model, params, hospital, cfg.meta, plan, task=BinaryTask(), rng=rng,
                                 noise_generator=None,
                                 secure_mode=False, device=cpu)

        for _ in range(3):
            plain()
            private()
        tp, td = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            plain()
            tp.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            private()
            td.append(time.perf_counter() - t0)
        a, b = statistics.median(tp) * 1e3, statistics.median(td) * 1e3
        construction = "+".join(r.mechanism.removeprefix("record:") for r in plan.releases)
        print(f"  {name:<11} {construction:<22} {a:>10.2f} {b:>8.2f} {b / a:>11.2f}x", flush=True)


if __name__ == "__main__":
    main()
