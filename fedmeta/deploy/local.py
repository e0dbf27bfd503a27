"""The deployment topology with real processes on 127.0.0.1: what ``fedmeta deploy-local`` runs.

The same topology as ``docker-compose.yml``: a ``flower-superlink`` with TLS and SuperNode
authentication (``--isolation process``), a ``flower-superexec`` that runs the ServerApp, and one
``flower-supernode`` per hospital with its own key, its own ports, its node config (hospital,
ledger, data directory) and its own directory. The app is submitted with ``flwr run``. Everything
lives in one run directory (credentials, database, logs, outputs); every process is stopped by
its own PID when the run ends, fails or is interrupted.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedmeta.config import ExperimentConfig
from fedmeta.deploy.certs import Credentials, check_hospital_name, create_credentials
from fedmeta.deploy.control import Control, write_connection
from fedmeta.deploy.processes import ManagedProcess, ProcessManager
from fedmeta.errors import FedMetaError

__all__ = ["NodeSpec", "PROJECT_ROOT", "plan_nodes", "free_port", "flower_env", "start_superlink",
           "start_server_executor", "start_supernode", "wait_listening", "wait_nodes_online", "deploy_local",
           "flower_bin"]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONNECTION = "fedmeta-local"
Announce = Callable[[str], None]


@dataclass(frozen=True)
class NodeSpec:
    """One hospital's SuperNode: its name, node config and its own directory."""

    hospital: str
    node_config: dict[str, str | int | float]
    home: Path

    def node_config_arg(self) -> str:
        return " ".join(f"{k}={json.dumps(v) if isinstance(v, str) else v}" for k, v in self.node_config.items())


def flower_bin(name: str) -> str:
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise FedMetaError(f"{path}: not found (install the project with its dependencies: pip install -e .)")
    return str(path)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def flower_env(run_dir: Path) -> dict[str, str]:
    """The environment of every Flower process and ``flwr`` call of a run: its own FLWR_HOME,
    this interpreter's scripts first on PATH (SuperNodes spawn ``flower-superexec`` from it), no
    runtime dependency installation, no telemetry or update check."""
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "FLWR_HOME": str(run_dir / "flwr-home"),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
    }


def plan_nodes(cfg: ExperimentConfig, run_dir: Path, hospitals: list[str] | None = None,
               max_epsilon: float | None = None) -> list[NodeSpec]:
    """One node per hospital. Synthetic: ``hospitals`` name the generated sites in order
    (``partition-id``). csv / uci-heart: each node gets a directory holding its own file only."""
    from fedmeta.data.sources import load_federation
    from fedmeta.data.uci_heart import UCI_SITES

    fed = load_federation(cfg)
    names = [check_hospital_name(h) for h in (hospitals or fed.names)]
    if len(set(names)) != len(names):
        raise FedMetaError(f"--hospitals: duplicate names in {names}")
    synthetic = cfg.data.source == "synthetic"
    if synthetic and len(names) > len(fed.names):
        raise FedMetaError(f"--hospitals: {len(names)} names, but the config generates {len(fed.names)} "
                           "synthetic hospitals (data.synthetic.hospitals)")
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
            fname = f"{name}.csv" if cfg.data.source == "csv" else UCI_SITES[name]
            (own / fname).symlink_to(Path(cfg.data.dir) / fname)
            node_config["data-dir"] = str(own)
        if max_epsilon is not None:
            node_config["max-epsilon"] = float(max_epsilon)
        specs.append(NodeSpec(name, node_config, home))
    return specs


