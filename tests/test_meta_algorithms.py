"""Meta-gradients against independent references, in float64.

* second-order MAML vs an explicit ``autograd.grad(create_graph=True)`` loop over tasks, and vs
  central finite differences of the meta-loss;
* first-order MAML, Reptile and the FedAvg step vs their definitions written with plain autograd.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedmeta.config import MetaConfig, ModelConfig
from fedmeta.data.episodes import EpisodeBatch
from fedmeta.errors import FedMetaError
from fedmeta.meta.algorithms import ALGORITHMS, InnerLoop, get_algorithm
from fedmeta.meta.functional import params_of
from fedmeta.models import MLP, build_model, check_meta_trainable
from fedmeta.tasks import BinaryTask, MulticlassTask
from maml_reference import assert_maml_matches_reference

INNER = InnerLoop(steps=3, lr=0.3, task=BinaryTask())


def _batch(m: int = 3, d: int = 5, s: int = 4, q: int = 6, seed: int = 0) -> EpisodeBatch:
    g = torch.Generator().manual_seed(seed)
    return EpisodeBatch(
        torch.randn(m, s, d, generator=g, dtype=torch.float64),
        (torch.rand(m, s, generator=g) < 0.5).double(),
        torch.randn(m, q, d, generator=g, dtype=torch.float64),
        (torch.rand(m, q, generator=g) < 0.5).double(),
    )


def _model(hidden: list[int], d: int = 5) -> nn.Module:
    torch.manual_seed(1)
    return MLP(d, hidden).double()


def _state(algo, model: nn.Module) -> dict[str, torch.Tensor]:
    """What ``algo`` learns for ``model`` at round 0 (Meta-SGD: the weights and their rates)."""
    return algo.initial_state(params_of(model), MetaConfig(inner_lr=INNER.lr, embedding=1))  # one output


def _flat(p: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([v.reshape(-1) for v in p.values()])


def _manual_adapt(model, weights, names, x, y, steps, lr, create_graph):
    fast = weights
    for _ in range(steps):
        loss = F.binary_cross_entropy_with_logits(
            torch.func.functional_call(model, dict(zip(names, fast)), (x,)), y)
        grads = torch.autograd.grad(loss, fast, create_graph=create_graph)
        fast = [w - lr * g for w, g in zip(fast, grads)]
    return fast


@pytest.mark.parametrize("hidden", [[], [8], [8, 6]])
def test_maml_matches_per_task_autograd_reference(hidden):
    assert_maml_matches_reference(_model(hidden), _batch(), INNER)


def test_multiclass_maml_matches_the_per_task_reference():
    """K outputs and cross-entropy: the batched second-order meta-gradient is still the loop's."""
    torch.manual_seed(1)
    model, batch = MLP(5, [8], n_outputs=3).double(), _batch()
    g = torch.Generator().manual_seed(3)
    batch = EpisodeBatch(batch.x_support, torch.randint(0, 3, (3, 4), generator=g).double(),
                         batch.x_query, torch.randint(0, 3, (3, 6), generator=g).double())
    assert_maml_matches_reference(model, batch, InnerLoop(steps=3, lr=0.3, task=MulticlassTask(3)))


def test_maml_matches_central_finite_differences():
    model, batch = _model([6]), _batch(m=2)
    params = params_of(model)
    names = list(params)
    grad, _ = ALGORITHMS["maml"].meta_gradient(model, params, batch, INNER)

    def meta_loss(flat: torch.Tensor) -> float:
        offs, p = 0, {}
        for k in names:
            n = params[k].numel()
            p[k] = flat[offs:offs + n].view_as(params[k])
            offs += n
        total = 0.0
        for i in range(batch.size):
            fast = dict(p)
            for _ in range(INNER.steps):
                fp = {k: v.detach().requires_grad_(True) for k, v in fast.items()}
                loss = F.binary_cross_entropy_with_logits(
                    torch.func.functional_call(model, fp, (batch.x_support[i],)), batch.y_support[i])
                g = torch.autograd.grad(loss, list(fp.values()))
                fast = {k: fast[k] - INNER.lr * gk for k, gk in zip(fp, g)}
            total += float(F.binary_cross_entropy_with_logits(
                torch.func.functional_call(model, fast, (batch.x_query[i],)), batch.y_query[i]))
        return total / batch.size

    theta = _flat(params)
    eps = 1e-6
    fd = torch.empty_like(theta)
    for j in range(theta.numel()):
        e = torch.zeros_like(theta)
        e[j] = eps
        fd[j] = (meta_loss(theta + e) - meta_loss(theta - e)) / (2 * eps)
    torch.testing.assert_close(_flat(grad), fd, rtol=1e-6, atol=1e-8)
    # ... and the first-order approximation is measurably different (the test can fail).
    fo, _ = ALGORITHMS["fomaml"].meta_gradient(model, params, batch, INNER)
    assert (_flat(fo) - fd).abs().max() > 1e-4


