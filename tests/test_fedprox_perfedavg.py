"""FedProx and Per-FedAvg against their definitions, in float64: FedProx's local training against a
hand-written proximal SGD loop on the same episodes, Per-FedAvg's direction against its formula
and, as its finite-difference step shrinks, against one-step second-order MAML."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedmeta.cli import main
from fedmeta.config import MetaConfig
from fedmeta.data.episodes import EpisodeBatch, EpisodeSampler
from fedmeta.meta.algorithms import ALGORITHMS, InnerLoop
from fedmeta.meta.algorithms.perfedavg import PerFedAvg
from fedmeta.meta.functional import params_of
from fedmeta.meta.local_training import meta_train_locally
from fedmeta.models import MLP
from fedmeta.tasks import BinaryTask

CI = str(Path(__file__).resolve().parents[1] / "configs" / "ci.toml")
INNER = InnerLoop(steps=1, lr=0.3, task=BinaryTask())


def _model() -> torch.nn.Module:
    torch.manual_seed(1)
    return MLP(5, [8]).double()


def _batch(m: int = 3, s: int = 4, q: int = 6) -> EpisodeBatch:
    g = torch.Generator().manual_seed(0)
    return EpisodeBatch(torch.randn(m, s, 5, generator=g, dtype=torch.float64),
                        (torch.rand(m, s, generator=g) < 0.5).double(),
                        torch.randn(m, q, 5, generator=g, dtype=torch.float64),
                        (torch.rand(m, q, generator=g) < 0.5).double())


def _loss_grad(model, params: dict, x, y) -> dict:
    p = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    loss = F.binary_cross_entropy_with_logits(torch.func.functional_call(model, p, (x,)), y)
    return dict(zip(p, torch.autograd.grad(loss, list(p.values()))))


@pytest.mark.parametrize("mu", [0.0, 0.5])
def test_fedprox_local_training_is_proximal_sgd_on_the_same_episodes(mu):
    model = _model()
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 5)), (rng.random(60) < 0.5).astype(float)
    sampler = EpisodeSampler(x, y, task=BinaryTask(), shots=3, query=4, device=torch.device("cpu"))
    meta = MetaConfig(algorithm="fedprox", meta_batch=2, outer_steps=3, outer_lr=0.4, prox_mu=mu)
    start = params_of(model)
    result = meta_train_locally(model, start, sampler, meta, np.random.default_rng(7))
    draws, theta = np.random.default_rng(7), dict(start)
    for _ in range(meta.outer_steps):
        batch = sampler.sample(meta.meta_batch, draws)
        per = [_loss_grad(model, theta, torch.cat([batch.x_support[i], batch.x_query[i]]),
                          torch.cat([batch.y_support[i], batch.y_query[i]])) for i in range(batch.size)]
        theta = {k: theta[k] - meta.outer_lr * (sum(g[k] for g in per) / batch.size + mu * (theta[k] - start[k]))
                 for k in theta}
    for k in start:
        torch.testing.assert_close(result.update[k], start[k] - theta[k], rtol=1e-10, atol=1e-12)
    if mu == 0.0:  # FedAvg exactly
        fedavg = meta_train_locally(model, start, sampler, meta.model_copy(update={"algorithm": "fedavg"}),
                                    np.random.default_rng(7))
        for k in start:
            torch.testing.assert_close(result.update[k], fedavg.update[k], rtol=0, atol=0)


def test_perfedavg_direction_is_its_hessian_free_formula():
    model, batch, algo = _model(), _batch(), ALGORITHMS["perfedavg"]
    params = params_of(model)
    grads, losses = algo.episode_gradients(model, params, batch, INNER)
    a, d = INNER.lr, algo.delta
    for i in range(batch.size):
        xs, ys, xq, yq = batch.x_support[i], batch.y_support[i], batch.x_query[i], batch.y_query[i]
        inner = _loss_grad(model, params, xs, ys)
        adapted = {k: params[k] - a * inner[k] for k in params}
        g = _loss_grad(model, adapted, xq, yq)
        plus = _loss_grad(model, {k: params[k] + d * g[k] for k in params}, xs, ys)
        minus = _loss_grad(model, {k: params[k] - d * g[k] for k in params}, xs, ys)
        for k in params:
            torch.testing.assert_close(grads[k][i], g[k] - a * (plus[k] - minus[k]) / (2 * d), rtol=1e-10, atol=1e-12)
        loss = F.binary_cross_entropy_with_logits(torch.func.functional_call(model, adapted, (xq,)), yq)
        torch.testing.assert_close(losses[i], loss, rtol=1e-12, atol=1e-14)


def test_perfedavg_approaches_one_step_maml_as_its_difference_step_shrinks():
    model, batch = _model(), _batch()
    params = params_of(model)
    maml, _ = ALGORITHMS["maml"].episode_gradients(model, params, batch, INNER)
    errors = []
    for delta in (1e-1, 1e-5):
        algo = PerFedAvg()
        algo.delta = delta
        grads, _ = algo.episode_gradients(model, params, batch, INNER)
        errors.append(max(float((grads[k] - maml[k]).abs().max()) for k in params))
    assert errors[1] < 1e-7 < errors[0]


@pytest.mark.parametrize("algorithm", ["perfedavg", "fedrep"])
def test_an_algorithm_without_a_record_level_construction_is_refused_in_one_line(tmp_path, capsys, algorithm):
    out = tmp_path / "run"
    assert main(["simulate", CI, "--set", f'meta.algorithm="{algorithm}"', "--set", 'privacy.mode="record"',
                 "--set", "privacy.target_epsilon=4.0", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"fedmeta: error: meta.algorithm: '{algorithm}' has no record-level DP construction; "
                   "use privacy.mode = \"client\" or \"none\""]
    assert not out.exists()
