"""First-order MAML and Reptile under record-level DP: per-episode clipping vs per-record DP-SGD,
at equal epsilon, on the synthetic default federation.

* per-episode (what fedmeta uses): one release per outer step; Poisson records in independent
  episode slots, each slot's meta-gradient clipped to C, noise 2*sigma*C (fedmeta.privacy).
* per-record DP-SGD: every data-touching step is its own release on a FRESH Poisson sample of
  records, each record's gradient clipped to C, noise sigma*C: K inner steps (support-size
  sample) and, for first-order MAML, one query step, for each of the m episodes of an outer step.
  Each release is counted by the accountant.

For each construction sigma is calibrated (bisection on Opacus' accountant) so that the planned
rounds end at the same epsilon. The federation is run in-process (the arithmetic of a FedMeta round:
local training, example-weighted mean of updates, server SGD with lr 1), then scored like
`fedmeta compare` (few-shot AUC after adaptation, mean and worst site).

    .venv/bin/python benchmarks/dp_first_order_constructions.py [--epsilon 4] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from opacus.optimizers import DPOptimizer
from torch import nn

from fedmeta.config import ExperimentConfig, load_config
from fedmeta.data.hospital import Hospital
from fedmeta.data.sources import load_federation
from fedmeta.evaluation import evaluate_few_shot
from fedmeta.meta.functional import Params, episode_losses, params_of, per_episode_copies
from fedmeta.meta.local_training import LocalResult
from fedmeta.privacy.accounting import Mechanism, epsilon_of
from fedmeta.privacy.plan import plan_privacy
from fedmeta.privacy.private_training import meta_train_privately


def _per_record_grads(model: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor) -> Params:
    copies = per_episode_copies(params, len(y))
    with torch.enable_grad():
        loss = episode_losses(model, copies, x[:, None, :], y[:, None]).sum()
        grads = torch.autograd.grad(loss, list(copies.values()))
    return dict(zip(copies, grads))


def _noised_mean(per_record: Params, *, sigma: float, clip: float, expected: float,
                 generator: torch.Generator) -> Params:
    """Opacus: clip each record's gradient to C, sum, add N(0, (sigma C)^2), divide by `expected`."""
    ps = {k: nn.Parameter(torch.zeros_like(v[0])) for k, v in per_record.items()}
    opt = DPOptimizer(torch.optim.SGD(list(ps.values()), lr=1.0), noise_multiplier=sigma, max_grad_norm=clip,
                      expected_batch_size=max(expected, 1e-9), loss_reduction="mean", generator=generator)
    for k, p in ps.items():
        p.grad_sample = per_record[k]
    opt.step()
    return {k: -p.detach() for k, p in ps.items()}


