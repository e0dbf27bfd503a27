"""Which SuperNodes a loopback deployment starts, and each one's own directory: its node config
(hospital, ledger, policy) and a data directory that holds this hospital's files and nothing of the
others' (a link to its own file, or its own rows of a shared file)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fedmeta.config import ExperimentConfig
from fedmeta.deploy.certs import check_hospital_name
from fedmeta.errors import FedMetaError

__all__ = ["NodeSpec", "OWN_FILES", "plan_nodes"]


@dataclass(frozen=True)
class NodeSpec:
    """One hospital's SuperNode: its name, node config and its own directory."""

    hospital: str
    node_config: dict[str, str | int | float]
    home: Path

    def node_config_arg(self) -> str:
        return " ".join(f"{k}={json.dumps(v) if isinstance(v, str) else v}" for k, v in self.node_config.items())



def plan_nodes(cfg: ExperimentConfig, run_dir: Path, hospitals: list[str] | None = None,
               node_policy: dict[str, str | float] | None = None) -> list[NodeSpec]:
    """One node per hospital. Synthetic: ``hospitals`` name the generated sites in order
    (``partition-id``). csv / uci-heart: each node gets a directory holding its own file only.
    ``node_policy``: privacy policy keys every node's config gets (``fedmeta.privacy.policy``)."""
    from fedmeta.data.sources import GENERATED, load_federation

    if cfg.data.source not in (*GENERATED, *OWN_FILES):
        raise FedMetaError(f"deploy-local: the {cfg.data.source} source cannot give each node its own files "
                           f"(deploy-local runs {', '.join((*GENERATED, *OWN_FILES))})")
    fed = load_federation(cfg)
    names = [check_hospital_name(h) for h in (hospitals or fed.names)]
    if len(set(names)) != len(names):
        raise FedMetaError(f"--hospitals: duplicate names in {names}")
    synthetic = cfg.data.source in GENERATED
    if synthetic and len(names) > len(fed.names):
        raise FedMetaError(f"--hospitals: {len(names)} names, but the config generates {len(fed.names)} "
                           f"synthetic hospitals (data.{cfg.data.source.replace('-', '_')}.hospitals)")
    if not synthetic:
        unknown = [h for h in names if h not in fed.names]
        if unknown:
            raise FedMetaError(f"--hospitals: {', '.join(unknown)} not in the data (hospitals: {', '.join(fed.names)})")
    missing = [h for h in cfg.data.held_out if h not in names]
    if missing:
        raise FedMetaError(f"data.held_out: {', '.join(missing)} is not one of the nodes ({', '.join(names)})")
    specs = []
    for i, name in enumerate(names):
        home = run_dir / "nodes" / name
        home.mkdir(parents=True, exist_ok=True)
        node_config: dict[str, str | int | float] = {"hospital": name, "ledger": str(home / "ledger.sqlite")}
        if synthetic:
            node_config["partition-id"] = i
        else:
            own = home / "data"
            own.mkdir()
            _own_files(cfg, name, own)
            node_config["data-dir"] = str(own)
        node_config.update(node_policy or {})
        specs.append(NodeSpec(name, node_config, home))
    return specs


def _link(name: Callable[[str], str]) -> Callable[[Path, str, Path], None]:
    """A source with one file per hospital: the node's directory links to its own file only."""
    return lambda src, hospital, own: (own / name(hospital)).symlink_to(src / name(hospital))


def _uci_file(hospital: str) -> str:
    from fedmeta.data.uci_heart import UCI_SITES

    return UCI_SITES[hospital]


def _own_tcga_region(src: Path, hospital: str, own: Path) -> None:
    from fedmeta.data.tcga_brca import write_own_region

    write_own_region(src, hospital, own)  # FLamby's files hold every region: the node's rows only


# data.source -> how a node's directory gets this hospital's data and nothing of the others'.
OWN_FILES: dict[str, Callable[[Path, str, Path], None]] = {
    "csv": _link(lambda h: f"{h}.csv"),
    "uci-heart": _link(_uci_file),
    "images": _link(lambda h: f"{h}.npz"),
    "tcga-brca": _own_tcga_region,
}


def _own_files(cfg: ExperimentConfig, hospital: str, own: Path) -> None:
    OWN_FILES[cfg.data.source](Path(cfg.data.dir), hospital, own)
