"""First-order MAML and Reptile under record-level DP: per-episode clipping vs per-record DP-SGD,
at equal epsilon, on the synthetic default federation.

* per-episode: one release per outer step; Poisson records in independent episode slots, each
  slot's meta-gradient clipped to C, noise 2*sigma*C (what fedmeta uses for second-order MAML).
* per-record DP-SGD (what fedmeta uses for these two, chosen by this comparison): every
  data-touching step is its own release on a FRESH Poisson sample of records, each record's
  gradient clipped to C, noise sigma*C: K inner steps (support-size sample) and, for first-order
  MAML, one query step, for each of the m episodes of an outer step. Each release is counted.

Both run fedmeta's own code (``fedmeta.privacy.private_training``) with the plan of each construction.

For each construction sigma is calibrated (bisection on Opacus' accountant) so that the planned
rounds end at the same epsilon. The federation is run in-process (the arithmetic of a FedMeta round:
local training, example-weighted mean of updates, server SGD with lr 1), then scored like
`fedmeta compare` (few-shot AUC after adaptation, mean and worst site).

    .venv/bin/python benchmarks/dp_first_order_constructions.py [--epsilon 4] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import torch

from fedmeta.config import ExperimentConfig, load_config
from fedmeta.data.hospital import Hospital
from fedmeta.data.sources import load_federation
from fedmeta.evaluation import evaluate_few_shot
from fedmeta.meta.functional import params_of
from fedmeta.privacy.accounting import epsilon_of
from fedmeta.privacy.plan import EPISODE_CLIPPING, PrivacyPlan, Release, calibrate_for_releases, plan_privacy
from fedmeta.privacy.private_training import meta_train_privately
from fedmeta.tasks import BinaryTask


def _plans(cfg: ExperimentConfig, h: Hospital, construction: str, target: float) -> PrivacyPlan:
    """The hospital's fedmeta plan (per-record DP-SGD), or the per-episode alternative, both
    calibrated with Opacus' accountant to end the planned rounds at ``target``."""
    cfg = cfg.model_copy(update={"privacy": cfg.privacy.model_copy(
        update={"target_epsilon": target, "noise_multiplier": 0.0, "accountant": "rdp"})})
    plan = plan_privacy(cfg, hospital=h.name, n_train=h.n_train)
    if construction == "per-record":
        return plan
    meta = cfg.meta
    release = Release(EPISODE_CLIPPING, min(1.0, meta.meta_batch * (2 * meta.shots + meta.query) / h.n_train),
                      meta.outer_steps)
    sigma = calibrate_for_releases(target_epsilon=target, delta=plan.delta, rounds=cfg.federation.rounds,
                                   releases=((release.sample_rate, release.steps_per_round),), accountant="rdp")
    return replace(plan, releases=(release,), sigma=sigma)


def run(cfg: ExperimentConfig, construction: str, target: float) -> tuple[float, float, float]:
    fed = load_federation(cfg)
    from fedmeta.models import build_model
    from fedmeta.server_optimizer import ServerMetaOptimizer

    model = build_model(cfg.model, fed.input_shape, cfg.seed)
    server = ServerMetaOptimizer(params_of(model), cfg.server)
    cpu = torch.device("cpu")
    rounds = cfg.federation.rounds
    plans = {h.name: _plans(cfg, h, construction, target) for h in fed.hospitals}
    worst_eps = max(epsilon_of(p.round_history() * rounds, delta=p.delta, accountant="rdp") for p in plans.values())
    for r in range(1, rounds + 1):
        theta = server.current()
        updates, weights = [], []
        for i, h in enumerate(fed.hospitals):
            rng = np.random.default_rng([cfg.seed, r, i])
            gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
            res = meta_train_privately(model, theta, h, cfg.meta, plans[h.name], task=BinaryTask(), rng=rng,
                                       noise_generator=gen,
                                       secure_mode=False, device=cpu)
            updates.append(res.update)
            weights.append(h.n_train)
        w = np.array(weights, float) / sum(weights)
        server.step({k: sum(wi * u[k] for wi, u in zip(w, updates)) for k in theta})
    theta = server.current()
    aucs = []
    for h in fed.hospitals:
        try:
            aucs.append(evaluate_few_shot(model, theta, h, task=BinaryTask(), eval_cfg=cfg.eval, meta_cfg=cfg.meta,
                                          seed=cfg.seed,
                                          device=cpu)["test"].value)
        except ValueError:
            aucs.append(float("nan"))
    return float(np.nanmean(aucs)), float(np.nanmin(aucs)), worst_eps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/default.toml")
    ap.add_argument("--epsilon", type=float, default=4.0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"record-level DP at epsilon = {args.epsilon} (RDP, delta per hospital), {args.rounds} rounds; "
          "few-shot AUC mean / worst site")
    for algorithm in ("fomaml", "reptile"):
        for construction in ("per-episode", "per-record"):
            means, worsts, t0 = [], [], time.perf_counter()
            for seed in args.seeds:
                cfg = load_config(args.config, [f"seed={seed}", f'meta.algorithm="{algorithm}"',
                                                f"federation.rounds={args.rounds}", 'privacy.mode="record"',
                                                f"privacy.target_epsilon={args.epsilon}"])
                mean, worst, eps = run(cfg, construction, args.epsilon)
                means.append(mean)
                worsts.append(worst)
            print(f"  {algorithm:<8} {construction:<12} mean {np.mean(means):.3f} ± {np.std(means):.3f}   "
                  f"worst {np.mean(worsts):.3f} ± {np.std(worsts):.3f}   (max epsilon {eps:.2f}, "
                  f"{time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
