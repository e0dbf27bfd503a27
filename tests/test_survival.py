"""Survival: Cox's partial likelihood against a hand-written loop, the C-index against lifelines,
episodes stratified by event, FLamby's Fed-TCGA-BRCA split as its README states it, and the one-line
refusal of record-level DP for a loss that couples records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from lifelines.utils import concordance_index

from fedmeta.cli import main
from fedmeta.config import DataConfig
from fedmeta.data.episodes import EpisodeBatch, sample_k_shot
from fedmeta.data.tcga_brca import load_tcga_brca_sites
from fedmeta.errors import FedMetaError
from fedmeta.meta.algorithms import InnerLoop
from fedmeta.models import MLP
from fedmeta.tasks import BinaryTask, SurvivalTask
from maml_reference import assert_maml_matches_reference

ROOT = Path(__file__).resolve().parents[1]
TCGA = ROOT.parent / "shared" / "data" / "fed_tcga_brca"


def _cox_by_hand(eta: list[float], time: list[float], event: list[int]) -> float:
    """Negative Breslow partial log-likelihood over the events, divided by their number."""
    total, events = 0.0, 0
    for i in range(len(eta)):
        if event[i]:
            at_risk = [np.exp(eta[j]) for j in range(len(eta)) if time[j] >= time[i]]
            total += eta[i] - np.log(sum(at_risk))
            events += 1
    return -total / events


def _labels(n: int, gen: torch.Generator) -> torch.Tensor:
    time = torch.randint(1, 6, (n,), generator=gen).double()  # ties on purpose
    event = (torch.rand(n, generator=gen) < 0.6).double()
    event[0] = 1.0
    return torch.stack([time, event], -1)


def test_the_cox_loss_is_the_partial_likelihood_and_padding_changes_nothing():
    task, gen = SurvivalTask(), torch.Generator().manual_seed(0)
    eta = torch.randn(2, 9, generator=gen, dtype=torch.float64)
    y = torch.stack([_labels(9, gen), _labels(9, gen)])
    got = task.episode_losses(eta, y)
    for e in range(2):
        want = _cox_by_hand(eta[e].tolist(), y[e, :, 0].tolist(), y[e, :, 1].int().tolist())
        assert got[e].item() == pytest.approx(want, rel=1e-12)
    # Zero-weight rows are in no risk set and no event: as if they were not there.
    w = torch.ones(2, 9, dtype=torch.float64)
    w[:, 6:] = 0
    w[:, 0] = 1
    kept = task.episode_losses(eta[:, :6], y[:, :6])
    events = y[:, :6, 1].sum(-1)
    padded = torch.stack([task.episode_losses(eta[e:e + 1], y[e:e + 1], w[e:e + 1], float(events[e]))[0]
                          for e in range(2)])
    torch.testing.assert_close(padded, kept)


def test_the_c_index_is_lifelines_and_its_pairs_are_the_comparable_ones():
    task, rng = SurvivalTask(), np.random.default_rng(1)
    y = np.stack([rng.integers(1, 30, 40).astype(float), (rng.random(40) < 0.4).astype(float)], -1)
    risk = rng.normal(size=40)
    assert task.metrics(y, risk)["c_index"] == concordance_index(y[:, 0], -risk, y[:, 1])
    brute = sum(1 for i in range(40) for j in range(40) if y[i, 1] and y[j, 0] > y[i, 0])
    assert task.pairs(y) == brute and task.metric_names == ("c_index",)
    idx = sample_k_shot(y, 3, rng, task)  # 3 censored, 3 with an event
    assert sorted(y[idx, 1].tolist()) == [0, 0, 0, 1, 1, 1]


def test_survival_maml_matches_the_per_task_reference():
    torch.manual_seed(1)
    gen = torch.Generator().manual_seed(2)
    model = MLP(4, [6]).double()
    batch = EpisodeBatch(torch.randn(3, 6, 4, generator=gen, dtype=torch.float64),
                         torch.stack([_labels(6, gen) for _ in range(3)]),
                         torch.randn(3, 8, 4, generator=gen, dtype=torch.float64),
                         torch.stack([_labels(8, gen) for _ in range(3)]))
    assert_maml_matches_reference(model, batch, InnerLoop(steps=2, lr=0.2, task=SurvivalTask()))


def test_record_level_dp_is_refused_for_a_cox_loss_in_one_line(capsys):
    args = ["simulate", str(ROOT / "configs" / "tcga-brca.toml"), "--data-dir", str(TCGA),
            "--set", "privacy.mode=\"record\"", "--set", "privacy.target_epsilon=4.0"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Cox's partial likelihood couples the records of a risk set" in err


@pytest.mark.skipif(not TCGA.is_dir(), reason="shared Fed-TCGA-BRCA data not present")
def test_fed_tcga_brca_keeps_flambys_split_per_region():
    sites, features = load_tcga_brca_sites(DataConfig(source="tcga-brca", dir=str(TCGA)), SurvivalTask())
    got = {s.name: (int((~s.test).sum()), int(s.test.sum()), int(s.y[~s.test, 1].sum()), int(s.y[s.test, 1].sum()))
           for s in sites}
    assert got == {"northeast": (248, 63, 45, 14), "south": (156, 40, 35, 4), "west": (164, 42, 14, 8),
                   "midwest": (129, 33, 16, 3), "europe": (129, 33, 7, 2), "canada": (40, 11, 2, 1)}
    assert len(features) == 39 and all(s.x.shape[1] == 39 for s in sites)
    with pytest.raises(FedMetaError, match="survival dataset"):
        load_tcga_brca_sites(DataConfig(source="tcga-brca", dir=str(TCGA)), BinaryTask())


@pytest.mark.skipif(not TCGA.is_dir(), reason="shared Fed-TCGA-BRCA data not present")
def test_a_deployed_region_holds_its_own_patients_only(tmp_path):
    from fedmeta.config import load_config
    from fedmeta.data.sources import load_hospital
    from fedmeta.data.tcga_brca import write_own_region

    write_own_region(TCGA, "europe", tmp_path / "europe")
    rows = (tmp_path / "europe" / "brca.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 129 + 33  # the header and Europe's patients, nobody else's
    cfg = load_config(ROOT / "configs" / "tcga-brca.toml", [], str(TCGA))
    own = load_hospital(cfg, "europe", str(tmp_path / "europe"))
    assert (own.hospital.n_train, len(own.hospital.y_test), own.input_shape) == (129, 33, (39,))
    with pytest.raises(FedMetaError, match="not a Fed-TCGA-BRCA region"):
        write_own_region(TCGA, "mars", tmp_path / "mars")
