"""Record-level DP mechanism: accounting equals Opacus', clipping bounds each episode, the noise
has std 2*sigma*C, and Poisson episodes put each record in at most one place."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from opacus.accountants import PRVAccountant, RDPAccountant

from fedmeta.privacy.accounting import Mechanism, calibrate_noise_multiplier, default_delta, epsilon_of
from fedmeta.privacy.episode_sampling import PoissonEpisodeSampler
from fedmeta.privacy.record_dp import RecordLevelDPStep


HISTORIES = {
    "mixed": [Mechanism(1.0, 0.01, 600), Mechanism(1.3, 0.02, 250), Mechanism(1.0, 0.01, 150)],
    # Two release kinds a round, as first-order MAML's per-record DP-SGD writes them.
    "alternating": [Mechanism(1.1, 0.02, 40), Mechanism(1.1, 0.05, 8)] * 5,
}


@pytest.mark.parametrize("history", HISTORIES.values(), ids=HISTORIES.keys())
@pytest.mark.parametrize("name,cls", [("rdp", RDPAccountant), ("prv", PRVAccountant)])
def test_epsilon_equals_opacus_accountant_for_the_same_history(name, cls, history):
    reference = cls()
    for m in history:
        for _ in range(m.steps):
            reference.step(noise_multiplier=m.sigma, sample_rate=m.sample_rate)
    assert epsilon_of(history, delta=1e-5, accountant=name) == pytest.approx(
        reference.get_epsilon(delta=1e-5), rel=1e-9)


def test_known_values_and_prv_tighter_than_rdp():
    h = [Mechanism(1.0, 0.01, 1000)]
    rdp, prv = epsilon_of(h, delta=1e-5, accountant="rdp"), epsilon_of(h, delta=1e-5, accountant="prv")
    assert rdp == pytest.approx(2.101, abs=0.01) and prv == pytest.approx(1.838, abs=0.02)
    assert epsilon_of([], delta=1e-5, accountant="prv") == 0.0


def test_calibrated_noise_reaches_the_target_epsilon():
    sigma = calibrate_noise_multiplier(target_epsilon=3.0, delta=1e-5, sample_rate=0.05, steps=200, accountant="rdp")
    eps = epsilon_of([Mechanism(sigma, 0.05, 200)], delta=1e-5, accountant="rdp")
    assert 2.9 <= eps <= 3.0


def test_default_delta_is_below_one_over_n():
    for n in (50, 1_000, 1_000_000):
        assert default_delta(n) <= min(1e-5, 0.1 / n) + 1e-18


def _grads(m: int, scale: float, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"w": scale * torch.randn(m, 3, 4, generator=g, dtype=torch.float64),
            "b": scale * torch.randn(m, 3, generator=g, dtype=torch.float64)}


def test_each_episode_is_clipped_to_c_before_averaging():
    params = {"w": torch.zeros(3, 4, dtype=torch.float64), "b": torch.zeros(3, dtype=torch.float64)}
    grads = _grads(m=5, scale=10.0)
    grads["w"][0] *= 0.001  # one episode already inside the ball: left as it is
    grads["b"][0] *= 0.001
    step = RecordLevelDPStep(params, sigma=0.0, max_grad_norm=1.0, episodes=5, lr=1.0)
    step.step(grads)
    flat = torch.cat([grads["w"].reshape(5, -1), grads["b"].reshape(5, -1)], 1)
    norms = flat.norm(dim=1)
    clipped = flat * torch.clamp(1.0 / (norms + 1e-6), max=1.0)[:, None]
    assert (clipped.norm(dim=1) <= 1.0 + 1e-9).all()
    expected = -clipped.sum(0) / 5  # divided by the number of slots, a constant
    got = torch.cat([step.current()["w"].reshape(-1), step.current()["b"].reshape(-1)])
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-9)


def test_noise_std_is_two_sigma_c():
    sigma, c, m = 0.7, 1.5, 4
    params = {"w": torch.zeros(200_000, dtype=torch.float64)}
    step = RecordLevelDPStep(params, sigma=sigma, max_grad_norm=c, episodes=m, lr=1.0,
                             generator=torch.Generator().manual_seed(0))
    step.step({"w": torch.zeros(m, 200_000, dtype=torch.float64)})
    noise = -step.current()["w"] * m  # undo lr and the 1/m normalisation
    # std of a sample std of n normals: sigma/sqrt(2n) ~ 0.16% here; allow 1%.
    assert float(noise.std()) == pytest.approx(2 * sigma * c, rel=0.01)
    assert abs(float(noise.mean())) < 0.01


def test_poisson_episodes_hold_each_sampled_record_once():
    n, q, m = 2_000, 0.05, 8
    x = np.arange(n, dtype=np.float32)[:, None]
    y = (np.arange(n) % 2).astype(np.float32)
    sampler = PoissonEpisodeSampler(x, y, sample_rate=q, episodes=m, support_fraction=0.4,
                                    device=torch.device("cpu"))
    rng = np.random.default_rng(0)
    counts = []
    for _ in range(50):
        b = sampler.sample(rng)
        ids = torch.cat([b.x_support[b.w_support > 0], b.x_query[b.w_query > 0]]).view(-1).tolist()
        assert len(ids) == len(set(ids))  # no record in two places
        counts.append(len(ids))
        assert b.support_normaliser == pytest.approx(n * q / m * 0.4)
    # Poisson sampling: the mean count is n*q with std sqrt(n q (1-q)) per draw.
    assert np.mean(counts) == pytest.approx(n * q, abs=4 * math.sqrt(n * q) / math.sqrt(50))


def test_an_episode_with_a_non_finite_gradient_contributes_zero():
    params = {"w": torch.zeros(3, 4, dtype=torch.float64), "b": torch.zeros(3, dtype=torch.float64)}
    grads = _grads(m=4, scale=0.1)
    broken = {k: v.clone() for k, v in grads.items()}
    broken["b"][0, 1] = float("nan")
    zeroed = {k: v.clone() for k, v in grads.items()}
    zeroed["w"][0] = 0.0
    zeroed["b"][0] = 0.0
    a = RecordLevelDPStep(params, sigma=0.0, max_grad_norm=1.0, episodes=4, lr=1.0)
    b = RecordLevelDPStep(params, sigma=0.0, max_grad_norm=1.0, episodes=4, lr=1.0)
    a.step(broken)
    b.step(zeroed)
    for k in params:
        assert torch.isfinite(a.current()[k]).all()
        torch.testing.assert_close(a.current()[k], b.current()[k])


def test_an_overflowing_slot_keeps_only_its_own_records():
    x = np.arange(20, dtype=np.float32)[:, None]
    y = np.zeros(20, dtype=np.float32)
    sampler = PoissonEpisodeSampler(x, y, sample_rate=0.5, episodes=2, support_fraction=0.5,
                                    device=torch.device("cpu"))
    xs, _, w = sampler._pack(np.array([10, 11, 12, 13, 14]), np.array([0, 0, 0, 1, 1]), capacity=2)
    kept0 = set(xs[0][w[0] > 0].view(-1).int().tolist())
    kept1 = set(xs[1][w[1] > 0].view(-1).int().tolist())
    assert len(kept0) == 2 and kept0 <= {10, 11, 12}
    assert kept1 == {13, 14}


@pytest.mark.parametrize("secure_mode", [False, True])
def test_the_episode_step_is_opacus_dpoptimizer_number_for_number(secure_mode):
    """The step clips, sums, noises and averages as Opacus' DPOptimizer over SGD does, with the
    same draws from the same generator (noise std 2 sigma C asked of it as noise_multiplier 2 sigma)."""
    from opacus.optimizers import DPOptimizer

    sigma, c, m, lr = 0.8, 0.5, 6, 0.3
    params = {"w": torch.randn(3, 4, dtype=torch.float64), "b": torch.randn(3, dtype=torch.float64)}
    grads = _grads(m=m, scale=1.0)
    grads["w"][1] *= 0.01  # one episode inside the ball
    ours = RecordLevelDPStep(params, sigma=sigma, max_grad_norm=c, episodes=m, lr=lr,
                             generator=torch.Generator().manual_seed(3), secure_mode=secure_mode)
    weights = {k: torch.nn.Parameter(v.clone()) for k, v in params.items()}
    opacus = DPOptimizer(torch.optim.SGD(list(weights.values()), lr=lr), noise_multiplier=2 * sigma,
                         max_grad_norm=c, expected_batch_size=m, loss_reduction="mean",
                         generator=torch.Generator().manual_seed(3), secure_mode=secure_mode)
    for _ in range(2):
        ours.step(grads)
        for k, p in weights.items():
            p.grad_sample = grads[k].clone()
        opacus.step()
        opacus.zero_grad(set_to_none=True)
    for k in params:
        torch.testing.assert_close(ours.current()[k], weights[k].detach(), rtol=0, atol=1e-15)


@pytest.mark.parametrize("expected", [0.3, 3.0, 10.0, 40.0])
def test_slot_capacity_is_the_smallest_that_drops_half_a_percent(expected):
    """Checked by simulation against the closed form: at the capacity a slot's overflow drops at most
    0.5% of its records on average, one fewer would drop more."""
    from fedmeta.privacy.episode_sampling import DROPPED_SHARE, _capacity

    counts = np.random.default_rng(0).poisson(expected, size=2_000_000)
    c = _capacity(expected)
    share = lambda cap: np.maximum(counts - cap, 0).mean() / expected  # noqa: E731
    assert DROPPED_SHARE == 0.005
    assert share(c) <= DROPPED_SHARE * 1.1
    assert share(c - 1) > DROPPED_SHARE * 0.9
