"""The one-run empirical audit end to end on Flower's simulation engine (gradient canaries in one
hospital, white-box scores of what it released): clear leakage without privacy, a lower bound
below the accountant's epsilon with privacy on, and a deliberately wrong noise constant caught."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedmeta.config import load_config
from fedmeta.privacy.audit_run import run_empirical_audit
from fedmeta.simulation import simulate

CI = Path(__file__).resolve().parents[1] / "configs" / "ci.toml"
AUDIT = ["model.hidden=[64,64]", "data.synthetic.features=16", "federation.rounds=10", "meta.meta_batch=32",
         "audit.canaries=200", 'audit.hospital="hospital-01"', "eval.every=10", "eval.draws=1"]
PRIVATE = ['privacy.mode="record"', "privacy.noise_multiplier=12.0"]
# First-order MAML: per-record DP-SGD releases (support and query), canaries sampled into each.
PER_RECORD = ['privacy.mode="record"', "privacy.noise_multiplier=4.0", 'meta.algorithm="fomaml"', "meta.meta_batch=4"]
CONSTRUCTIONS = pytest.mark.parametrize("private", [PRIVATE, PER_RECORD], ids=["per-episode", "per-record"])


def _audit(tmp_path: Path, overrides: list[str], noise_scale: float = 1.0) -> dict:
    cfg = load_config(CI, AUDIT + overrides)
    return run_empirical_audit(cfg, tmp_path,
                               simulate_fn=lambda c, d: simulate(c, d, progress=False, _noise_scale=noise_scale))


def test_without_privacy_the_audit_finds_clear_leakage(tmp_path):
    report = _audit(tmp_path, [])
    assert report["rounds_released"] == 10
    assert report["epsilon_lower_bound"] > 2.0, report


@CONSTRUCTIONS
def test_with_privacy_the_lower_bound_stays_below_the_accountant(tmp_path, private):
    report = _audit(tmp_path, private)
    assert 0 < report["epsilon_claimed"] < 2.0
    assert report["epsilon_lower_bound"] <= report["epsilon_claimed"] and report["consistent"], report


@CONSTRUCTIONS
def test_a_broken_noise_scale_is_caught(tmp_path, private):
    report = _audit(tmp_path, private, noise_scale=0.03)  # noise ~33x too small: a wrong constant
    assert report["epsilon_lower_bound"] > report["epsilon_claimed"] and not report["consistent"], report
