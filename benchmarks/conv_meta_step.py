"""Second-order MAML meta-step on a conv net over images: the batched engine all at once, in its
automatic chunks, and the per-task reference loop; time per step and peak memory of each.

Each variant runs in its own process (peak memory is per process: ``ru_maxrss`` on CPU,
``torch.cuda.max_memory_allocated`` on a GPU), after checking that its per-episode
meta-gradients equal the reference's. Defaults: conv4 (width 32) on 1x28x28, 8 episodes, 5 shots per
class, 10 query images, 5 inner steps, float32.

    .venv/bin/python benchmarks/conv_meta_step.py [--episodes 8] [--width 32] [--size 28] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

VARIANTS = ("reference", "batched-all", "batched-auto")


def _measure(args: argparse.Namespace, variant: str) -> dict:
    from fedmeta.config import ModelConfig
    from fedmeta.data.episodes import EpisodeBatch
    from fedmeta.meta.algorithms import ALGORITHMS, InnerLoop
    from fedmeta.meta.chunking import chunk_size
    from fedmeta.meta.functional import params_of
    from fedmeta.meta.reference import reference_maml_gradients
    from fedmeta.models import build_model, pick_device
    from fedmeta.tasks import BinaryTask

    torch.set_num_threads(args.threads)
    device = pick_device()
    model = build_model(ModelConfig(kind="convnet", width=args.width), (1, args.size, args.size), seed=0).to(device)
    params = params_of(model)
    g = torch.Generator().manual_seed(0)
    m, s, q = args.episodes, 2 * args.shots, args.query
    batch = EpisodeBatch(*(t.to(device) for t in (
        torch.randn(m, s, 1, args.size, args.size, generator=g), (torch.rand(m, s, generator=g) < 0.5).float(),
        torch.randn(m, q, 1, args.size, args.size, generator=g), (torch.rand(m, q, generator=g) < 0.5).float())))
    chunk = {"batched-all": m, "batched-auto": 0, "reference": m}[variant]
    inner = InnerLoop(steps=args.inner_steps, lr=0.05, task=BinaryTask(), chunk=chunk)
    maml = ALGORITHMS["maml"]

    def step():
        if variant == "reference":
            return reference_maml_gradients(model, params, batch, steps=inner.steps, lr=inner.lr, task=inner.task)
        return maml.episode_gradients(model, params, batch, inner)[0]

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(args.repeats + 1):  # the first is a warm-up
        t0 = time.perf_counter()
        out = step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t0)
    error = 0.0
    if variant != "reference":  # a fast wrong answer is no result
        ref = reference_maml_gradients(model, params, batch, steps=inner.steps, lr=inner.lr, task=inner.task)
        error = max(float((out[k][i] - r[k]).abs().max()) for i, r in enumerate(ref) for k in params)
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"variant": variant, "ms": statistics.median(times) * 1e3, "peak_gb": peak / 2**30, "error": error,
            "chunk": chunk_size(model, batch, inner.steps, chunk), "device": str(device)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=8)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--query", type=int, default=10)
    ap.add_argument("--inner-steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(_measure(args, args.variant)))
        return
    rows = []
    for variant in VARIANTS:
        argv = [sys.executable, __file__, *sys.argv[1:], "--variant", variant]
        done = subprocess.run(argv, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"second-order MAML meta-step, conv4 width {args.width} on 1x{args.size}x{args.size}, {args.episodes} "
          f"episodes of {2 * args.shots} support / {args.query} query, {args.inner_steps} inner steps, "
          f"{rows[0]['device']}, {args.threads} thread(s), median of {args.repeats}")
    ref = rows[0]["ms"]
    for r in rows:
        print(f"  {r['variant']:<13} chunk {r['chunk']:>2}: {r['ms']:9.1f} ms  ({ref / r['ms']:.2f}x the reference)  "
              f"peak {r['peak_gb']:.2f} GB  max |diff| {r['error']:.1e}")


if __name__ == "__main__":
    main()
