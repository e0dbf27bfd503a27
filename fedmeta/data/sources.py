"""Data-source registry and the one entry point that turns a config into a federation."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np

from fedmeta.config import ExperimentConfig
from fedmeta.data.csv_source import load_csv_site, load_csv_sites
from fedmeta.data.hospital import Federation, Hospital, RawSite, preprocess_site
from fedmeta.data.images import load_image_site, load_image_sites
from fedmeta.data.medmnist import SIMULATED_NOTE, load_medmnist_sites
from fedmeta.data.synthetic import generate_synthetic
from fedmeta.data.synthetic_images import generate_synthetic_images
from fedmeta.data.tcga_brca import load_tcga_brca_sites
from fedmeta.data.uci_heart import UCI_SITES, load_uci_heart_site, load_uci_heart_sites
from fedmeta.errors import FedMetaError
from fedmeta.tasks import build_task

__all__ = ["SOURCES", "SOURCE_NOTES", "data_note", "load_federation", "load_hospital", "OwnHospital", "training_hospitals"]


def _binary_only(cfg: ExperimentConfig) -> None:
    if cfg.task.kind != "binary":
        raise FedMetaError(f"task.kind: the {cfg.data.source} source generates a binary label; a {cfg.task.kind} "
                           "task needs data that has its labels (data.source = \"csv\", \"uci-heart\" or \"images\")")


def _synthetic(cfg: ExperimentConfig) -> tuple[list[RawSite], list[str]]:
    _binary_only(cfg)
    sites = generate_synthetic(cfg.data.synthetic, cfg.seed)
    return sites, [f"x{i}" for i in range(cfg.data.synthetic.features)]


def _synthetic_images(cfg: ExperimentConfig) -> tuple[list[RawSite], list[str]]:
    _binary_only(cfg)
    return generate_synthetic_images(cfg.data.synthetic_images, cfg.seed), []


# data.source -> every hospital's raw data and its feature names (none for images).
SOURCES: dict[str, Callable[[ExperimentConfig], tuple[list[RawSite], list[str]]]] = {
    "synthetic": _synthetic,
    "synthetic-images": _synthetic_images,
    "csv": lambda cfg: load_csv_sites(cfg.data, build_task(cfg.task)),
    "uci-heart": lambda cfg: load_uci_heart_sites(cfg.data, build_task(cfg.task)),
    "tcga-brca": lambda cfg: load_tcga_brca_sites(cfg.data, build_task(cfg.task)),
    "images": lambda cfg: load_image_sites(cfg.data, build_task(cfg.task)),
    "medmnist": lambda cfg: load_medmnist_sites(cfg.data, build_task(cfg.task), cfg.seed),
}
# What every output of a run on these sources must say about its hospitals.
SOURCE_NOTES: dict[str, str] = {"medmnist": SIMULATED_NOTE,
                                "synthetic": "the hospitals are synthetic (fedmeta.data.synthetic)",
                                "synthetic-images": "the hospitals are synthetic (fedmeta.data.synthetic_images)"}


def data_note(cfg: ExperimentConfig) -> str:
    return SOURCE_NOTES.get(cfg.data.source, "")


def _check_hospital(h: Hospital, cfg: ExperimentConfig) -> None:
    held = set(cfg.data.held_out)
    task = build_task(cfg.task)
    counts = np.bincount(task.strata(h.y_train), minlength=task.n_strata)
    # Training sites need `shots` per class for the support set and one more example for the query.
    need = cfg.eval.shots if h.name in held else max(cfg.meta.shots, cfg.eval.shots)
    if counts.min() < need or (h.name not in held and h.n_train < task.n_strata * cfg.meta.shots + 1):
        have = ", ".join(f"{n} of class {c}" for c, n in enumerate(counts))
        raise FedMetaError(
            f"hospital {h.name!r}: too few examples for the configured shots: its train split has "
            f"{have}; needs at least {need} of each (lower meta.shots / eval.shots or data.test_fraction)"
        )
    if len(np.unique(task.strata(h.y_test))) < 2:
        raise FedMetaError(f"hospital {h.name!r}: its test split has a single class: its {task.primary} is undefined")
    if cfg.data.validation_fraction > 0 and len(np.unique(task.strata(h.y_val))) < 2:
        raise FedMetaError(f"hospital {h.name!r}: its validation split has a single class: its {task.primary} is "
                           "undefined (raise data.validation_fraction)")


def _check_shots(fed: Federation, cfg: ExperimentConfig) -> None:
    for h in fed.hospitals:
        _check_hospital(h, cfg)


@lru_cache(maxsize=8)
def _load_cached(cfg_json: str) -> Federation:
    from fedmeta.config import config_from_json

    cfg = config_from_json(cfg_json)
    sites, feature_names = SOURCES[cfg.data.source](cfg)
    names = [s.name for s in sites]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise FedMetaError(f"data: duplicate hospital names {sorted(dupes)}")
    for key in ("held_out", "excluded"):
        for name in getattr(cfg.data, key):
            if name not in names:
                raise FedMetaError(f"data.{key}: unknown hospital {name!r} (hospitals: {', '.join(names)})")
    if both := set(cfg.data.held_out) & set(cfg.data.excluded):
        raise FedMetaError(f"data.excluded: {sorted(both)[0]!r} is also in data.held_out (a hospital is one or the other)")
    # An excluded hospital is dropped as read: nothing of it (not even its split) enters the run.
    hospitals = [preprocess_site(s, cfg.data.test_fraction, cfg.seed, cfg.data.validation_fraction,
                                 cfg.data.validation_draw, task=build_task(cfg.task))
                 for s in sites if s.name not in cfg.data.excluded]
    fed = Federation(hospitals=tuple(hospitals), feature_names=tuple(feature_names))
    _check_shots(fed, cfg)
    if len(training_hospitals(fed, cfg)) < 1:
        raise FedMetaError("data.held_out: every hospital is held out; at least one must train")
    return fed


def load_federation(cfg: ExperimentConfig) -> Federation:
    """Load, split and preprocess every hospital (cached per config: a client loads it once)."""
    return _load_cached(cfg.to_json())


def training_hospitals(fed: Federation, cfg: ExperimentConfig) -> list[str]:
    return [n for n in fed.names if n not in set(cfg.data.held_out)]


class OwnHospital(NamedTuple):
    """One deployed node's hospital, its input shape, its index (seeds its local randomness) and
    its feature names (none for images)."""

    hospital: Hospital
    input_shape: tuple[int, ...]
    index: int
    features: tuple[str, ...] = ()


def _generated_site(cfg: ExperimentConfig, hospital: str, partition_id: int | None) -> tuple[RawSite, list[str], int]:
    """A generated site by name, or by ``partition_id`` under the name the node was given."""
    sites, features = SOURCES[cfg.data.source](cfg)
    for i, site in enumerate(sites):
        if site.name == hospital:
            return site, features, i
    if partition_id is None:
        raise FedMetaError(f"node config hospital: unknown hospital {hospital!r} of the {cfg.data.source} source "
                           f"(its hospitals: {', '.join(s.name for s in sites)}; or also give partition-id)")
    if not 0 <= partition_id < len(sites):
        raise FedMetaError(f"node config partition-id: {partition_id} is out of range "
                           f"(the {cfg.data.source} source generates {len(sites)} hospitals)")
    site = sites[partition_id]
    return RawSite(name=hospital, x=site.x, y=site.y, origin=f"{site.origin} (site {partition_id})"), features, partition_id


def _from_shared_files(cfg: ExperimentConfig, hospital: str, root: Path) -> tuple[RawSite, list[str], int]:
    """A node's site from files that hold every site (FLamby's TCGA-BRCA, one MedMNIST file): it keeps its own."""
    sites, features = SOURCES[cfg.data.source](cfg.model_copy(update={"data": cfg.data.model_copy(update={"dir": str(root)})}))
    names = [s.name for s in sites]
    if hospital not in names:
        raise FedMetaError(f"node config hospital: unknown hospital {hospital!r} of the {cfg.data.source} source "
                           f"(expected one of {', '.join(names)})")
    return sites[names.index(hospital)], features, names.index(hospital)


def _stable_index(hospital: str) -> int:
    return zlib.crc32(hospital.encode()) % 2**31


# data.source -> a deployed node's own hospital from its data directory, its feature names and the
# index seeding its randomness.
NODE_SOURCES: dict[str, Callable[[ExperimentConfig, str, Path], tuple[RawSite, list[str], int]]] = {
    "csv": lambda cfg, h, root: (*load_csv_site(cfg.data, build_task(cfg.task), h, root), _stable_index(h)),
    "uci-heart": lambda cfg, h, root: (*load_uci_heart_site(h, root, build_task(cfg.task)), list(UCI_SITES).index(h)),
    "images": lambda cfg, h, root: (*load_image_site(build_task(cfg.task), h, root), _stable_index(h)),
    "tcga-brca": _from_shared_files,
    "medmnist": _from_shared_files,
}
GENERATED = ("synthetic", "synthetic-images")  # no data directory: the node generates its site


@lru_cache(maxsize=8)
def _load_one_cached(cfg_json: str, hospital: str, data_dir: str, partition_id: int | None) -> OwnHospital:
    from fedmeta.config import config_from_json

    cfg = config_from_json(cfg_json)
    if cfg.data.source in GENERATED:
        raw, features, index = _generated_site(cfg, hospital, partition_id)
    else:
        root = Path(data_dir or cfg.data.dir)
        if not (data_dir or cfg.data.dir):
            raise FedMetaError(f"node config data-dir: the {cfg.data.source!r} source needs this hospital's "
                               "data directory (node config data-dir=DIR)")
        if not root.is_dir():
            raise FedMetaError(f"node config data-dir: {root}: directory not found")
        raw, features, index = NODE_SOURCES[cfg.data.source](cfg, hospital, root)
        index = index if partition_id is None else partition_id
    site = preprocess_site(raw, cfg.data.test_fraction, cfg.seed, cfg.data.validation_fraction,
                           cfg.data.validation_draw, task=build_task(cfg.task))
    _check_hospital(site, cfg)
    return OwnHospital(site, site.input_shape, index, tuple(features))


def load_hospital(cfg: ExperimentConfig, hospital: str, data_dir: str = "",
                  partition_id: int | None = None) -> OwnHospital:
    """Load, split and preprocess one hospital only, and its input shape: what a deployed node
    does with its own data directory (``data_dir``; default ``data.dir``). A synthetic site is
    found by name, or by ``partition_id`` under the name the node was given."""
    return _load_one_cached(cfg.to_json(), hospital, data_dir, partition_id)