def test_fomaml_is_query_gradient_at_adapted_parameters():
    model, batch = _model([8]), _batch()
    params = params_of(model)
    names = list(params)
    grads, _ = ALGORITHMS["fomaml"].episode_gradients(model, params, batch, INNER)
    for i in range(batch.size):
        w = [params[k].clone().requires_grad_(True) for k in names]
        fast = _manual_adapt(model, w, names, batch.x_support[i], batch.y_support[i], INNER.steps, INNER.lr, False)
        fast = [f.detach().requires_grad_(True) for f in fast]
        loss = F.binary_cross_entropy_with_logits(
            torch.func.functional_call(model, dict(zip(names, fast)), (batch.x_query[i],)), batch.y_query[i])
        ref = torch.autograd.grad(loss, fast)
        for k, r in zip(names, ref):
            torch.testing.assert_close(grads[k][i], r, rtol=1e-10, atol=1e-12)


def test_reptile_is_initialisation_minus_adapted_weights():
    model, batch = _model([8]), _batch()
    params = params_of(model)
    names = list(params)
    grads, _ = ALGORITHMS["reptile"].episode_gradients(model, params, batch, INNER)
    for i in range(batch.size):
        x = torch.cat([batch.x_support[i], batch.x_query[i]])
        y = torch.cat([batch.y_support[i], batch.y_query[i]])
        w = [params[k].clone().requires_grad_(True) for k in names]
        fast = _manual_adapt(model, w, names, x, y, INNER.steps, INNER.lr, False)
        for k, f in zip(names, fast):
            torch.testing.assert_close(grads[k][i], params[k] - f.detach(), rtol=1e-10, atol=1e-12)


def test_fedavg_step_is_plain_gradient_on_the_episode_data():
    model, batch = _model([8]), _batch()
    params = params_of(model)
    names = list(params)
    grads, _ = ALGORITHMS["fedavg"].episode_gradients(model, params, batch, INNER)
    for i in range(batch.size):
        x = torch.cat([batch.x_support[i], batch.x_query[i]])
        y = torch.cat([batch.y_support[i], batch.y_query[i]])
        w = [params[k].clone().requires_grad_(True) for k in names]
        loss = F.binary_cross_entropy_with_logits(torch.func.functional_call(model, dict(zip(names, w)), (x,)), y)
        for k, r in zip(names, torch.autograd.grad(loss, w)):
            torch.testing.assert_close(grads[k][i], r, rtol=1e-10, atol=1e-12)


def test_meta_gradient_is_the_mean_of_episode_gradients():
    model, batch = _model([8]), _batch()
    for algo in ALGORITHMS.values():
        params = _state(algo, model)
        per, losses = algo.episode_gradients(model, params, batch, INNER)
        mean, loss = algo.meta_gradient(model, params, batch, INNER)
        assert losses.shape == (batch.size,)
        for k in params:
            torch.testing.assert_close(mean[k], per[k].mean(0))


