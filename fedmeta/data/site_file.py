"""One hospital's data as one file: what a new hospital brings to ``fedmeta onboard``, and what
``fedmeta export-site`` writes for a generated or simulated site.

The file's format is the run's source's: a CSV (a header of feature names and the label column)
for tables, the UCI ``processed.*.data`` layout for ``uci-heart``, an ``.npz`` (``images`` and
``labels``, or MedMNIST's layout) for images, FLamby's ``brca.csv`` layout (``E``, ``T``, the
covariates, ``pid`` optional) for ``tcga-brca``.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fedmeta.config import ExperimentConfig
from fedmeta.data.csv_source import parse_cell, read_table
from fedmeta.data.hospital import RawSite
from fedmeta.data.images import read_image_file
from fedmeta.data.tcga_brca import read_rows, survival_label
from fedmeta.data.uci_heart import feature_names as uci_feature_names
from fedmeta.data.uci_heart import read_uci_file
from fedmeta.errors import FedMetaError
from fedmeta.tasks import Task, build_task

__all__ = ["read_site_file", "write_site_file", "SITE_FILES"]

SURVIVAL_COLUMNS = ("E", "T")  # event (1 observed, 0 censored) and time, as in FLamby's brca.csv


def _csv(path: Path, cfg: ExperimentConfig, task: Task) -> tuple[np.ndarray, np.ndarray, list[str]]:
    features, x, y = read_table(path, cfg.data.label, task)
    return x, y, features


def _uci(path: Path, cfg: ExperimentConfig, task: Task) -> tuple[np.ndarray, np.ndarray, list[str]]:
    if path.suffix == ".csv":
        return _csv(path, cfg, task)
    site = read_uci_file(path, path.stem, task)
    return site.x, site.y, uci_feature_names()


def _images(path: Path, cfg: ExperimentConfig, task: Task) -> tuple[np.ndarray, np.ndarray, list[str]]:
    site = read_image_file(path, path.stem, task)
    return site.x, site.y, []


def _survival_csv(path: Path, cfg: ExperimentConfig, task: Task) -> tuple[np.ndarray, np.ndarray, list[str]]:
    rows = read_rows(path)
    if not rows or not set(SURVIVAL_COLUMNS) <= set(rows[0]):
        raise FedMetaError(f"{path}: expected the columns E (event) and T (time) beside the covariates")
    features = [c for c in rows[0] if c not in ("pid", *SURVIVAL_COLUMNS)]
    xs, ys = [], []
    for ln, row in enumerate(rows, start=2):  # covariates may be missing here: imputed with the site's medians
        where = f"{path}: line {ln}"
        ys.append(survival_label(row, where))
        xs.append([parse_cell(row[c] or "", f"{where}, column {c!r}") for c in features])
    return np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float32), features


# data.source -> (the file suffixes it reads, reader(path, cfg, task) -> (x, y, feature names)).
SITE_FILES: dict[str, tuple[tuple[str, ...], Callable[[Path, ExperimentConfig, Task],
                                                      tuple[np.ndarray, np.ndarray, list[str]]]]] = {
    "synthetic": ((".csv",), _csv),
    "csv": ((".csv",), _csv),
    "uci-heart": ((".data", ".csv"), _uci),
    "tcga-brca": ((".csv",), _survival_csv),
    "images": ((".npz",), _images),
    "medmnist": ((".npz",), _images),
    "synthetic-images": ((".npz",), _images),
}


def read_site_file(path: Path, cfg: ExperimentConfig) -> tuple[RawSite, list[str]]:
    """One hospital's data from ``path``, in the format of ``cfg``'s source (one-line errors)."""
    suffixes, reader = SITE_FILES[cfg.data.source]
    if not path.is_file():
        raise FedMetaError(f"{path}: file not found")
    if path.suffix not in suffixes:
        raise FedMetaError(f"{path}: a {cfg.data.source} run reads {' or '.join(suffixes)} files, "
                           f"not {path.suffix or 'a file without suffix'}")
    x, y, features = reader(path, cfg, build_task(cfg.task))
    if not len(y):
        raise FedMetaError(f"{path}: no data rows")
    return RawSite(name=path.stem, x=x, y=y, origin=str(path)), features


def _cell(value: float) -> str:
    return "" if np.isnan(value) else repr(float(value))


def write_site_file(site: RawSite, features: list[str], cfg: ExperimentConfig, path: Path) -> None:
    """``site`` as a file that ``read_site_file`` reads back to the same arrays."""
    if cfg.data.source in ("uci-heart",):
        raise FedMetaError(f"{cfg.data.source}: its hospitals already are files (data.dir); onboard one of them")
    if site.x.ndim == 4:
        np.savez_compressed(path, images=site.x.astype(np.float32), labels=site.y.astype(np.int64))
        return
    if cfg.task.kind == "survival":
        header, rows = [*features, *SURVIVAL_COLUMNS], [[*x, y[1], y[0]] for x, y in zip(site.x, site.y)]
    else:
        header, rows = [*features, cfg.data.label], [[*x, y] for x, y in zip(site.x, site.y)]
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows([[_cell(v) for v in row] for row in rows])
