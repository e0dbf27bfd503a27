"""Second-order MAML meta-step: batched engine (vmap over episodes) vs the per-task reference loop.

Both compute the same per-episode meta-gradients of one meta-batch; timed alternately in one run,
one thread, median over repeats. Prints the ratio (reference time / batched time).

    .venv/bin/python benchmarks/maml_step.py [--tasks 8] [--inner-steps 5] [--repeats 30]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fedmeta.data.episodes import EpisodeBatch
from fedmeta.meta.algorithms import ALGORITHMS, InnerLoop
from fedmeta.meta.functional import params_of
from fedmeta.meta.reference import reference_maml_gradients
from fedmeta.models import MLP
from fedmeta.tasks import BinaryTask


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--inner-steps", type=int, default=5)
    ap.add_argument("--features", type=int, default=30)
    ap.add_argument("--hidden", type=int, nargs="*", default=[64, 64])
    ap.add_argument("--shots", type=int, default=5, help="support examples per class")
    ap.add_argument("--query", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = MLP(args.features, args.hidden)
    params = params_of(model)
    m, s, q, d = args.tasks, 2 * args.shots, args.query, args.features
    batch = EpisodeBatch(torch.randn(m, s, d), (torch.rand(m, s) < 0.5).float(),
                         torch.randn(m, q, d), (torch.rand(m, q) < 0.5).float())
    inner = InnerLoop(steps=args.inner_steps, lr=0.1, task=BinaryTask())
    maml = ALGORITHMS["maml"]

    def batched() -> None:
        maml.episode_gradients(model, params, batch, inner)

    def reference() -> None:
        reference_maml_gradients(model, params, batch, steps=inner.steps, lr=inner.lr, task=inner.task)

    # Same numbers first: a fast wrong answer is no result.
    got, _ = maml.episode_gradients(model, params, batch, inner)
    ref = reference_maml_gradients(model, params, batch, steps=inner.steps, lr=inner.lr, task=inner.task)
    err = max(float((got[k][i] - r[k]).abs().max()) for i, r in enumerate(ref) for k in params)
    for _ in range(3):
        batched()
        reference()
    t_b, t_r = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        batched()
        t_b.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        reference()
        t_r.append(time.perf_counter() - t0)
    mb, mr = statistics.median(t_b) * 1e3, statistics.median(t_r) * 1e3
    print(f"second-order MAML meta-step, MLP {d}-{'-'.join(map(str, args.hidden))}-1, {m} tasks, "
          f"{s} support / {q} query, {inner.steps} inner steps, 1 thread, median of {args.repeats}")
    print(f"  per-task reference loop : {mr:8.2f} ms")
    print(f"  batched engine          : {mb:8.2f} ms")
    print(f"  speed-up                : {mr / mb:8.2f}x   (max |difference| {err:.2e})")


if __name__ == "__main__":
    main()
