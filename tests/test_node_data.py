"""A deployed hospital node loads its own hospital only, from its own data directory.

The ClientApp is called with real Flower ``query`` messages and the node config a SuperNode gives
(``hospital``, ``data-dir``, ``partition-id``); the other hospitals' files are not there.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedmeta.config import load_config
from fedmeta.data.sources import load_federation, load_hospital
from fedmeta.errors import FedMetaError
from fedmeta.flower.client import build_client_app

ROOT = Path(__file__).resolve().parents[1]
UCI = Path(os.environ.get("FEDMETA_UCI_DIR", "/work/shared/data/uci-heart-disease"))


@pytest.fixture(autouse=True)
def _task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


def _query(app, node_config: dict) -> Message:
    msg = Message(RecordDict({"config": ConfigRecord({"ask": "identity"})}), dst_node_id=7,
                  message_type=MessageType.QUERY)
    return app(msg, Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config={}))


def _site_csv(root: Path, name: str, n: int = 60, seed: int = 0) -> Path:
    """``root/<name>/<name>.csv``: a hospital's own directory with its file alone."""
    d = root / name
    d.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    rows = ["age,bp,label"] + [f"{rng.normal(50, 10):.1f},{rng.normal(120, 15):.1f},{i % 2}" for i in range(n)]
    (d / f"{name}.csv").write_text("\n".join(rows) + "\n")
    return d


def _csv_cfg(tmp_path: Path):
    cfg = tmp_path / "csv.toml"
    cfg.write_text('[data]\nsource = "csv"\n[meta]\nshots = 3\nquery = 5\n[eval]\nshots = 3\n')
    return load_config(cfg)


def test_a_csv_node_reads_only_its_own_directory(tmp_path):
    own = _site_csv(tmp_path, "hospital-a")
    app = build_client_app(_csv_cfg(tmp_path))
    reply = _query(app, {"hospital": "hospital-a", "data-dir": str(own)})
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    assert reply.content["identity"]["hospital"] == "hospital-a"
    assert list(reply.content["sizes"]["input-shape"]) == [2]
    assert reply.content["sizes"]["num-examples"] == 42  # 70% of 60
    # its columns: the run records them as the schema a new hospital's data must match
    assert list(reply.content["identity"]["features"]) == ["age", "bp"]


def test_a_node_matches_its_hospital_in_the_whole_federation(tmp_path):
    """Per-site preprocessing: a hospital loaded alone equals the same hospital in the federation."""
    for i, name in enumerate(["hospital-a", "hospital-b"]):
        _site_csv(tmp_path / "all-dirs", name, seed=i)
    shared = tmp_path / "shared"
    shared.mkdir()
    for name in ["hospital-a", "hospital-b"]:
        (shared / f"{name}.csv").write_text((tmp_path / "all-dirs" / name / f"{name}.csv").read_text())
    cfg = _csv_cfg(tmp_path).model_copy()
    fed = load_federation(load_config(tmp_path / "csv.toml", data_dir=str(shared)))
    own = load_hospital(cfg, "hospital-b", str(tmp_path / "all-dirs" / "hospital-b"))
    assert np.array_equal(own.hospital.x_train, fed.get("hospital-b").x_train)
    assert np.array_equal(own.hospital.y_test, fed.get("hospital-b").y_test)
    assert own.features == fed.feature_names


def test_synthetic_node_takes_its_name_from_the_node_config():
    cfg = load_config(ROOT / "configs" / "deploy.toml")
    app = build_client_app(cfg)
    reply = _query(app, {"hospital": "hospital-b", "partition-id": 1})
    assert reply.content["identity"]["hospital"] == "hospital-b"
    by_index = load_federation(cfg).hospitals[1]
    assert reply.content["sizes"]["num-examples"] == by_index.n_train


@pytest.mark.parametrize("node_config, message", [
    ({"hospital": "hospital-z"}, "{dir}/hospital-z.csv: data file of hospital 'hospital-z' not found "
                                 "(CSV files there: hospital-a.csv)"),
    ({"hospital": "hospital-a", "data-dir": "/nonexistent/site"},
     "node config data-dir: /nonexistent/site: directory not found"),
])
def test_bad_node_config_is_one_clear_line(tmp_path, node_config, message):
    own = _site_csv(tmp_path, "hospital-a")
    node_config = {"data-dir": str(own), **node_config}
    with pytest.raises(FedMetaError) as err:
        load_hospital(_csv_cfg(tmp_path), node_config["hospital"], node_config["data-dir"])
    assert str(err.value) == message.format(dir=own)
    with pytest.raises(FedMetaError, match=re.escape(message.format(dir=own))):
        _query(build_client_app(_csv_cfg(tmp_path)), node_config)


def test_unknown_synthetic_hospital_without_partition_is_refused():
    cfg = load_config(ROOT / "configs" / "deploy.toml")
    with pytest.raises(FedMetaError, match=r"^node config hospital: unknown hospital 'hospital-x' of the "
                                           r"synthetic source \(its hospitals: hospital-01, "):
        load_hospital(cfg, "hospital-x")


@pytest.mark.skipif(not (UCI / "processed.cleveland.data").is_file(), reason=f"UCI Heart Disease data not at {UCI}")
def test_a_uci_heart_node_reads_only_its_own_file(tmp_path):
    own = tmp_path / "hungarian"
    own.mkdir()
    (own / "processed.hungarian.data").symlink_to(UCI / "processed.hungarian.data")
    cfg = load_config(ROOT / "configs" / "uci-heart.toml", data_dir=str(UCI))
    reply = _query(build_client_app(cfg), {"hospital": "hungarian", "data-dir": str(own)})
    assert reply.content["identity"]["hospital"] == "hungarian"
    fed = load_federation(cfg)
    assert reply.content["sizes"]["num-examples"] == fed.get("hungarian").n_train
    assert tuple(reply.content["sizes"]["input-shape"]) == fed.input_shape
