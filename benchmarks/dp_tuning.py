"""Record-level DP hyper-parameters per algorithm, chosen on a VALIDATION federation.

The synthetic generator with a seed no reported result uses (100) draws a federation of its own;
each candidate (episodes per step m, local outer steps, outer lr, sample rate) is trained for the
planned rounds with fedmeta's record-level construction at the target epsilon (sigma calibrated
with Opacus' accountant, RDP) and scored by few-shot AUC (mean / worst site) on that federation.
The chosen values are what `configs/*-dp.toml` use; test seeds are never looked at here.

    .venv/bin/python benchmarks/dp_tuning.py [--epsilon 4] [--seed 100] [--config configs/default.toml]
"""

from __future__ import annotations

import argparse
import time

import torch

from dp_first_order_constructions import run  # same folder
from fedmeta.config import load_config

GRID = {
    "maml": [dict(meta_batch=8, outer_steps=5, outer_lr=0.5), dict(meta_batch=32, outer_steps=2, outer_lr=0.5),
             dict(meta_batch=32, outer_steps=2, outer_lr=1.0), dict(meta_batch=64, outer_steps=1, outer_lr=1.0),
             dict(meta_batch=64, outer_steps=1, outer_lr=0.5), dict(meta_batch=128, outer_steps=1, outer_lr=1.0),
             dict(meta_batch=128, outer_steps=1, outer_lr=0.5), dict(meta_batch=256, outer_steps=1, outer_lr=1.0)],
    "fomaml": [dict(meta_batch=8, outer_steps=5, outer_lr=0.5), dict(meta_batch=4, outer_steps=5, outer_lr=0.5),
               dict(meta_batch=4, outer_steps=2, outer_lr=1.0), dict(meta_batch=8, outer_steps=2, outer_lr=1.0)],
    "reptile": [dict(meta_batch=8, outer_steps=5, outer_lr=0.5), dict(meta_batch=4, outer_steps=5, outer_lr=0.5),
                dict(meta_batch=4, outer_steps=2, outer_lr=1.0), dict(meta_batch=8, outer_steps=2, outer_lr=1.0)],
    "fedavg": [dict(meta_batch=8, outer_steps=5, outer_lr=0.5), dict(meta_batch=8, outer_steps=2, outer_lr=1.0),
               dict(meta_batch=16, outer_steps=2, outer_lr=1.0), dict(meta_batch=16, outer_steps=5, outer_lr=0.5)],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/default.toml")
    ap.add_argument("--epsilon", type=float, default=4.0)
    ap.add_argument("--seed", type=int, default=100)
    ap.add_argument("--algorithms", nargs="+", default=list(GRID))
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"validation federation (seed {args.seed}), record-level DP at epsilon {args.epsilon} (RDP); "
          "few-shot AUC mean / worst site", flush=True)
    for algorithm in args.algorithms:
        for cand in GRID[algorithm]:
            t0 = time.perf_counter()
            cfg = load_config(args.config, [f"seed={args.seed}", f'meta.algorithm="{algorithm}"',
                                            'privacy.mode="record"', f"privacy.target_epsilon={args.epsilon}",
                                            *(f"meta.{k}={v}" for k, v in cand.items())])
            mean, worst, eps = run(cfg, "per-record", args.epsilon)
            label = " ".join(f"{k}={v}" for k, v in cand.items())
            print(f"  {algorithm:<8} {label:<42} mean {mean:.3f}  worst {worst:.3f}  (epsilon {eps:.2f}, "
                  f"{time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