def wait_listening(proc: ManagedProcess, port: int, timeout_s: float = 60.0) -> None:
    """Until ``port`` on 127.0.0.1 accepts connections; fails if ``proc`` exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise FedMetaError(f"{proc.name} exited with code {proc.returncode} (log {proc.log_path}): "
                               f"{proc.log_tail(1)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.2)
    raise FedMetaError(f"{proc.name} did not listen on 127.0.0.1:{port} within {timeout_s:.0f}s (log {proc.log_path})")


def start_superlink(pm: ProcessManager, creds: Credentials, run_dir: Path, port: int) -> ManagedProcess:
    """``flower-superlink`` with TLS, SuperNode authentication and its own database file."""
    proc = pm.start("superlink", [
        flower_bin("flower-superlink"), "--ssl-ca-certfile", str(creds.ca_cert),
        "--ssl-certfile", str(creds.server_cert), "--ssl-keyfile", str(creds.server_key), "--enable-supernode-auth",
        "--isolation", "process", "--superexec-auth-secret-file", str(creds.superexec_secret),
        "--database", str(run_dir / "superlink.db"), "--host", "127.0.0.1", "--port", str(port),
        "--disable-runtime-dependency-installation",
    ], run_dir / "logs" / "superlink.log")
    wait_listening(proc, port)
    return proc


def start_server_executor(pm: ProcessManager, creds: Credentials, run_dir: Path, port: int) -> ManagedProcess:
    """``flower-superexec`` that runs the ServerApp, connected to the SuperLink over TLS."""
    return pm.start("serverapp", [
        flower_bin("flower-superexec"), "--runtime-api-address", f"127.0.0.1:{port}",
        "--root-certificates", str(creds.ca_cert), "--superexec-auth-secret-file", str(creds.superexec_secret),
    ], run_dir / "logs" / "serverapp.log")


def start_supernode(pm: ProcessManager, spec: NodeSpec, *, superlink: str, root_certificates: Path,
                    private_key: Path, port: int, log_dir: Path) -> ManagedProcess:
    """``flower-supernode`` for one hospital: TLS to the SuperLink, authenticated by its key."""
    return pm.start(spec.hospital, [
        flower_bin("flower-supernode"), "--superlink", superlink, "--root-certificates", str(root_certificates),
        "--auth-supernode-private-key", str(private_key), "--host", "127.0.0.1", "--port", str(port),
        "--node-config", spec.node_config_arg(),
    ], log_dir / f"{spec.hospital}.log")


def wait_nodes_online(control: Control, nodes: list[ManagedProcess], timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for proc in nodes:
            if proc.returncode is not None:
                raise FedMetaError(f"SuperNode {proc.name} exited with code {proc.returncode} "
                                   f"(log {proc.log_path}): {proc.log_tail(1)}")
        if sum(n.get("status") == "online" for n in control.nodes()) >= len(nodes):
            return
        time.sleep(1.0)
    raise FedMetaError(f"not all {len(nodes)} SuperNodes came online within {timeout_s:.0f}s "
                       f"(logs in {nodes[0].log_path.parent})")


def _checkpoint_round(path: Path) -> int | None:
    try:
        import torch

        return int(torch.load(path, map_location="cpu", weights_only=True)["round"])
    except Exception:  # noqa: BLE001 - a checkpoint being replaced: ask again later
        return None


@dataclass
class _Progress:
    announce: Announce
    rounds: int
    checkpoint: Path
    last_round: int = 0
    last_status: str = ""
    t_last: float = field(default_factory=time.monotonic)

    def update(self, status: str) -> None:
        if status != self.last_status:
            self.announce(f"run: {status}")
            self.last_status = status
        if self.checkpoint.exists():
            r = _checkpoint_round(self.checkpoint)
            if r is not None and r > self.last_round:
                now = time.monotonic()
                self.announce(f"round {r}/{self.rounds} aggregated ({now - self.t_last:.1f}s since the last report)")
                self.last_round, self.t_last = r, now


def _write_run_config(path: Path, cfg: ExperimentConfig, out: Path) -> Path:
    path.write_text(f"config-json = {json.dumps(cfg.to_json(), ensure_ascii=False)}\n"
                    f"out-dir = {json.dumps(str(out))}\n", encoding="utf-8")
    return path


def deploy_local(cfg: ExperimentConfig, run_dir: Path, *, hospitals: list[str] | None = None,
                 project: Path = PROJECT_ROOT, max_epsilon: float | None = None, timeout_s: float = 1800.0,
                 announce: Announce = print, manager: ProcessManager | None = None) -> dict[str, Any]:
    """Run ``cfg`` on the loopback deployment in ``run_dir`` (must not exist); returns a summary
    (run id, status, round times, paths). ``manager`` lets a caller own the processes."""
    if not (project / "pyproject.toml").is_file():
        raise FedMetaError(f"--project: {project}: no pyproject.toml (give the fedmeta project directory)")
    run_dir = run_dir.resolve()
    if run_dir.exists():
        raise FedMetaError(f"{run_dir}: run directory already exists (choose another --out)")
    run_dir.mkdir(parents=True)
    t0 = time.monotonic()
    try:
        specs = plan_nodes(cfg, run_dir, hospitals, max_epsilon)
    except FedMetaError:
        shutil.rmtree(run_dir)  # created just above: a refused plan leaves nothing behind
        raise
    creds = create_credentials(run_dir / "certs", [s.hospital for s in specs])
    env = flower_env(run_dir)
    port = free_port()
    out = run_dir / "out"
    pm = manager or ProcessManager(env=env, cwd=run_dir)
    pm.env.update(env)
    pm.cwd = run_dir
    summary: dict[str, Any] = {"run_dir": str(run_dir), "superlink": f"127.0.0.1:{port}",
                               "hospitals": [s.hospital for s in specs]}
    with pm:
        announce(f"superlink: starting on 127.0.0.1:{port} (TLS, SuperNode authentication)")
        start_superlink(pm, creds, run_dir, port)
        write_connection(Path(env["FLWR_HOME"]), CONNECTION, f"127.0.0.1:{port}", creds.ca_cert)
        control = Control(flower_bin("flwr"), CONNECTION, env, cwd=run_dir)
        summary["node_ids"] = {s.hospital: control.register(creds.public_key(s.hospital)) for s in specs}
        announce(f"registered {len(specs)} hospital keys: {', '.join(summary['node_ids'])}")
        start_server_executor(pm, creds, run_dir, port)
        nodes = [start_supernode(pm, s, superlink=f"127.0.0.1:{port}",
                                 root_certificates=creds.root / s.hospital / "ca.crt",
                                 private_key=creds.node_key(s.hospital), port=free_port(), log_dir=run_dir / "logs")
                 for s in specs]
        wait_nodes_online(control, nodes)
        announce(f"{len(nodes)} SuperNodes online ({time.monotonic() - t0:.1f}s since start)")
        t_run = time.monotonic()
        run_id = control.run(project, _write_run_config(run_dir / "run-config.toml", cfg, out))
        summary["run_id"] = run_id
        announce(f"run {run_id} submitted; logs in {run_dir / 'logs'}")
        progress = _Progress(announce, cfg.federation.rounds, out / "checkpoint.pt")
        status = ""
        while not status.startswith("finished"):
            if time.monotonic() - t_run > timeout_s:
                raise FedMetaError(f"run {run_id}: not finished after {timeout_s:.0f}s (logs in {run_dir / 'logs'})")
            for proc in [pm.processes["superlink"], pm.processes["serverapp"], *nodes]:
                if proc.returncode is not None:
                    raise FedMetaError(f"{proc.name} exited with code {proc.returncode} during the run "
                                       f"(log {proc.log_path}): {proc.log_tail(1)}")
            time.sleep(2.0)
            status = str(control.run_status(run_id)["status"])
            progress.update(status)
        summary["status"] = status
        summary["run_s"] = time.monotonic() - t_run
    summary["stopped"] = not pm.alive_pids()
    summary["total_s"] = time.monotonic() - t0
    if status != "finished:completed" or not (out / "results.json").is_file():
        raise FedMetaError(f"run {run_id} ended {status}: no results; see {run_dir / 'logs' / 'serverapp.log'}")
    results = json.loads((out / "results.json").read_text())
    summary["round_s"] = list(results.get("timings", {}).get("round_s", []))
    summary["results"] = str(out / "results.json")
    (run_dir / "deployment.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
