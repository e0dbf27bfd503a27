"""Images: the synthetic imaging federation, the npz directory source (plain and MedMNIST layouts),
per-site intensity normalisation, and MedMNIST partitioned into simulated hospitals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedmeta.config import DataConfig, ExperimentConfig, MedMNISTConfig, SyntheticImagesConfig
from fedmeta.data.hospital import RawSite, preprocess_site
from fedmeta.data.images import load_image_sites
from fedmeta.data.medmnist import load_medmnist_sites
from fedmeta.data.sources import load_federation
from fedmeta.data.synthetic_images import generate_synthetic_images
from fedmeta.tasks import BinaryTask

BREAST = Path(__file__).resolve().parents[2] / "shared" / "data" / "medmnist_breastmnist"


def test_synthetic_images_are_deterministic_and_heterogeneous():
    cfg = SyntheticImagesConfig()
    a, b, c = generate_synthetic_images(cfg, 0), generate_synthetic_images(cfg, 0), generate_synthetic_images(cfg, 1)
    assert all(np.array_equal(x.x, y.x) and np.array_equal(x.y, y.y) for x, y in zip(a, b))
    assert not np.array_equal(a[0].x, c[0].x)
    assert all(s.x.shape[1:] == (1, 16, 16) and s.x.dtype == np.float32 for s in a)
    brightness = [float(s.x.mean()) for s in a]
    assert max(brightness) - min(brightness) > 0.1  # every scanner its own gain and offset
    flat = generate_synthetic_images(cfg.model_copy(update={"acquisition_shift": 0.0}), 0)
    assert max(s.x.mean() for s in flat) - min(s.x.mean() for s in flat) < 0.05


def test_image_normalisation_uses_the_sites_own_train_pixels_only():
    rng = np.random.default_rng(0)
    x = rng.normal(5.0, 2.0, (60, 2, 4, 4)).astype(np.float32)
    x[:, 1] = x[:, 1] * 10 + 100  # a second channel on another scale
    test = np.arange(60) >= 45  # the source's own test split, so that the rows are known
    h = preprocess_site(RawSite("a", x, np.arange(60) % 2, "test", test=test), 0.3, seed=0, task=BinaryTask())
    assert h.x_train.shape == (45, 2, 4, 4) and h.input_shape == (2, 4, 4)
    np.testing.assert_allclose(h.x_train.mean(axis=(0, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(h.x_train.std(axis=(0, 2, 3)), 1.0, atol=1e-4)
    mean = x[~test].mean(axis=(0, 2, 3), keepdims=True)
    std = x[~test].std(axis=(0, 2, 3), keepdims=True)
    np.testing.assert_allclose(h.x_test, (x[test] - mean) / std, rtol=1e-5, atol=1e-5)  # train statistics only


def _write(path: Path, **arrays: np.ndarray) -> None:
    np.savez(path, **arrays)


def test_a_directory_of_npz_files_is_a_federation_and_medmnist_layout_keeps_its_test_split(tmp_path):
    rng = np.random.default_rng(0)
    _write(tmp_path / "north.npz", images=rng.integers(0, 255, (40, 8, 8), dtype=np.uint8), labels=np.arange(40) % 2)
    _write(tmp_path / "south.npz", train_images=rng.integers(0, 255, (30, 8, 8, 1), dtype=np.uint8),
           train_labels=(np.arange(30) % 2)[:, None], val_images=rng.integers(0, 255, (6, 8, 8, 1), dtype=np.uint8),
           val_labels=(np.arange(6) % 2)[:, None], test_images=rng.integers(0, 255, (10, 8, 8, 1), dtype=np.uint8),
           test_labels=(np.arange(10) % 2)[:, None])
    sites, features = load_image_sites(DataConfig(source="images", dir=str(tmp_path)), BinaryTask())
    assert [s.name for s in sites] == ["north", "south"] and features == []
    assert sites[0].x.shape == (40, 1, 8, 8) and sites[0].test is None
    south = sites[1]
    assert south.x.shape == (46, 1, 8, 8) and south.test.sum() == 10 and south.test[-10:].all()
    cfg = ExperimentConfig.model_validate({"data": {"source": "images", "dir": str(tmp_path)},
                                          "model": {"kind": "convnet", "width": 4},
                                          "meta": {"shots": 3, "query": 4}, "eval": {"shots": 3}})
    fed = load_federation(cfg)
    assert fed.input_shape == (1, 8, 8) and len(fed.get("south").y_test) == 10


@pytest.mark.skipif(not (BREAST / "breastmnist.npz").is_file(), reason=f"BreastMNIST not at {BREAST}")
def test_medmnist_partition_is_seeded_uses_the_official_test_split_and_switches_off():
    cfg = DataConfig(source="medmnist", dir=str(BREAST))
    a, _ = load_medmnist_sites(cfg, BinaryTask(), seed=0)
    b, _ = load_medmnist_sites(cfg, BinaryTask(), seed=0)
    assert all(np.array_equal(x.x, y.x) for x, y in zip(a, b))
    assert [s.name for s in a] == ["hospital-01", "hospital-02", "hospital-03", "hospital-04"]
    with np.load(BREAST / "breastmnist.npz") as raw:
        n_train, n_test = len(raw["train_labels"]) + len(raw["val_labels"]), len(raw["test_labels"])
        test_labels = np.sort(raw["test_labels"][:, 0])
    # Every image is in exactly one site; the official test images are exactly the sites' test splits.
    assert sum(int((~s.test).sum()) for s in a) == n_train and sum(int(s.test.sum()) for s in a) == n_test
    assert np.array_equal(np.sort(np.concatenate([s.y[s.test] for s in a])), test_labels)
    sizes = [len(s.y) for s in a]
    prevalence = [s.y.mean() for s in a]
    assert max(sizes) > 1.3 * min(sizes) and max(prevalence) - min(prevalence) > 0.05
    off = cfg.model_copy(update={"medmnist": MedMNISTConfig(acquisition_shift=0, label_shift=0, quantity_skew=0)})
    flat, _ = load_medmnist_sites(off, BinaryTask(), seed=0)
    with np.load(BREAST / "breastmnist.npz") as raw:
        pixels = np.concatenate([raw["train_images"], raw["val_images"], raw["test_images"]]) / 255.0
    assert np.isclose(sum(s.x.sum() for s in flat), pixels.sum(), rtol=1e-6)  # untouched images
    assert max(len(s.y) for s in flat) - min(len(s.y) for s in flat) <= 4
    assert max(s.y.mean() for s in flat) - min(s.y.mean() for s in flat) < 0.03


def test_an_imaging_federation_runs_end_to_end_in_a_flower_simulation(tmp_path, capsys):
    import json

    from fedmeta.cli import main

    out = tmp_path / "run"
    config = str(Path(__file__).resolve().parents[1] / "configs" / "images.toml")
    assert main(["simulate", config, "--set", "federation.rounds=2", "--set", "data.synthetic_images.hospitals=4",
                 "--set", "data.held_out=['hospital-04']", "--set", "eval.draws=2", "--out", str(out),
                 "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["rounds_completed"] == 2 and results["config"]["model"]["kind"] == "convnet"
    assert results["final"]["hospital-04"]["role"] == "held-out" and len(results["final"]) == 4
    assert results["data_note"].startswith("the hospitals are synthetic")
    assert "note: the hospitals are synthetic" in capsys.readouterr().out


def test_deployed_image_nodes_get_their_own_file_only(tmp_path):
    from fedmeta.deploy.nodes import plan_nodes
    from fedmeta.errors import FedMetaError

    rng = np.random.default_rng(0)
    data = tmp_path / "scans"
    data.mkdir()
    for name in ("north", "south"):
        _write(data / f"{name}.npz", images=rng.integers(0, 255, (40, 8, 8), dtype=np.uint8), labels=np.arange(40) % 2)
    cfg = ExperimentConfig.model_validate({"data": {"source": "images", "dir": str(data)},
                                          "model": {"kind": "convnet", "width": 4},
                                          "meta": {"shots": 3, "query": 4}, "eval": {"shots": 3}})
    specs = plan_nodes(cfg, tmp_path / "run")
    for spec in specs:
        own = Path(spec.node_config["data-dir"])
        assert [p.name for p in own.iterdir()] == [f"{spec.hospital}.npz"]
    simulated = cfg.model_copy(update={"data": cfg.data.model_copy(update={"source": "medmnist"})})
    with pytest.raises(FedMetaError, match="^deploy-local: the medmnist source cannot give each node its own files"):
        plan_nodes(simulated, tmp_path / "run2")
