"""Hospitals: the synthetic generator, per-site preprocessing, CSV and UCI sources, episodes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedmeta.config import DataConfig, ExperimentConfig, SyntheticConfig
from fedmeta.data.csv_source import load_csv_sites
from fedmeta.data.episodes import EpisodeSampler
from fedmeta.data.hospital import RawSite, preprocess_site
from fedmeta.data.sources import load_federation
from fedmeta.data.synthetic import generate_synthetic
from fedmeta.data.uci_heart import load_uci_heart_sites
from fedmeta.errors import FedMetaError
from fedmeta.tasks import BinaryTask, MulticlassTask

UCI_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "uci-heart-disease"


def test_synthetic_is_deterministic_and_seed_dependent():
    cfg = SyntheticConfig()
    a, b, c = generate_synthetic(cfg, 0), generate_synthetic(cfg, 0), generate_synthetic(cfg, 1)
    assert all(np.array_equal(x.x, y.x) and np.array_equal(x.y, y.y) for x, y in zip(a, b))
    assert not np.array_equal(a[0].x, c[0].x)


def test_synthetic_hospitals_are_heterogeneous():
    sites = generate_synthetic(SyntheticConfig(hospitals=8, min_patients=80, max_patients=2000), 0)
    sizes = [len(s.y) for s in sites]
    prevalence = [float(s.y.mean()) for s in sites]
    means = np.stack([s.x.mean(0) for s in sites])
    assert max(sizes) > 4 * min(sizes)  # quantity skew
    assert max(prevalence) - min(prevalence) > 0.15  # label shift
    assert np.abs(means - means.mean(0)).max() > 0.5  # covariate shift (calibration + population)


def test_preprocessing_uses_the_train_split_only():
    rng = np.random.default_rng(0)
    x = rng.normal(5.0, 3.0, size=(200, 4))
    x[rng.uniform(size=x.shape) < 0.1] = np.nan
    y = (rng.uniform(size=200) < 0.4).astype(np.float32)
    h = preprocess_site(RawSite("a", x, y, "test"), 0.3, seed=0, task=BinaryTask())
    np.testing.assert_allclose(h.x_train.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(h.x_train.std(0), 1.0, atol=0.06)  # imputed medians shrink the std a bit
    assert np.abs(h.x_test.mean(0)).max() > 1e-3  # test statistics were not used
    assert np.isfinite(h.x_test).all() and np.isfinite(h.x_train).all()
    assert h.n_train == 140 and len(h.y_test) == 60


def test_a_hospital_is_preprocessed_independently_of_the_others():
    cfg = ExperimentConfig()
    fed = load_federation(cfg)
    raw = generate_synthetic(cfg.data.synthetic, cfg.seed)[2]
    alone = preprocess_site(raw, cfg.data.test_fraction, cfg.seed, task=BinaryTask())
    np.testing.assert_array_equal(fed.hospitals[2].x_train, alone.x_train)
    np.testing.assert_array_equal(fed.hospitals[2].x_test, alone.x_test)


def _write_csvs(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for name in ("alpha", "beta", "gamma"):
        rows = ["age,bp,label"]
        for _ in range(60):
            age, bp = rng.normal(50, 10), rng.normal(120, 15)
            rows.append(f"{age:.1f},{bp:.1f},{int(rng.uniform() < 0.4)}")
        rows[5] = "51.0,,1"  # a missing value is allowed
        (tmp_path / f"{name}.csv").write_text("\n".join(rows) + "\n")
    return tmp_path


def test_csv_source_reads_one_hospital_per_file(tmp_path):
    sites, features = load_csv_sites(DataConfig(source="csv", dir=str(_write_csvs(tmp_path)), label="label"),
                                     BinaryTask())
    assert [s.name for s in sites] == ["alpha", "beta", "gamma"]
    assert features == ["age", "bp"]
    assert sites[0].x.shape == (60, 2) and np.isnan(sites[0].x).sum() == 1


@pytest.mark.skipif(not UCI_DIR.is_dir(), reason="shared UCI Heart Disease data not present")
def test_uci_heart_counts_match_the_source():
    sites, features = load_uci_heart_sites(DataConfig(source="uci-heart", dir=str(UCI_DIR)), BinaryTask())
    got = {s.name: (len(s.y), int(s.y.sum())) for s in sites}
    assert got == {"cleveland": (303, 139), "hungarian": (294, 106), "switzerland": (123, 115), "va": (200, 149)}
    assert len(features) == sites[0].x.shape[1]
    chol = features.index("chol")
    assert np.isnan(sites[2].x[:, chol]).all()  # Switzerland records no cholesterol (0 = missing)
    # Severity as 5 classes: the counts of num = 0..4 in each processed file.
    severity, _ = load_uci_heart_sites(DataConfig(source="uci-heart", dir=str(UCI_DIR)), MulticlassTask(5))
    assert {s.name: np.bincount(s.y.astype(int), minlength=5).tolist() for s in severity} == {
        "cleveland": [164, 55, 36, 35, 13], "hungarian": [188, 106, 0, 0, 0],
        "switzerland": [8, 48, 32, 30, 5], "va": [51, 56, 41, 42, 10]}
    with pytest.raises(FedMetaError, match="5 severity classes"):
        load_uci_heart_sites(DataConfig(source="uci-heart", dir=str(UCI_DIR)), MulticlassTask(3))


def test_episodes_are_stratified_and_disjoint():
    rng = np.random.default_rng(0)
    x = np.arange(100, dtype=np.float32)[:, None].repeat(3, 1)
    y = (np.arange(100) % 3 == 0).astype(np.float32)
    s = EpisodeSampler(x, y, task=BinaryTask(), shots=4, query=10, device=torch.device("cpu"))
    b = s.sample(6, rng)
    assert b.x_support.shape == (6, 8, 3) and b.x_query.shape == (6, 10, 3)
    assert (b.y_support.sum(1) == 4).all()
    for i in range(6):
        assert not set(b.x_support[i, :, 0].tolist()) & set(b.x_query[i, :, 0].tolist())


def test_diverged_parameters_have_no_score():
    from fedmeta.config import ModelConfig
    from fedmeta.evaluation import NonFiniteModelError, score_params
    from fedmeta.meta.functional import params_of
    from fedmeta.models import build_model

    fed = load_federation(ExperimentConfig())
    model = build_model(ModelConfig(hidden=[8]), fed.input_shape, seed=0)
    params = {k: torch.full_like(v, 3e38) * torch.sign(torch.randn_like(v)) for k, v in params_of(model).items()}
    with pytest.raises(NonFiniteModelError, match="not finite"):
        score_params(model, params, fed.hospitals[0], torch.device("cpu"), BinaryTask())
