"""Data-source registry and the one entry point that turns a config into a federation."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np

from fedmeta.config import DataConfig, ExperimentConfig
from fedmeta.data.csv_source import load_csv_site, load_csv_sites
from fedmeta.data.hospital import Federation, Hospital, RawSite, preprocess_site
from fedmeta.data.synthetic import generate_synthetic
from fedmeta.data.tcga_brca import TCGA_REGIONS, load_tcga_brca_sites
from fedmeta.data.uci_heart import UCI_SITES, load_uci_heart_site, load_uci_heart_sites
from fedmeta.errors import FedMetaError
from fedmeta.tasks import build_task

__all__ = ["SOURCES", "load_federation", "load_hospital", "OwnHospital", "training_hospitals"]


def _binary_only(cfg: ExperimentConfig) -> None:
    if cfg.task.kind != "binary":
        raise FedMetaError(f"task.kind: the synthetic source generates a binary label; a {cfg.task.kind} task "
                           "needs data that has its labels (data.source = \"csv\" or \"uci-heart\")")


def _synthetic(cfg: ExperimentConfig) -> tuple[list[RawSite], list[str]]:
    _binary_only(cfg)
    sites = generate_synthetic(cfg.data.synthetic, cfg.seed)
    return sites, [f"x{i}" for i in range(cfg.data.synthetic.features)]


SOURCES: dict[str, Callable[[ExperimentConfig], tuple[list[RawSite], list[str]]]] = {
    "synthetic": _synthetic,
    "csv": lambda cfg: load_csv_sites(cfg.data, build_task(cfg.task)),
    "uci-heart": lambda cfg: load_uci_heart_sites(cfg.data, build_task(cfg.task)),
    "tcga-brca": lambda cfg: load_tcga_brca_sites(cfg.data, build_task(cfg.task)),
}


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
    """One deployed node's hospital, its input shape and its index (seeds its local randomness)."""

    hospital: Hospital
    input_shape: tuple[int, ...]
    index: int


def _synthetic_site(cfg: DataConfig, seed: int, hospital: str, partition_id: int | None) -> tuple[RawSite, int]:
    sites = generate_synthetic(cfg.synthetic, seed)
    for i, site in enumerate(sites):
        if site.name == hospital:
            return site, i
    if partition_id is None:
        raise FedMetaError(f"node config hospital: unknown hospital {hospital!r} of the synthetic source "
                           f"(its hospitals: {', '.join(s.name for s in sites)}; or also give partition-id)")
    if not 0 <= partition_id < len(sites):
        raise FedMetaError(f"node config partition-id: {partition_id} is out of range "
                           f"(data.synthetic.hospitals = {len(sites)})")
    site = sites[partition_id]
    return RawSite(name=hospital, x=site.x, y=site.y, origin=f"{site.origin} (site {partition_id})"), partition_id


def _tcga_site(cfg: ExperimentConfig, hospital: str, root: Path) -> tuple[RawSite, list[str], int]:
    """A node's region of Fed-TCGA-BRCA (FLamby's files hold every region: it keeps its own)."""
    if hospital not in TCGA_REGIONS:
        raise FedMetaError(f"node config hospital: unknown Fed-TCGA-BRCA region {hospital!r} "
                           f"(expected one of {', '.join(TCGA_REGIONS)})")
    data = cfg.data.model_copy(update={"dir": str(root)})
    sites, features = load_tcga_brca_sites(data, build_task(cfg.task))
    index = TCGA_REGIONS.index(hospital)
    return sites[index], features, index


@lru_cache(maxsize=8)
def _load_one_cached(cfg_json: str, hospital: str, data_dir: str, partition_id: int | None) -> OwnHospital:
    from fedmeta.config import config_from_json

    cfg = config_from_json(cfg_json)
    if cfg.data.source == "synthetic":
        _binary_only(cfg)
        raw, index = _synthetic_site(cfg.data, cfg.seed, hospital, partition_id)
    else:
        root = Path(data_dir or cfg.data.dir)
        if not (data_dir or cfg.data.dir):
            raise FedMetaError(f"node config data-dir: the {cfg.data.source!r} source needs this hospital's "
                               "data directory (node config data-dir=DIR)")
        if not root.is_dir():
            raise FedMetaError(f"node config data-dir: {root}: directory not found")
        if cfg.data.source == "csv":
            raw, features = load_csv_site(cfg.data, build_task(cfg.task), hospital, root)
            index = zlib.crc32(hospital.encode()) % 2**31
        elif cfg.data.source == "tcga-brca":
            raw, features, index = _tcga_site(cfg, hospital, root)
        else:
            raw, features = load_uci_heart_site(hospital, root, build_task(cfg.task))
            index = list(UCI_SITES).index(hospital)
        index = index if partition_id is None else partition_id
    site = preprocess_site(raw, cfg.data.test_fraction, cfg.seed, cfg.data.validation_fraction,
                           cfg.data.validation_draw, task=build_task(cfg.task))
    _check_hospital(site, cfg)
    return OwnHospital(site, site.input_shape, index)


def load_hospital(cfg: ExperimentConfig, hospital: str, data_dir: str = "",
                  partition_id: int | None = None) -> OwnHospital:
    """Load, split and preprocess one hospital only, and its input shape: what a deployed node
    does with its own data directory (``data_dir``; default ``data.dir``). A synthetic site is
    found by name, or by ``partition_id`` under the name the node was given."""
    return _load_one_cached(cfg.to_json(), hospital, data_dir, partition_id)
