"""Hospitals from a directory of ``.npz`` files, one per hospital (file stem = hospital id).

A file holds ``images`` ((N, H, W) or (N, C, H, W)) and ``labels`` ((N,) or (N, 1)), or MedMNIST's
layout (``train_images`` / ``val_images`` / ``test_images`` with their ``*_labels``; colour images
channels-last as MedMNIST ships them): its train and val parts are the hospital's train data and its
test part its test split. Intensities are normalised later, per site, on its own train split.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from fedmeta.config import DataConfig
from fedmeta.data.csv_source import require_dir
from fedmeta.data.hospital import RawSite
from fedmeta.errors import FedMetaError
from fedmeta.tasks import Task

__all__ = ["read_image_file", "read_npz", "as_images", "as_labels", "load_image_sites", "load_image_site", "MEDMNIST_PARTS"]

MEDMNIST_PARTS = ("train", "val", "test")


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an npz file (no pickled objects: a data file must not run code)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise FedMetaError(f"{path}: file not found") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise FedMetaError(f"{path}: not a readable .npz file of plain arrays: {err}") from None


def as_images(array: np.ndarray, where: str, channels_last: bool = False) -> np.ndarray:
    """``(N, C, H, W)`` float32 from ``(N, H, W)`` or a rank-4 array; refuses other ranks, types, NaN."""
    if array.dtype.kind not in "uif" and array.dtype != np.bool_:
        raise FedMetaError(f"{where}: images of dtype {array.dtype}; expected numbers (uint8, int or float)")
    if array.ndim == 3:
        array = array[:, None]
    elif array.ndim == 4 and channels_last:
        array = array.transpose(0, 3, 1, 2)
    elif array.ndim != 4:
        raise FedMetaError(f"{where}: images of shape {array.shape}; expected (N, H, W) or (N, C, H, W)")
    if 0 in array.shape:
        raise FedMetaError(f"{where}: images of shape {array.shape}: empty")
    images = array.astype(np.float32)
    bad = ~np.isfinite(images)
    if bad.any():
        raise FedMetaError(f"{where}: image {int(np.argwhere(bad)[0][0])} has NaN or infinite pixels")
    return images


def as_labels(array: np.ndarray, where: str, n: int, task: Task) -> np.ndarray:
    """``(N,)`` labels of the task from ``(N,)`` or ``(N, 1)``."""
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1 or array.shape[0] != n:
        raise FedMetaError(f"{where}: labels of shape {array.shape}; expected ({n},) or ({n}, 1), one per image")
    if array.dtype.kind not in "uifb":
        raise FedMetaError(f"{where}: labels of dtype {array.dtype}; expected integers")
    for value in np.unique(array):
        if (why := task.label_error(float(value))) is not None:
            raise FedMetaError(f"{where}: label {value.item()!r}: {why}")
    return array.astype(np.int64)


def read_image_file(path: Path, name: str, task: Task) -> RawSite:
    arrays = read_npz(path)
    if "images" in arrays or "labels" in arrays:
        missing = [k for k in ("images", "labels") if k not in arrays]
        if missing:
            raise FedMetaError(f"{path}: no {missing[0]!r} array (it has {', '.join(arrays)})")
        x = as_images(arrays["images"], f"{path}: images")
        return RawSite(name, x, as_labels(arrays["labels"], f"{path}: labels", len(x), task), str(path))
    expected = [f"{p}_{k}" for p in MEDMNIST_PARTS for k in ("images", "labels")]
    if not any(k in arrays for k in expected):
        raise FedMetaError(f"{path}: expected arrays 'images' and 'labels' (or MedMNIST's train_images, ...); "
                           f"it has {', '.join(arrays) or 'none'}")
    parts = [p for p in MEDMNIST_PARTS if f"{p}_images" in arrays]
    if "train" not in parts or "test" not in parts:
        raise FedMetaError(f"{path}: a MedMNIST file needs train_images and test_images (it has {', '.join(arrays)})")
    xs, ys = [], []
    for p in parts:
        if f"{p}_labels" not in arrays:
            raise FedMetaError(f"{path}: {p}_images without {p}_labels")
        x = as_images(arrays[f"{p}_images"], f"{path}: {p}_images", channels_last=True)
        xs.append(x)
        ys.append(as_labels(arrays[f"{p}_labels"], f"{path}: {p}_labels", len(x), task))
    if len({x.shape[1:] for x in xs}) > 1:
        raise FedMetaError(f"{path}: its parts hold images of different sizes: "
                           + ", ".join(f"{p} {x.shape[1:]}" for p, x in zip(parts, xs)))
    test = np.concatenate([np.full(len(x), p == "test") for p, x in zip(parts, xs)])
    return RawSite(name, np.concatenate(xs), np.concatenate(ys), str(path), test=test)


def load_image_sites(cfg: DataConfig, task: Task) -> tuple[list[RawSite], list[str]]:
    root = require_dir(cfg)
    files = sorted(root.glob("*.npz"))
    if not files:
        raise FedMetaError(f"{root}: no .npz files (one per hospital: images and labels)")
    sites = [read_image_file(f, f.stem, task) for f in files]
    shapes = {s.x.shape[1:] for s in sites}
    if len(shapes) > 1:
        raise FedMetaError(f"{root}: the hospitals' images differ in size: "
                           + ", ".join(f"{s.name} {s.x.shape[1:]}" for s in sites)
                           + " (resize them to one size before the federation)")
    return sites, []


def load_image_site(task: Task, hospital: str, root: Path) -> tuple[RawSite, list[str]]:
    """One node's own hospital: ``<root>/<hospital>.npz``."""
    path = root / f"{hospital}.npz"
    if not path.is_file():
        raise FedMetaError(f"{path}: file not found (a node's data directory holds its hospital's <name>.npz)")
    return read_image_file(path, hospital, task), []
