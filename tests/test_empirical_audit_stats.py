"""The statistics of the one-run audit (Steinke, Nasr, Jagielski 2023): p-values and the epsilon
lower bound, against closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedmeta.privacy.empirical_audit import audit_outcome, epsilon_lower_bound, p_value


def test_all_guesses_right_gives_the_closed_form_bound():
    # With delta = 0 and v = r: p = q^r, so the bound solves q^r = 0.05 with q = e^eps / (1 + e^eps).
    q = 0.05 ** (1 / 40)
    assert epsilon_lower_bound(200, 40, 40, delta=0.0) == pytest.approx(math.log(q / (1 - q)), abs=1e-6)


def test_chance_level_guessing_bounds_nothing():
    assert epsilon_lower_bound(1000, 200, 100, delta=1e-5) == 0.0
    assert epsilon_lower_bound(1000, 200, 90, delta=1e-5) == 0.0


def test_p_value_falls_with_epsilon_and_rises_with_delta():
    ps = [p_value(1000, 100, 80, eps, 1e-6) for eps in (0.0, 0.5, 1.0, 2.0)]
    assert all(a < b for a, b in zip(ps, ps[1:]))
    assert p_value(1000, 100, 80, 1.0, 1e-3) > p_value(1000, 100, 80, 1.0, 0.0)
    assert epsilon_lower_bound(1000, 100, 80, delta=1e-3) < epsilon_lower_bound(1000, 100, 80, delta=0.0)


def test_perfect_scores_are_guessed_right_and_random_scores_are_not():
    rng = np.random.default_rng(0)
    included = rng.uniform(size=1000) < 0.5
    perfect = audit_outcome(included.astype(float) + 0.01 * rng.normal(size=1000), included,
                            guess_fraction=0.2, delta=1e-5)
    assert perfect.correct == perfect.guesses == 200 and perfect.epsilon_lower_bound > 2.5
    noise = audit_outcome(rng.normal(size=1000), included, guess_fraction=0.2, delta=1e-5)
    assert noise.epsilon_lower_bound < 0.5
