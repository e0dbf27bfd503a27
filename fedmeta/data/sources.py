"""Data-source registry and the one entry point that turns a config into a federation."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

from fedmeta.config import DataConfig, ExperimentConfig
from fedmeta.data.csv_source import load_csv_sites
from fedmeta.data.hospital import Federation, RawSite, preprocess_site
from fedmeta.data.synthetic import generate_synthetic
from fedmeta.data.uci_heart import load_uci_heart_sites
from fedmeta.errors import FedMetaError

__all__ = ["SOURCES", "load_federation", "training_hospitals"]


def _synthetic(cfg: DataConfig, seed: int) -> tuple[list[RawSite], list[str]]:
    sites = generate_synthetic(cfg.synthetic, seed)
    return sites, [f"x{i}" for i in range(cfg.synthetic.features)]


SOURCES: dict[str, Callable[[DataConfig, int], tuple[list[RawSite], list[str]]]] = {
    "synthetic": _synthetic,
    "csv": lambda cfg, seed: load_csv_sites(cfg),
    "uci-heart": lambda cfg, seed: load_uci_heart_sites(cfg),
}


def _check_shots(fed: Federation, cfg: ExperimentConfig) -> None:
    held = set(cfg.data.held_out)
    for h in fed.hospitals:
        neg, pos = h.class_counts()
        # Training sites need `shots` per class for the support set and one more example for the query.
        need = cfg.eval.shots if h.name in held else max(cfg.meta.shots, cfg.eval.shots)
        if min(neg, pos) < need or (h.name not in held and h.n_train < 2 * cfg.meta.shots + 1):
            raise FedMetaError(
                f"hospital {h.name!r}: too few examples for the configured shots: its train split has "
                f"{neg} negative / {pos} positive, needs at least {need} of each "
                "(lower meta.shots / eval.shots or data.test_fraction)"
            )
        if len(set(h.y_test.tolist())) < 2:
            raise FedMetaError(f"hospital {h.name!r}: its test split has a single class: AUC is undefined")


@lru_cache(maxsize=8)
def _load_cached(cfg_json: str) -> Federation:
    from fedmeta.config import config_from_json

    cfg = config_from_json(cfg_json)
    sites, feature_names = SOURCES[cfg.data.source](cfg.data, cfg.seed)
    names = [s.name for s in sites]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise FedMetaError(f"data: duplicate hospital names {sorted(dupes)}")
    for name in cfg.data.held_out:
        if name not in names:
            raise FedMetaError(f"data.held_out: unknown hospital {name!r} (hospitals: {', '.join(names)})")
    hospitals = [preprocess_site(s, cfg.data.test_fraction, cfg.seed) for s in sites]
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
