"""Per-record DP-SGD (first-order MAML, Reptile, FedAvg): each record's gradient clipped to C by
Opacus, noise of std sigma*C per episode, independent across episodes; the planned releases and
their calibration checked against Opacus' accountant; two ledger rows a round for first-order MAML.
(The Flower path of record mode runs end to end in test_privacy_budget and test_empirical_audit.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fedmeta.config import load_config
from fedmeta.data.sources import load_federation
from fedmeta.local_round import train_hospital_round
from fedmeta.meta.functional import params_of
from fedmeta.models import MLP, build_model
from fedmeta.privacy.accounting import epsilon_of
from fedmeta.privacy.ledger import PrivacyLedger
from fedmeta.privacy.ledger_audit import audit_ledger
from fedmeta.privacy.plan import DP_SGD, DP_SGD_QUERY, DP_SGD_SUPPORT, EPISODE_CLIPPING, plan_privacy
from fedmeta.privacy.record_dp_sgd import PerRecordRelease
from fedmeta.tasks import BinaryTask, MulticlassTask

CI = str(Path(__file__).resolve().parents[1] / "configs" / "ci.toml")


def _model_and_data(n: int = 30, d: int = 3, kind: str = "mlp"):
    """An MLP on ``d`` features, or (``convnet``) a small conv net on 1x6x6 images."""
    from fedmeta.config import ModelConfig

    torch.manual_seed(0)
    shape = (d,) if kind == "mlp" else (1, 6, 6)
    model = (MLP(d, [4]) if kind == "mlp" else build_model(ModelConfig(kind=kind, width=2), shape, seed=0)).double()
    x = torch.randn(n, *shape, dtype=torch.float64) * 4
    y = (torch.rand(n, dtype=torch.float64) < 0.5).double()
    return model, x, y


def _episode_params(model: nn.Module, m: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {k: v.detach()[None] + 0.5 * torch.randn(m, *v.shape, generator=g, dtype=v.dtype)
            for k, v in model.named_parameters()}


@pytest.mark.parametrize("kind", ["mlp", "convnet"])
def test_each_record_is_clipped_and_summed_into_its_own_episode(kind):
    """q = 1 and no noise: the release equals a python loop over episodes and records (per-record
    gradients through linear and through conv, GroupNorm and pooling layers alike)."""
    model, x, y = _model_and_data(kind=kind)
    m, c = 3, 0.05
    params = _episode_params(model, m)
    release = PerRecordRelease(model, x, y, task=BinaryTask(), shapes={k: v[0] for k, v in params.items()}, episodes=m,
                               sample_rate=1.0, sigma=0.0, max_grad_norm=c, generator=None, secure_mode=False)
    got = release.release(params, np.random.default_rng(0))
    for e in range(m):
        total = {k: torch.zeros_like(v[e]) for k, v in params.items()}
        norms = []
        for i in range(len(y)):
            p = {k: v[e].clone().requires_grad_() for k, v in params.items()}
            loss = nn.functional.binary_cross_entropy_with_logits(
                torch.func.functional_call(model, p, (x[i:i + 1],)), y[i:i + 1])
            grads = torch.autograd.grad(loss, list(p.values()))
            norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
            norms.append(float(norm))
            for k, g in zip(p, grads):
                total[k] += g * min(1.0, c / (float(norm) + 1e-6))
        assert max(norms) > 5 * c  # the clipping bound is active for most records
        for k in params:
            torch.testing.assert_close(got[k][e], total[k] / len(y), rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("secure_mode, ghost", [(False, True), (True, True), (False, False)])
def test_a_release_equals_opacus_dp_optimizer_on_the_same_records_and_noise(secure_mode, ghost):
    """Same sample, same noise generator: the vectorised release of one episode (ghost clipping or
    per-record gradients) gives the numbers of Opacus' DPOptimizer on a python loop's per-record
    gradients."""
    from opacus.optimizers import DPOptimizer

    model, x, y = _model_and_data(n=50)
    m, c, sigma, q = 1, 0.3, 0.9, 0.3
    params = _episode_params(model, m)
    release = PerRecordRelease(model, x, y, task=BinaryTask(), shapes={k: v[0] for k, v in params.items()}, episodes=m,
                               sample_rate=q, sigma=sigma, max_grad_norm=c,
                               generator=torch.Generator().manual_seed(7), secure_mode=secure_mode)
    assert release.ghost.applies
    release.ghost.applies = ghost
    got = release.release(params, np.random.default_rng(3))
    idx, mask = release._sample(np.random.default_rng(3))  # the samples the release drew
    generator = torch.Generator().manual_seed(7)
    for e in range(m):
        slot = {k: nn.Parameter(torch.zeros_like(v[e])) for k, v in params.items()}
        opt = DPOptimizer(torch.optim.SGD(list(slot.values()), lr=0.0), noise_multiplier=sigma, max_grad_norm=c,
                          expected_batch_size=q * len(y), loss_reduction="mean", generator=generator,
                          secure_mode=secure_mode)
        rows = {k: [] for k in slot}
        for i in idx[e][mask[e]].tolist():
            p = {k: v[e].clone().requires_grad_() for k, v in params.items()}
            loss = nn.functional.binary_cross_entropy_with_logits(
                torch.func.functional_call(model, p, (x[i:i + 1],)), y[i:i + 1])
            for k, g in zip(p, torch.autograd.grad(loss, list(p.values()))):
                rows[k].append(g)
        for k, v in slot.items():
            v.grad_sample = torch.stack(rows[k])
        opt.pre_step()
        for k, v in slot.items():
            torch.testing.assert_close(got[k][e], v.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("hidden, classes", [([4, 5], 1), ([], 1), ([6], 3)])
def test_ghost_clipping_equals_clipping_each_records_gradient(hidden, classes):
    """Linear layers: the clipped sums from backprops and inputs equal clipping materialised per-record
    gradients, padding included; a model with other parametrised layers takes the general path."""
    from fedmeta.config import ModelConfig
    from fedmeta.privacy.ghost_clipping import GhostClipping
    from fedmeta.privacy.record_dp_sgd import clip_and_sum

    torch.manual_seed(0)
    task = BinaryTask() if classes == 1 else MulticlassTask(classes)
    model = MLP(3, hidden, n_outputs=classes).double()
    x = torch.randn(60, 3, dtype=torch.float64) * 4
    y = (torch.rand(60) < 0.5).double() if classes == 1 else torch.randint(0, classes, (60,)).double()
    m = 4
    params = _episode_params(model, m)
    release = PerRecordRelease(model, x, y, task=task, shapes={k: v[0] for k, v in params.items()}, episodes=m,
                               sample_rate=0.3, sigma=0.0, max_grad_norm=0.1, generator=None, secure_mode=False)
    idx, mask = release._sample(np.random.default_rng(0))
    assert not bool(mask.all())  # some padding
    expected = clip_and_sum(release._record_gradients(params, idx, mask), 0.1)
    ghost = GhostClipping(model, task)
    got, norms = ghost.clipped_sums(params, x[idx], y[idx], mask.double(), 0.1)
    # A linear layer over several rows per record (a sequence) is left to per-record gradients.
    assert ghost.clipped_sums(params, x[idx][:, :, None, :].expand(-1, -1, 2, -1), y[idx], mask.double(), 0.1) is None
    assert ghost.applies and float(norms.max()) > 0.5  # clipping is active
    for k in params:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-10, atol=1e-13)
    assert not GhostClipping(build_model(ModelConfig(kind="convnet", width=2), (1, 6, 6), seed=0), task).applies

    class Twice(nn.Module):  # one linear layer applied twice: each record's gradient is two outer products
        def __init__(self):
            super().__init__()
            self.square, self.out = nn.Linear(3, 3), nn.Linear(3, 1)

        def forward(self, x):
            return self.out(torch.relu(self.square(torch.relu(self.square(x))))).squeeze(-1)

    twice = Twice().double()
    shared = {k: v.detach()[None].expand(2, *v.shape).clone() for k, v in twice.named_parameters()}
    assert GhostClipping(twice, BinaryTask()).clipped_sums(shared, x[idx[:2]], y[idx[:2]], mask[:2].double(),
                                                           0.1) is None

    class Centred(nn.Module):  # linear layers only, but the forward mixes the batch's records
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 1)

        def forward(self, x):
            return self.lin(x - x.mean(0)).squeeze(-1)

    assert not GhostClipping(Centred(), BinaryTask()).applies  # only fedmeta's MLP: each record alone


def test_noise_is_sigma_c_over_the_expected_sample_and_independent_per_episode():
    model, x, y = _model_and_data(n=40)
    m, c, sigma, q = 2, 0.5, 1.3, 0.25
    big = {"w": torch.zeros(m, 100_000, dtype=torch.float64)}
    release = PerRecordRelease(model, x, y, task=BinaryTask(), shapes={"w": big["w"][0]}, episodes=m, sample_rate=q,
                               sigma=sigma,
                               max_grad_norm=c, generator=torch.Generator().manual_seed(0), secure_mode=False)
    # Zero per-record gradients: what comes out is the noise alone, scaled by 1 / (q n).
    release.ghost.applies = False
    release._record_gradients = lambda params, idx, mask: {"w": torch.zeros(*idx.shape, 100_000,
                                                                              dtype=torch.float64)}
    noise = release.release(big, np.random.default_rng(0))["w"] * (q * len(y))
    for e in range(m):
        assert float(noise[e].std()) == pytest.approx(sigma * c, rel=0.01)
    assert abs(float(torch.corrcoef(noise)[0, 1])) < 0.01


def test_samples_are_fresh_poisson_draws_padded_never_cut():
    model, x, y = _model_and_data(n=200)
    release = PerRecordRelease(model, x, y, task=BinaryTask(), shapes={"w": torch.zeros(1)}, episodes=4,
                               sample_rate=0.1, sigma=1.0,
                               max_grad_norm=1.0, generator=None, secure_mode=False)
    rng = np.random.default_rng(0)
    sizes = []
    for _ in range(300):
        idx, mask = release._sample(rng)
        for e in range(4):
            chosen = idx[e][mask[e]].tolist()
            assert len(set(chosen)) == len(chosen)  # a record at most once per sample
            sizes.append(len(chosen))
        assert mask.sum(1).max() == mask.shape[1]  # width = the largest sample: nothing cut
    assert np.mean(sizes) == pytest.approx(20, rel=0.05) and np.var(sizes) == pytest.approx(18, rel=0.2)


@pytest.mark.parametrize("algorithm, kinds", [
    ("maml", [EPISODE_CLIPPING]), ("fomaml", [DP_SGD_SUPPORT, DP_SGD_QUERY]), ("reptile", [DP_SGD]),
    ("fedavg", [DP_SGD]), ("metasgd", [EPISODE_CLIPPING]), ("anil", [EPISODE_CLIPPING]),
    ("fedprox", [DP_SGD]),
])
def test_the_planned_releases_and_their_calibration(algorithm, kinds):
    cfg = load_config(CI, ['privacy.mode="record"', "privacy.target_epsilon=4.0", 'privacy.accountant="rdp"',
                           f'meta.algorithm="{algorithm}"'])
    plan = plan_privacy(cfg, hospital="hospital-01", n_train=500)
    meta = cfg.meta
    assert [r.mechanism for r in plan.releases] == kinds
    per_round = {"maml": [meta.outer_steps], "fedavg": [meta.outer_steps], "metasgd": [meta.outer_steps],
                 "anil": [meta.outer_steps], "fedprox": [meta.outer_steps],
                 "reptile": [meta.outer_steps * meta.meta_batch * meta.inner_steps],
                 "fomaml": [meta.outer_steps * meta.meta_batch * meta.inner_steps,
                            meta.outer_steps * meta.meta_batch]}[algorithm]
    assert [r.steps_per_round for r in plan.releases] == per_round
    eps = epsilon_of(plan.round_history() * cfg.federation.rounds, delta=plan.delta, accountant="rdp")
    assert 3.98 <= eps <= 4.0 + 1e-9


def test_first_order_maml_rounds_write_two_ledger_rows_each_before_returning(tmp_path):
    cfg = load_config(CI, ['privacy.mode="record"', "privacy.noise_multiplier=1.0", 'meta.algorithm="fomaml"'])
    hospital = load_federation(cfg).hospitals[0]
    model = build_model(cfg.model, hospital.input_shape, cfg.seed)
    params, path = params_of(model), tmp_path / "ledger.sqlite"
    for r in (1, 2):
        plan = plan_privacy(cfg, hospital=hospital.name, n_train=hospital.n_train)
        outcome = train_hospital_round(cfg, hospital, 0, model, params, plan=plan, server_round=r, run_id="run",
                                       ledger_path=path, device=torch.device("cpu"))
        assert all(torch.isfinite(u).all() for u in outcome.result.update.values())
        params = {k: params[k] - outcome.result.update[k] for k in params}
        rows = PrivacyLedger.read_only(path)
        assert outcome.privacy["epsilon"] == rows[-1].epsilon
    assert [(r.round, r.mechanism) for r in rows] == [(1, DP_SGD_SUPPORT), (1, DP_SGD_QUERY),
                                                      (2, DP_SGD_SUPPORT), (2, DP_SGD_QUERY)]
    assert rows[0].epsilon < rows[1].epsilon < rows[2].epsilon < rows[3].epsilon
    assert audit_ledger(path).ok


def test_a_private_meta_sgd_round_clips_and_noises_the_rates_with_the_weights(tmp_path):
    """The learned rates are released like weights: part of each episode's clipped gradient, noised."""
    from fedmeta.meta.algorithms import get_algorithm

    cfg = load_config(CI, ['privacy.mode="record"', "privacy.noise_multiplier=1.0", 'meta.algorithm="metasgd"'])
    hospital = load_federation(cfg).hospitals[0]
    model = build_model(cfg.model, hospital.input_shape, cfg.seed)
    state = get_algorithm("metasgd").initial_state(params_of(model), cfg.meta)
    plan = plan_privacy(cfg, hospital=hospital.name, n_train=hospital.n_train)
    outcome = train_hospital_round(cfg, hospital, 0, model, state, plan=plan, server_round=1, run_id="run",
                                   ledger_path=tmp_path / "ledger.sqlite", device=torch.device("cpu"))
    update = outcome.result.update
    assert set(update) == set(state) and len(update) == 2 * len(params_of(model))
    # Noise of std 2*sigma*C / (expected episodes) on every coordinate, rates included.
    rates = torch.cat([v.reshape(-1) for k, v in update.items() if k.startswith("inner-lr:")])
    assert rates.abs().min() > 0 and rates.std() > 0.1 * cfg.meta.outer_lr * plan.sigma * plan.max_grad_norm / cfg.meta.meta_batch
