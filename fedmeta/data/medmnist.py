"""Simulated hospitals from one MedMNIST file (e.g. BreastMNIST): MedMNIST images come from one
source, so the sites are **simulated** by a documented, seeded partition. Every output says so.

* **Quantity skew.** Site ``h`` gets a share of the images proportional to
  ``1 + quantity_skew * U(-1, 1)``.
* **Label shift.** Site ``h``'s class proportions are ``(1 - label_shift) * p + label_shift * q_h``
  with ``p`` the file's proportions and ``q_h ~ Dirichlet(1, ..., 1)``.
* **Acquisition shift.** Each site's device transforms intensities in [0, 1]: gamma
  ``exp(N(0, 0.25 s))``, contrast gain ``exp(N(0, 0.2 s))`` around the mean, offset ``N(0, 0.08 s)``,
  Gaussian blur ``sigma ~ U(0, 0.8 s)`` pixels and noise ``sd ~ U(0, 0.05 s)``, with
  ``s = acquisition_shift`` (0: the images as MedMNIST ships them).
* **Splits.** MedMNIST's train and val images make the sites' train data; its official test images are
  dealt to the sites with the same class proportions, as each site's test split, and go through the
  site's device too.

All three shifts at 0 give sites that are random, stratified shares of the same distribution.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from fedmeta.config import DataConfig
from fedmeta.data.csv_source import require_dir
from fedmeta.data.hospital import RawSite
from fedmeta.data.images import as_images, as_labels, read_npz
from fedmeta.data.synthetic import hospital_names
from fedmeta.errors import FedMetaError
from fedmeta.tasks import Task

__all__ = ["load_medmnist_sites", "SIMULATED_NOTE"]

SIMULATED_NOTE = ("the hospitals are simulated: one MedMNIST file partitioned with a seeded acquisition, label "
                  "and quantity shift (fedmeta.data.medmnist)")


def _file(cfg: DataConfig):
    root = require_dir(cfg)
    if cfg.medmnist.file:
        return root / cfg.medmnist.file
    files = sorted(root.glob("*.npz"))
    if len(files) != 1:
        raise FedMetaError(f"{root}: expected one MedMNIST .npz file, found {len(files)} "
                           "(name it with data.medmnist.file)")
    return files[0]


def _deal(rng: np.random.Generator, y: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """The site of each example: class ``c``'s examples dealt to the sites in proportions ``shares[:, c]``."""
    site = np.empty(len(y), dtype=np.int64)
    for c in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == c))
        cuts = np.round(np.cumsum(shares[:, c]) / shares[:, c].sum() * len(rows)).astype(int)[:-1]
        for h, part in enumerate(np.split(rows, cuts)):
            site[part] = h
    return site


def _device(rng: np.random.Generator, shift: float):
    gamma, gain = np.exp(rng.normal(0, 0.25 * shift)), np.exp(rng.normal(0, 0.2 * shift))
    offset, blur, noise = rng.normal(0, 0.08 * shift), rng.uniform(0, 0.8 * shift), rng.uniform(0, 0.05 * shift)

    def apply(x: np.ndarray, noise_rng: np.random.Generator) -> np.ndarray:
        if shift == 0:
            return x
        out = x ** gamma
        out = out.mean() + gain * (out - out.mean()) + offset
        if blur > 0:
            out = gaussian_filter(out, sigma=(0, 0, blur, blur))
        return np.clip(out + noise * noise_rng.normal(size=out.shape), 0, 1).astype(np.float32)

    return apply


def load_medmnist_sites(cfg: DataConfig, task: Task, seed: int) -> tuple[list[RawSite], list[str]]:
    path = _file(cfg)
    arrays = read_npz(path)
    parts = {}
    for part in ("train", "val", "test"):
        if f"{part}_images" not in arrays or f"{part}_labels" not in arrays:
            if part == "val":
                continue
            raise FedMetaError(f"{path}: not a MedMNIST file: no {part}_images / {part}_labels "
                               f"(it has {', '.join(arrays)})")
        x = as_images(arrays[f"{part}_images"], f"{path}: {part}_images", channels_last=True)
        scale = 255.0 if arrays[f"{part}_images"].dtype == np.uint8 else 1.0
        parts[part] = (x / scale, as_labels(arrays[f"{part}_labels"], f"{path}: {part}_labels", len(x), task))
    x_train = np.concatenate([parts[p][0] for p in ("train", "val") if p in parts])
    y_train = np.concatenate([parts[p][1] for p in ("train", "val") if p in parts])
    x_test, y_test = parts["test"]
    m = cfg.medmnist
    rng = np.random.default_rng([seed, 20_261_131])
    k = int(max(y_train.max(), y_test.max())) + 1
    prior = np.bincount(y_train, minlength=k) / len(y_train)
    size = 1 + m.quantity_skew * rng.uniform(-1, 1, m.hospitals)
    mix = (1 - m.label_shift) * prior + m.label_shift * rng.dirichlet(np.ones(k), m.hospitals)
    shares = size[:, None] * mix
    train_site, test_site = _deal(rng, y_train, shares), _deal(rng, y_test, shares)
    sites = []
    for h, name in enumerate(hospital_names(m.hospitals)):
        device = _device(rng, m.acquisition_shift)
        noise_rng = np.random.default_rng([seed, 20_261_131, h])
        tr, te = train_site == h, test_site == h
        x = device(np.concatenate([x_train[tr], x_test[te]]), noise_rng)
        test = np.concatenate([np.zeros(tr.sum(), bool), np.ones(te.sum(), bool)])
        sites.append(RawSite(name, x, np.concatenate([y_train[tr], y_test[te]]), f"{path} (simulated {name})",
                             test=test))
    return sites, []
