"""Starting Flower's own processes for a deployment on 127.0.0.1 (``flower-superlink``,
``flower-superexec``, ``flower-supernode``) and waiting until they listen or come online."""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

from fedmeta.deploy.certs import Credentials
from fedmeta.deploy.control import Control
from fedmeta.deploy.nodes import NodeSpec
from fedmeta.deploy.processes import ManagedProcess, ProcessManager
from fedmeta.errors import FedMetaError

__all__ = ["flower_bin", "free_port", "flower_env", "wait_listening", "start_superlink", "start_server_executor",
           "start_supernode", "wait_nodes_online"]


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
