"""The simulation attached to an existing Ray cluster (``fedmeta simulate --ray-address``): a head
node and a second node started here with ``ray start``, as on two machines of a cluster; and runs
that share one driver and its actors there (``fedmeta.flower.kept_actors``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from fedmeta.cli import main
from fedmeta.config import load_config
from fedmeta.flower.kept_actors import kept_actors
from fedmeta.ray_session import cluster_processes, free_ports, stop_cluster
from fedmeta.simulation import simulate

ROOT = Path(__file__).resolve().parents[1]
CI = str(ROOT / "configs" / "ci.toml")
RAY = Path(sys.executable).parent / "ray"


@pytest.fixture(scope="module")
def ray_cluster():
    """A head node (2 CPUs) and a second node (1 CPU) joined to it, as `ray start` on two machines."""
    # Short path: Ray puts unix sockets under it, and those must stay under 108 characters.
    temp_dir = Path(tempfile.mkdtemp(prefix="fedmeta-ray-", dir="/tmp"))
    gcs, client, agent, dashboard, agent2 = free_ports(5)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    try:
        for args in (["--head", "--num-cpus", "2", "--port", str(gcs), "--temp-dir", str(temp_dir),
                      "--include-dashboard", "false", "--dashboard-port", str(dashboard),
                      "--ray-client-server-port", str(client), "--dashboard-agent-listen-port", str(agent)],
                     ["--address", f"127.0.0.1:{gcs}", "--num-cpus", "1", "--dashboard-agent-listen-port", str(agent2)]):
            args += ["--min-worker-port", "0", "--max-worker-port", "0"]  # not the range other clusters here use
            subprocess.run([str(RAY), "start", *args, "--disable-usage-stats"], env=env, check=True,
                           capture_output=True, text=True, timeout=180)
        yield f"127.0.0.1:{gcs}", temp_dir
    finally:
        stop_cluster(temp_dir, gcs)
        leftover = cluster_processes(temp_dir, gcs)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not leftover, f"Ray processes still running: {leftover}"


@pytest.mark.skipif(not RAY.exists(), reason="the ray CLI is not installed in this environment")
def test_the_simulation_runs_on_an_existing_two_node_ray_cluster(ray_cluster, tmp_path):
    address, temp_dir = ray_cluster
    out = tmp_path / "run"
    # A run of its own first (attached for its duration) ...
    assert main(["simulate", CI, "--ray-address", address, "--out", str(tmp_path / "other"), "--set", "seed=1",
                 "--set", "meta.algorithm='reptile'", "--quiet"]) == 0
    # ... then two that share one driver and its actors, as the trials of a tune and the runs of a compare
    # do; nothing of the first reaches the second.
    with kept_actors(address):
        first = simulate(load_config(CI, ["seed=2", "meta.algorithm='fomaml'"]), tmp_path / "kept", progress=False,
                         ray_address=address)
        res = simulate(load_config(CI), out, progress=False, ray_address=address)
    runtime = res["runtime"]
    assert runtime["attached"] and runtime["address"].endswith(f":{address.rsplit(':', 1)[1]}")
    assert runtime["nodes"] == 2 and runtime["cpus"] == 3.0
    assert first["runtime"]["job_id"] == runtime["job_id"]
    # The cluster's own logs hold this process's driver of that job: the run used it, not a new one.
    logs = temp_dir / "session_latest" / "logs"
    assert list(logs.glob(f"python-core-driver-{runtime['job_id']}*_{os.getpid()}.log")), sorted(
        p.name for p in logs.iterdir())
    # One hospital actor per CPU of the cluster, more than the head has, so the second node ran some;
    # three for both runs: the second reused the first's.
    assert len(list(logs.glob(f"worker-*-{runtime['job_id']}-*.out"))) == 3
    assert res["rounds_completed"] == 3 and len(res["final"]) == 5
    # ... and the run equals the same run alone, without Ray: the ServerApp and ClientApps in this process.
    from flwr.supercore.task_identity import TaskIdentity

    from in_process_grid import NODES, run_server_app

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    alone = tmp_path / "alone"
    run_server_app({"config-file": CI, "out-dir": str(alone)}, first_id=10,
                   nodes=[{**n, "ledger": str(tmp_path / "ledgers" / f"{i}.sqlite")} for i, n in enumerate(NODES)])
    shared, single = torch.load(out / "model.pt"), torch.load(alone / "model.pt")
    assert all(torch.equal(shared[k], single[k]) for k in single)
    assert res["final"] == json.loads((alone / "results.json").read_text())["final"]


def test_an_address_where_no_cluster_answers_is_one_line(tmp_path, capsys, monkeypatch):
    (port,) = free_ports(1)
    assert main(["simulate", CI, "--ray-address", f"127.0.0.1:{port}", "--out", str(tmp_path / "a"), "--quiet"]) == 2
    monkeypatch.setenv("RAY_ADDRESS", "nowhere")
    assert main(["simulate", CI, "--out", str(tmp_path / "b"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith(f"fedmeta: error: --ray-address 127.0.0.1:{port}: no Ray cluster answers there (")
    assert err[1] == "fedmeta: error: RAY_ADDRESS nowhere: expected auto or HOST:PORT"
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()



def test_the_shared_local_cluster_is_stopped_also_when_its_driver_is_terminated():
    """``fedmeta tune`` and ``compare`` start one Ray cluster for all their runs: a terminated
    driver must not leave it running."""
    root = Path(tempfile.mkdtemp(prefix="fr-", dir="/tmp"))  # short: Ray's socket paths live under it
    # Connected as a driver, as a simulation is: Ray must not take SIGTERM over.
    script = ("import sys, time\nfrom pathlib import Path\nimport ray\n"
              "from fedmeta.ray_session import keep_python_signal_handlers, local_ray_cluster\n"
              f"with local_ray_cluster(1, temp_root=Path({str(root)!r})) as address:\n"
              "    keep_python_signal_handlers()\n    ray.init(address=address, logging_level='error')\n"
              "    print(address, flush=True)\n    time.sleep(300)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline().strip().rsplit(":", 1)[1])
        assert cluster_processes(root, port), "no cluster was started"
        proc.terminate()
        assert proc.wait(timeout=60) in (15, 128 + 15)  # Ray's handler exits with 15, ours with 128 + 15
        assert not cluster_processes(root, port), "the cluster outlived its driver"
    finally:
        proc.kill()
        stop_cluster(root, 0)
        shutil.rmtree(root, ignore_errors=True)