def _poisson(h: Hospital, q: float, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    idx = np.flatnonzero(rng.uniform(size=h.n_train) < q)
    return torch.as_tensor(h.x_train[idx]), torch.as_tensor(h.y_train[idx])


def _per_record_round(model: nn.Module, theta: Params, h: Hospital, cfg: ExperimentConfig, sigma: float,
                      rng: np.random.Generator, gen: torch.Generator) -> LocalResult:
    meta, c = cfg.meta, cfg.privacy.max_grad_norm
    q_s = min(1.0, 2 * meta.shots / h.n_train)
    q_q = min(1.0, meta.query / h.n_train)
    q_all = min(1.0, (2 * meta.shots + meta.query) / h.n_train)
    local = dict(theta)
    for _ in range(meta.outer_steps):
        directions = []
        for _ in range(meta.meta_batch):
            fast = dict(local)
            q_inner = q_s if meta.algorithm == "fomaml" else q_all
            for _ in range(meta.inner_steps):
                x, y = _poisson(h, q_inner, rng)
                if len(y) == 0:
                    g = {k: torch.zeros_like(v) for k, v in fast.items()}
                    g = _noised_mean({k: v[None] for k, v in g.items()}, sigma=sigma, clip=c,
                                     expected=q_inner * h.n_train, generator=gen)
                else:
                    g = _noised_mean(_per_record_grads(model, fast, x, y), sigma=sigma, clip=c,
                                     expected=q_inner * h.n_train, generator=gen)
                fast = {k: fast[k] - meta.inner_lr * g[k] for k in fast}
            if meta.algorithm == "fomaml":
                x, y = _poisson(h, q_q, rng)
                per = (_per_record_grads(model, fast, x, y) if len(y) else
                       {k: torch.zeros_like(v)[None] for k, v in fast.items()})
                directions.append(_noised_mean(per, sigma=sigma, clip=c, expected=q_q * h.n_train, generator=gen))
            else:
                directions.append({k: local[k] - fast[k] for k in local})
        local = {k: local[k] - meta.outer_lr * sum(d[k] for d in directions) / len(directions) for k in local}
    return LocalResult(update={k: theta[k] - local[k] for k in theta}, train_loss=float("nan"), episodes=0)


def _per_record_history(cfg: ExperimentConfig, h: Hospital, sigma: float, rounds: int) -> list[Mechanism]:
    meta = cfg.meta
    per_outer = meta.meta_batch
    if meta.algorithm == "fomaml":
        return [Mechanism(sigma, min(1.0, 2 * meta.shots / h.n_train), rounds * meta.outer_steps * per_outer * meta.inner_steps),
                Mechanism(sigma, min(1.0, meta.query / h.n_train), rounds * meta.outer_steps * per_outer)]
    return [Mechanism(sigma, min(1.0, (2 * meta.shots + meta.query) / h.n_train),
                      rounds * meta.outer_steps * per_outer * meta.inner_steps)]


def _calibrate(history_of, target: float, delta: float) -> float:
    lo, hi = 0.1, 1.0
    while epsilon_of(history_of(hi), delta=delta, accountant="rdp") > target:
        lo, hi = hi, hi * 2
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        if epsilon_of(history_of(mid), delta=delta, accountant="rdp") > target:
            lo = mid
        else:
            hi = mid
    return hi


def run(cfg: ExperimentConfig, construction: str, target: float) -> tuple[float, float, float]:
    fed = load_federation(cfg)
    from fedmeta.models import build_model
    from fedmeta.server_optimizer import ServerMetaOptimizer

    model = build_model(cfg.model, fed.n_features, cfg.seed)
    server = ServerMetaOptimizer(params_of(model), cfg.server)
    cpu = torch.device("cpu")
    rounds = cfg.federation.rounds
    sigmas, plans, worst_eps = {}, {}, 0.0
    for h in fed.hospitals:
        plan = plan_privacy(cfg.model_copy(update={"privacy": cfg.privacy.model_copy(
            update={"target_epsilon": target, "noise_multiplier": 0.0, "accountant": "rdp"})}),
            hospital=h.name, n_train=h.n_train)
        plans[h.name] = plan
        if construction == "per-record":
            sigmas[h.name] = _calibrate(lambda s, h=h: _per_record_history(cfg, h, s, rounds), target, plan.delta)
            worst_eps = max(worst_eps, epsilon_of(_per_record_history(cfg, h, sigmas[h.name], rounds),
                                                  delta=plan.delta, accountant="rdp"))
        else:
            worst_eps = max(worst_eps, epsilon_of([Mechanism(plan.sigma, plan.sample_rate, plan.steps_per_round)] * rounds,
                                                  delta=plan.delta, accountant="rdp"))
    for r in range(1, rounds + 1):
        theta = server.current()
        updates, weights = [], []
        for i, h in enumerate(fed.hospitals):
            rng = np.random.default_rng([cfg.seed, r, i])
            gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
            if construction == "per-record":
                res = _per_record_round(model, theta, h, cfg, sigmas[h.name], rng, gen)
            else:
                res = meta_train_privately(model, theta, h, cfg.meta, plans[h.name], rng=rng, noise_generator=gen,
                                           secure_mode=False, device=cpu)
            updates.append(res.update)
            weights.append(h.n_train)
        w = np.array(weights, float) / sum(weights)
        server.step({k: sum(wi * u[k] for wi, u in zip(w, updates)) for k in theta})
    theta = server.current()
    aucs = []
    for h in fed.hospitals:
        try:
            aucs.append(evaluate_few_shot(model, theta, h, eval_cfg=cfg.eval, meta_cfg=cfg.meta, seed=cfg.seed,
                                          device=cpu).auc)
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
