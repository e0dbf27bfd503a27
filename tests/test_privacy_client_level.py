"""Hospital-level DP (`privacy.mode = "client"`): the update is clipped to S and noised with std
sigma*S by Opacus, each round is accounted once with the participation rate, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fedmeta.cli import main
from fedmeta.config import load_config
from fedmeta.privacy.accounting import Mechanism, epsilon_of
from fedmeta.privacy.client_dp import CLIENT_MECHANISM, privatize_update
from fedmeta.privacy.ledger import PrivacyLedger
from fedmeta.privacy.plan import Release, plan_privacy

CI = str(Path(__file__).resolve().parents[1] / "configs" / "ci.toml")


def test_a_large_update_is_clipped_to_s_and_a_small_one_kept():
    big = {"w": torch.full((3, 4), 2.0, dtype=torch.float64), "b": torch.full((3,), 2.0, dtype=torch.float64)}
    out = privatize_update(big, sigma=0.0, clip_norm=1.5, generator=None, secure_mode=False)
    flat_in = torch.cat([v.reshape(-1) for v in big.values()])
    flat_out = torch.cat([v.reshape(-1) for v in out.values()])
    assert float(flat_out.norm()) == pytest.approx(1.5, rel=1e-5)
    torch.testing.assert_close(flat_out / flat_out.norm(), flat_in / flat_in.norm())
    small = {k: v * 1e-3 for k, v in big.items()}
    kept = privatize_update(small, sigma=0.0, clip_norm=1.5, generator=None, secure_mode=False)
    for k in small:
        torch.testing.assert_close(kept[k], small[k])


def test_hospital_noise_std_is_sigma_s():
    update = {"w": torch.zeros(200_000, dtype=torch.float64)}
    out = privatize_update(update, sigma=0.8, clip_norm=2.0, generator=torch.Generator().manual_seed(0),
                           secure_mode=False)
    assert float(out["w"].std()) == pytest.approx(0.8 * 2.0, rel=0.01)


def test_one_release_per_round_taken_part_in_without_amplification():
    # The server samples a fixed number of hospitals from a seed it knows: not the Poisson sampling
    # that amplification needs, so a round taken part in counts at rate 1 whatever fraction_train says.
    cfg = load_config(CI, ['privacy.mode="client"', "privacy.noise_multiplier=1.0", "federation.fraction_train=0.6"])
    plan = plan_privacy(cfg, hospital="hospital-01", n_train=100)
    assert (plan.releases, plan.delta) == ((Release(CLIENT_MECHANISM, 1.0, 1),), 1e-5)


def test_client_level_dp_end_to_end(tmp_path):
    out = tmp_path / "run"
    code = main(["simulate", CI, "--set", 'privacy.mode="client"', "--set", "privacy.noise_multiplier=1.0",
                 "--set", 'privacy.accountant="rdp"', "--out", str(out), "--quiet"])
    assert code == 0
    res = json.loads((out / "results.json").read_text())
    assert all(len(r["train"]) == 5 for r in res["history"]["rounds"])
    for h in res["final"]:
        rows = PrivacyLedger(out / "ledgers" / f"{h}.sqlite").rows()
        assert [r.mechanism for r in rows] == [CLIENT_MECHANISM] * 3
        assert rows[-1].epsilon == pytest.approx(
            epsilon_of([Mechanism(1.0, 1.0, 3)], delta=1e-5, accountant="rdp"))
