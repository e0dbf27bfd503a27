"""The deployment topology for real on 127.0.0.1: a SuperLink with TLS and SuperNode authentication,
one SuperNode per hospital, the app submitted with ``flwr run``. Every process started here is
stopped by its own PID, also when a test fails (fixture finalizer).

A whole run over TLS with node authentication (3 hospitals, every one scored, every round present,
every process stopped) is part of the SuperNode fault test in ``tests/test_deploy_faults.py``: Flower's
deployment path polls every few seconds and starts a ClientApp process per message, so the suite
runs the deployment as few times as it can.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from fedmeta.cli import main
from fedmeta.config import load_config
from fedmeta.deploy.certs import create_credentials
from fedmeta.deploy.control import Control, write_connection
from fedmeta.deploy.flower_launch import flower_bin, flower_env, free_port, start_superlink, start_supernode
from fedmeta.deploy.local import deploy_local
from fedmeta.deploy.nodes import NodeSpec
from fedmeta.deploy.processes import pid_alive
from fedmeta.errors import FedMetaError

ROOT = Path(__file__).resolve().parents[1]
HOSPITALS = ["hospital-a", "hospital-b", "hospital-c"]

pytestmark = pytest.mark.skipif(not (Path(sys.executable).parent / "flower-supernode").exists(),
                                reason="Flower's deployment executables are not installed in this env")


def test_a_supernode_with_an_unregistered_key_is_refused(tmp_path, manager, capsys):
    creds = create_credentials(tmp_path / "certs", ["hospital-a", "intruder"])
    env = flower_env(tmp_path)
    manager.env.update(env)
    port = free_port()
    start_superlink(manager, creds, tmp_path, port)
    write_connection(Path(env["FLWR_HOME"]), "test", f"127.0.0.1:{port}", creds.ca_cert)
    control = Control(flower_bin("flwr"), "test", env)
    # `fedmeta deploy register` (the operator's command) registers hospital-a; the intruder's key never is.
    assert main(["deploy", "register", str(creds.public_key("hospital-a")), "--superlink", f"127.0.0.1:{port}",
                 "--root-certificates", str(creds.ca_cert)]) == 0
    registered = int(capsys.readouterr().out.split("as node ")[1])
    spec = NodeSpec("intruder", {"hospital": "intruder"}, tmp_path / "nodes" / "intruder")
    node = start_supernode(manager, spec, superlink=f"127.0.0.1:{port}", root_certificates=creds.ca_cert,
                           private_key=creds.node_key("intruder"), port=free_port(), log_dir=tmp_path / "logs")
    code = node.popen.wait(timeout=60)
    # Flower 1.41 logs its exit code 305 ("Failed to activate SuperNode"); the process itself exits 1.
    assert code != 0 and "Exit Code: 305" in node.log_path.read_text(), node.log_tail()
    nodes = control.nodes()
    assert [int(n["node-id"]) for n in nodes] == [registered]
    assert all(n["status"] != "online" for n in nodes)


def test_an_error_mid_run_stops_every_process(tmp_path, manager):
    """A run that exceeds its time limit raises, and every process it started is stopped by then."""
    cfg = load_config(ROOT / "configs" / "deploy.toml", ["federation.rounds=2"])
    with pytest.raises(FedMetaError, match=r"^run \d+: not finished after 1s"):
        deploy_local(cfg, tmp_path / "run", hospitals=["hospital-a"], announce=lambda line: None, manager=manager,
                     timeout_s=1.0)
    assert [p.name for p in manager.started] == ["superlink", "serverapp", "hospital-a"]
    assert manager.alive_pids() == [] and not any(pid_alive(p.pid) for p in manager.started)