class _NormNet(nn.Module):
    """Not an MLP: LayerNorm and tanh; any module without batch statistics must work."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(5, 7)
        self.n = nn.LayerNorm(7)
        self.b = nn.Linear(7, 1)

    def forward(self, x):
        return self.b(torch.tanh(self.n(self.a(x)))).squeeze(-1)


def test_any_module_without_batch_statistics_works():
    torch.manual_seed(0)
    model = _NormNet().double()
    check_meta_trainable(model)
    assert_maml_matches_reference(model, _batch(), INNER, rtol=1e-9, atol=1e-11)


def test_batch_statistics_layers_are_refused():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
    with pytest.raises(FedMetaError, match="batch statistics"):
        check_meta_trainable(model)


def test_registry_lookup():
    assert set(ALGORITHMS) == {"maml", "fomaml", "reptile", "metasgd", "anil", "protonet", "matchingnet",
                               "relationnet", "fedavg", "fedprox", "ditto", "fedrep", "perfedavg"}
    with pytest.raises(ValueError, match="unknown algorithm"):
        get_algorithm("meta-sgd")
    assert isinstance(build_model(ModelConfig(hidden=[4]), (3,), seed=0), MLP)


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_padded_episodes_with_zero_weights_equal_the_unpadded_ones(name):
    """Padding rows with weight 0 change nothing when the normaliser is the real count."""
    model, batch = _model([6]), _batch(m=2, s=4, q=6)
    params = _state(ALGORITHMS[name], model)
    g = torch.Generator().manual_seed(5)
    pad_s, pad_q = torch.randn(2, 3, 5, generator=g, dtype=torch.float64), torch.randn(2, 2, 5, generator=g,
                                                                                       dtype=torch.float64)
    padded = EpisodeBatch(
        torch.cat([batch.x_support, pad_s], 1), torch.cat([batch.y_support, torch.ones(2, 3, dtype=torch.float64)], 1),
        torch.cat([batch.x_query, pad_q], 1), torch.cat([batch.y_query, torch.zeros(2, 2, dtype=torch.float64)], 1),
        w_support=torch.cat([torch.ones(2, 4), torch.zeros(2, 3)], 1).double(),
        w_query=torch.cat([torch.ones(2, 6), torch.zeros(2, 2)], 1).double(),
        support_normaliser=4.0, query_normaliser=6.0,
    )
    algo = ALGORITHMS[name]
    plain, _ = algo.episode_gradients(model, params, batch, INNER)
    masked, _ = algo.episode_gradients(model, params, padded, INNER)
    for k in params:
        torch.testing.assert_close(masked[k], plain[k], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_episodes_taken_in_chunks_give_the_same_per_episode_gradients(name, monkeypatch):
    """Chunking is for memory only: per-episode gradients and losses equal the all-at-once ones,
    with padding weights sliced alike; the automatic chunk shrinks as the graph grows."""
    from dataclasses import replace

    from fedmeta.meta import chunking

    model, batch = _model([6]), _batch(m=5, s=4, q=6)
    batch = replace(batch, w_support=torch.ones(5, 4, dtype=torch.float64).index_fill(1, torch.tensor([3]), 0.0),
                    w_query=torch.ones(5, 6, dtype=torch.float64), support_normaliser=3.0, query_normaliser=6.0)
    algo = ALGORITHMS[name]
    params = _state(algo, model)
    whole, whole_loss = algo.episode_gradients(model, params, batch, InnerLoop(3, 0.3, BinaryTask(), chunk=5))
    for chunk in (1, 2, 3):
        parts, loss = algo.episode_gradients(model, params, batch, InnerLoop(3, 0.3, BinaryTask(), chunk=chunk))
        torch.testing.assert_close(loss, whole_loss, rtol=1e-12, atol=1e-14)
        for k in params:
            torch.testing.assert_close(parts[k], whole[k], rtol=1e-10, atol=1e-12)
    per_episode = chunking.episode_graph_bytes(model, batch, steps=3)
    assert chunking.chunk_size(model, batch, 3, configured=0) == 5  # a small MLP: everything at once
    monkeypatch.setattr(chunking, "AUTO_BUDGET_BYTES", 2 * per_episode)
    assert chunking.chunk_size(model, batch, 3, configured=0) == 2
    monkeypatch.setattr(chunking, "AUTO_BUDGET_BYTES", per_episode // 10)
    assert chunking.chunk_size(model, batch, 3, configured=0) == 1
