"""Record-level DP outer step vs the non-private one, per algorithm, timed alternately in one run.

Non-private: a stratified meta-batch, mean meta-gradient, SGD step. Private: a Poisson meta-batch
of padded episodes, per-episode meta-gradients, DPOptimizer clip + noise + step. Same model, same
expected number of records per step, one thread, median over repeats.

    .venv/bin/python benchmarks/dp_step.py [--repeats 30]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from fedmeta.data.episodes import EpisodeSampler
from fedmeta.meta.algorithms import ALGORITHMS, InnerLoop
from fedmeta.meta.functional import params_of
from fedmeta.models import MLP
from fedmeta.privacy.episode_sampling import PoissonEpisodeSampler
from fedmeta.privacy.record_dp import RecordLevelDPStep


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1000)
    ap.add_argument("--features", type=int, default=30)
    ap.add_argument("--meta-batch", type=int, default=8)
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--query", type=int, default=20)
    ap.add_argument("--inner-steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.records, args.features)).astype(np.float32)
    y = (rng.uniform(size=args.records) < 0.4).astype(np.float32)
    model = MLP(args.features, [64, 64])
    params = params_of(model)
    cpu = torch.device("cpu")
    inner = InnerLoop(args.inner_steps, 0.1)
    m, per_episode = args.meta_batch, 2 * args.shots + args.query
    plain_sampler = EpisodeSampler(x, y, shots=args.shots, query=args.query, device=cpu)
    dp_sampler = PoissonEpisodeSampler(x, y, sample_rate=m * per_episode / args.records, episodes=m,
                                       support_fraction=2 * args.shots / per_episode, device=cpu)
    print(f"outer step, MLP {args.features}-64-64-1, {m} episodes of ~{per_episode} records, "
          f"{args.inner_steps} inner steps, 1 thread, median of {args.repeats}")
    print(f"  {'algorithm':<9} {'non-DP ms':>10} {'DP ms':>8} {'DP / non-DP':>12}")
    for name, algo in ALGORITHMS.items():
        def plain() -> None:
            batch = plain_sampler.sample(m, rng)
            g, _ = algo.meta_gradient(model, params, batch, inner)
            _ = {k: params[k] - 0.1 * g[k] for k in params}

        dp = RecordLevelDPStep(params, sigma=1.0, max_grad_norm=1.0, episodes=m, lr=0.1)

        def private() -> None:
            batch = dp_sampler.sample(rng)
            g, _ = algo.episode_gradients(model, dp.current(), batch, inner)
            dp.step(g)

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
        print(f"  {name:<9} {a:>10.2f} {b:>8.2f} {b / a:>11.2f}x")


if __name__ == "__main__":
    main()
