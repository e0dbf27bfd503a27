"""One local Ray cluster for many simulations: ``fedmeta tune`` runs every trial on it.

Flower's Ray backend shuts Ray down at the end of each simulation; a driver attached to a running
cluster only disconnects, so the next simulation attaches in a fraction of a second instead of
starting Ray again (15-18 s on two cores). The cluster is a ``ray start --head`` of this machine's
CPUs with its own temp directory and free ports, stopped (all its processes) on exit.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fedmeta.errors import FedMetaError

__all__ = ["cluster_processes", "free_ports", "local_ray_cluster", "ray_cli", "stop_cluster"]


def ray_cli() -> list[str]:
    """The ``ray`` command of this interpreter's environment."""
    script = Path(sys.executable).parent / "ray"
    return [str(script)] if script.exists() else [sys.executable, "-m", "ray.scripts.scripts"]


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def cluster_processes(temp_dir: Path, gcs_port: int) -> list[int]:
    """The cluster's live processes: each names its temp directory or the head's address."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            args = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        ours = any(str(temp_dir) in a or (a.startswith("--address=") and a.endswith(f":{gcs_port}")) for a in args)
        if ours and state != "Z":
            pids.append(int(proc.name))
    return pids


def stop_cluster(temp_dir: Path, gcs_port: int) -> None:
    """TERM, then KILL, every process of the cluster (``ray stop`` would stop every cluster here)."""
    for sig, wait_s in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
        for pid in cluster_processes(temp_dir, gcs_port):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait_s
        while cluster_processes(temp_dir, gcs_port) and time.monotonic() < deadline:
            time.sleep(0.2)


@contextmanager
def local_ray_cluster(num_cpus: int | None = None, temp_root: Path | None = None) -> Iterator[str]:
    """A Ray head on this machine for the duration of the block; yields its ``HOST:PORT``."""
    # Short path: Ray puts unix sockets under it, and those must stay under 108 characters.
    temp_dir = Path(tempfile.mkdtemp(prefix="fedmeta-ray-", dir=temp_root or "/tmp"))
    gcs, client, agent, dashboard = free_ports(4)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    args = ["start", "--head", "--num-cpus", str(num_cpus or os.cpu_count() or 1), "--port", str(gcs),
            "--temp-dir", str(temp_dir), "--include-dashboard", "false", "--dashboard-port", str(dashboard),
            "--ray-client-server-port", str(client), "--dashboard-agent-listen-port", str(agent),
            "--disable-usage-stats",
            # Ports the OS picks: Ray's default worker range (10002-19999) is the same for every cluster
            # on a machine, and a driver that draws a port another cluster's worker holds aborts.
            "--min-worker-port", "0", "--max-worker-port", "0"]
    # A terminated driver must still stop the cluster: SIGTERM unwinds this block (main thread only),
    # by the handler of the command line (``fedmeta.termination``) or, where nobody set one, ours.
    previous = None
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        done = subprocess.run([*ray_cli(), *args], check=False, env=env, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise FedMetaError(f"cannot start a local Ray cluster: {last}")
        yield f"127.0.0.1:{gcs}"
    finally:
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():  # a driver still connected would abort when its cluster stops
            ray.shutdown()
        stop_cluster(temp_dir, gcs)
        shutil.rmtree(temp_dir, ignore_errors=True)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def keep_python_signal_handlers() -> None:
    """Before this process connects to Ray as a driver: Ray would replace the SIGTERM handler with
    its own crash handler, which kills the process without unwinding ``local_ray_cluster`` (the
    cluster would outlive it) or the output directory's clean-up. Ray's own Python handler, which
    exits and so unwinds, stays."""
    os.environ["RAY_DISABLE_FAILURE_SIGNAL_HANDLER"] = "1"  # for a ray imported later
    from ray._private import ray_constants

    ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = True  # read when a driver connects


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)
