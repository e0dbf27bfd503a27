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
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedmeta.config import ExperimentConfig
from fedmeta.deploy.certs import Credentials, create_credentials
from fedmeta.deploy.control import Control, write_connection
from fedmeta.deploy.flower_launch import (flower_bin, flower_env, free_port, start_server_executor, start_superlink,
                                          start_supernode, wait_listening, wait_nodes_online)
from fedmeta.deploy.nodes import NodeSpec, plan_nodes
from fedmeta.deploy.processes import ManagedProcess, ProcessManager
from fedmeta.errors import FedMetaError

__all__ = ["PROJECT_ROOT", "deploy_local", "LocalDeployment"]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONNECTION = "fedmeta-local"
Announce = Callable[[str], None]


def _checkpoint_round(path: Path) -> int | None:
    try:
        import torch

        return int(torch.load(path, map_location="cpu", weights_only=True)["round"])
    except Exception:  # noqa: BLE001 - a checkpoint being replaced: ask again later
        return None


def _read_plan(run_dir: Path) -> dict[str, Any]:
    """``plan.json`` of an interrupted deployment: the nodes to start again."""
    path = run_dir / "plan.json"
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(plan.get("nodes"), dict):
            raise ValueError("no 'nodes' table")
    except FileNotFoundError:
        raise FedMetaError(f"--resume {run_dir}: no plan.json there (not a deploy-local run directory); "
                           "nothing to resume") from None
    except (OSError, ValueError, AttributeError) as err:
        raise FedMetaError(f"--resume {run_dir}: plan.json is unreadable ({err})") from None
    return plan


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
                self.announce(f"round {r}/{self.rounds} checkpointed ({now - self.t_last:.1f}s since the last report)")
                self.last_round, self.t_last = r, now


def _write_run_config(path: Path, cfg: ExperimentConfig, out: Path, resume_from: Path | None = None) -> Path:
    lines = [f"config-json = {json.dumps(cfg.to_json(), ensure_ascii=False)}", f"out-dir = {json.dumps(str(out))}"]
    if resume_from is not None:
        lines.append(f"resume-from = {json.dumps(str(resume_from))}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


class LocalDeployment:
    """One loopback deployment in ``run_dir``, step by step: :meth:`start` the processes,
    :meth:`submit` the app, :meth:`wait` for the run. :meth:`kill` and :meth:`restart` act on one
    process (a hospital's SuperNode by its name, ``superlink``, ``serverapp``), for fault tests and
    for resuming by hand.

    ``resume=True`` reopens the run directory of an interrupted deployment: the same credentials,
    SuperLink database (registered keys, hence the same node ids) and node directories (privacy
    ledgers); the next :meth:`submit` continues from ``run_dir/out/checkpoint.pt``.
    """

    def __init__(self, cfg: ExperimentConfig, run_dir: Path, *, hospitals: list[str] | None = None,
                 project: Path = PROJECT_ROOT, node_policy: dict[str, str | float] | None = None,
                 announce: Announce = print, manager: ProcessManager | None = None, resume: bool = False) -> None:
        if not (project / "pyproject.toml").is_file():
            raise FedMetaError(f"--project: {project}: no pyproject.toml (give the fedmeta project directory)")
        self.cfg, self.project, self.announce, self.resume = cfg, project, announce, resume
        self.run_dir = run_dir = run_dir.resolve()
        self.out = run_dir / "out"
        self.t0 = time.monotonic()
        plan_file = run_dir / "plan.json"
        if resume:
            if not (self.out / "checkpoint.pt").is_file():
                raise FedMetaError(f"--resume {run_dir}: no out/checkpoint.pt there; nothing to resume")
            if (self.out / "results.json").is_file():
                raise FedMetaError(f"--resume {run_dir}: that run finished (out/results.json exists); "
                                   "nothing to resume")
            plan = _read_plan(run_dir)
            self.specs = [NodeSpec(h, dict(c), run_dir / "nodes" / h) for h, c in plan["nodes"].items()]
            self.creds = Credentials(run_dir / "certs", tuple(s.hospital for s in self.specs))
        else:
            if run_dir.exists():
                raise FedMetaError(f"{run_dir}: run directory already exists (choose another --out)")
            try:
                run_dir.mkdir(parents=True)
            except OSError as err:
                raise FedMetaError(f"--out {run_dir}: cannot create the run directory: {err.strerror or err}") from None
            try:
                self.specs = plan_nodes(cfg, run_dir, hospitals, node_policy)
                self.creds = create_credentials(run_dir / "certs", [s.hospital for s in self.specs])
                plan_file.write_text(json.dumps({"nodes": {s.hospital: s.node_config for s in self.specs}},
                                                indent=2) + "\n")
            except BaseException:
                shutil.rmtree(run_dir)  # created just above: a refused plan leaves nothing behind
                raise
        self.env = flower_env(run_dir)
        self.port = free_port()
        self.pm = manager or ProcessManager(env=self.env, cwd=run_dir)
        self.pm.env.update(self.env)
        self.pm.cwd = run_dir
        self.control = Control(flower_bin("flwr"), CONNECTION, self.env, cwd=run_dir)
        self.down: set[str] = set()  # processes stopped on purpose (a fault): not an error while waiting
        self.node_ids: dict[str, int] = {}

    @property
    def hospitals(self) -> list[str]:
        return [s.hospital for s in self.specs]

    def start(self) -> None:
        """SuperLink, key registration (a fresh run only), the ServerApp executor, one SuperNode per
        hospital; returns once every SuperNode is online."""
        self.announce(f"superlink: starting on 127.0.0.1:{self.port} (TLS, SuperNode authentication)")
        link = start_superlink(self.pm, self.creds, self.run_dir, self.port)
        write_connection(Path(self.env["FLWR_HOME"]), CONNECTION, f"127.0.0.1:{self.port}", self.creds.ca_cert)
        if self.resume:  # the database still has the keys: the nodes keep their ids
            known = {int(n["node-id"]) for n in self.control.nodes()}
            self.node_ids = json.loads((self.run_dir / "plan.json").read_text()).get("node_ids", {})
            if not known or set(self.node_ids.values()) - known:
                raise FedMetaError(f"--resume {self.run_dir}: superlink.db does not hold the registered nodes")
            self._wait_nodes_offline()
        else:
            self.node_ids = {s.hospital: self.control.register(self.creds.public_key(s.hospital)) for s in self.specs}
            plan = json.loads((self.run_dir / "plan.json").read_text())
            (self.run_dir / "plan.json").write_text(json.dumps({**plan, "node_ids": self.node_ids}, indent=2) + "\n")
            self.announce(f"registered {len(self.specs)} hospital keys: {', '.join(self.node_ids)}")
        start_server_executor(self.pm, self.creds, self.run_dir, self.port)
        nodes = [start_supernode(self.pm, s, superlink=f"127.0.0.1:{self.port}",
                                 root_certificates=self.creds.root / s.hospital / "ca.crt",
                                 private_key=self.creds.node_key(s.hospital), port=free_port(),
                                 log_dir=self.run_dir / "logs")
                 for s in self.specs]
        wait_nodes_online(self.control, nodes)
        self.announce(f"{len(nodes)} SuperNodes online ({time.monotonic() - self.t0:.1f}s since start); pids: "
                      + ", ".join(f"{p.name} {p.pid}" for p in [link, self.pm.processes["serverapp"], *nodes]))

    def _wait_nodes_offline(self, timeout_s: float = 120.0) -> None:
        """Until the SuperLink lists none of our nodes online. Nodes killed with the SuperLink (or
        stopped while it was down) stay online in its database until their heartbeats expire (up to
        60 s), and Flower refuses to activate a node id that is listed online."""
        t = time.monotonic()
        said = False
        while stale := sorted(h for h, status in self.node_statuses().items() if status == "online"):
            if time.monotonic() - t > timeout_s:
                raise FedMetaError(f"{', '.join(stale)}: still listed online by the SuperLink after {timeout_s:.0f}s")
            if not said:
                self.announce(f"waiting for the SuperLink to list {', '.join(stale)} offline (up to 60 s after "
                              "their last heartbeat) before starting them again")
                said = True
            time.sleep(2.0)
        if said:
            self.announce(f"old SuperNodes listed offline after {time.monotonic() - t:.1f}s")

    def submit(self, resume_from: Path | None = None) -> int:
        """``flwr run`` of the project; with ``resume_from`` (default on a resumed deployment: its
        out dir) the ServerApp continues after that directory's checkpointed round."""
        if resume_from is None and self.resume:
            resume_from = self.out
        name = "run-config-resume.toml" if resume_from is not None else "run-config.toml"
        run_id = self.control.run(self.project, _write_run_config(self.run_dir / name, self.cfg, self.out,
                                                                  resume_from))
        self.announce(f"run {run_id} submitted{' (resuming)' if resume_from else ''}; logs in {self.run_dir / 'logs'}")
        return run_id

    def checkpoint_round(self) -> int:
        """The last round whose checkpoint is in the out dir (0: none yet)."""
        path = self.out / "checkpoint.pt"
        return (_checkpoint_round(path) or 0) if path.exists() else 0

    def _check_processes(self) -> None:
        """A hospital's SuperNode that exits is a fault the federation rides out (its hospital misses
        rounds; the ServerApp stops the run if too few can train): announced, not an error. Any
        other process that exits ends the deployment."""
        for proc in self.pm.processes.values():
            if proc.name in self.down or proc.returncode is None:
                continue
            if proc.name in self.node_ids:
                self.down.add(proc.name)
                self.announce(f"{proc.name}: SuperNode (pid {proc.pid}) exited with code {proc.returncode}; "
                              f"the run goes on without it (log {proc.log_path})")
                continue
            raise FedMetaError(f"{proc.name} exited with code {proc.returncode} during the run "
                               f"(log {proc.log_path}): {proc.log_tail(1)}")

    def wait(self, run_id: int, timeout_s: float, until_round: int | None = None, poll_s: float = 2.0) -> str:
        """Until the run has finished (returns its status) or, with ``until_round``, until that
        round's checkpoint exists (returns ``round N``). Raises if a process we did not stop exits."""
        t_run = time.monotonic()
        progress = _Progress(self.announce, self.cfg.federation.rounds, self.out / "checkpoint.pt",
                             last_round=self.checkpoint_round())  # a resumed run reports its new rounds only
        asked = t_run
        while True:
            if time.monotonic() - t_run > timeout_s:
                raise FedMetaError(f"run {run_id}: not finished after {timeout_s:.0f}s "
                                   f"(logs in {self.run_dir / 'logs'})")
            self._check_processes()
            if until_round is not None and (r := self.checkpoint_round()) >= until_round:
                return f"round {r}"
            if time.monotonic() - asked >= poll_s:
                status = str(self.control.run_status(run_id)["status"])
                asked = time.monotonic()
                progress.update(status)
                if status.startswith("finished"):
                    return status
            time.sleep(0.5 if until_round is not None else 0.2)

    def kill(self, name: str) -> int | None:
        """SIGKILL one process (and its children) at once, as a crash would."""
        self.down.add(name)
        code = self.pm.kill(name)
        self.announce(f"{name}: killed (exit {code})")
        return code

    def node_statuses(self) -> dict[str, str]:
        """Each hospital's node status at the SuperLink (``online``, ``offline``, ...)."""
        status = {int(n["node-id"]): str(n.get("status")) for n in self.control.nodes()}
        return {h: status.get(node_id, "unknown") for h, node_id in self.node_ids.items()}

    def node_status(self, hospital: str) -> str:
        return self.node_statuses()[hospital]

    def restart(self, name: str, timeout_s: float = 120.0) -> ManagedProcess:
        """Start a killed process again with the same command line. A SuperNode is restarted only
        once the SuperLink no longer lists it online: Flower refuses to activate a node id that is
        still online (a killed node stays so for up to 2 heartbeat intervals, 60 s)."""
        t = time.monotonic()
        if name in self.node_ids:
            while self.node_status(name) == "online":
                if time.monotonic() - t > timeout_s:
                    raise FedMetaError(f"{name}: still online at the SuperLink {timeout_s:.0f}s after it was killed")
                time.sleep(1.0)
        proc = self.pm.restart(name)
        if name == "superlink":
            wait_listening(proc, self.port)
        self.down.discard(name)
        self.announce(f"{name}: restarted as pid {proc.pid} ({time.monotonic() - t:.1f}s after asking)")
        return proc


def deploy_local(cfg: ExperimentConfig, run_dir: Path, *, hospitals: list[str] | None = None,
                 project: Path = PROJECT_ROOT, node_policy: dict[str, str | float] | None = None,
                 timeout_s: float = 1800.0,
                 announce: Announce = print, manager: ProcessManager | None = None,
                 resume: bool = False) -> dict[str, Any]:
    """Run ``cfg`` on the loopback deployment in ``run_dir`` (must not exist, or with ``resume`` the
    run directory of an interrupted deployment); returns a summary (run id, status, round times,
    paths). ``manager`` lets a caller own the processes."""
    dep = LocalDeployment(cfg, run_dir, hospitals=hospitals, project=project, node_policy=node_policy,
                          announce=announce, manager=manager, resume=resume)
    run_dir, out, pm = dep.run_dir, dep.out, dep.pm
    summary: dict[str, Any] = {"run_dir": str(run_dir), "superlink": f"127.0.0.1:{dep.port}",
                               "hospitals": dep.hospitals}
    with pm:
        dep.start()
        summary["node_ids"] = dep.node_ids
        t_run = time.monotonic()
        run_id = dep.submit()
        summary["run_id"] = run_id
        status = dep.wait(run_id, timeout_s)
        summary["status"] = status
        summary["run_s"] = time.monotonic() - t_run
    summary["stopped"] = not pm.alive_pids()
    summary["total_s"] = time.monotonic() - dep.t0
    if status != "finished:completed" or not (out / "results.json").is_file():
        from fedmeta.flower.server import UNTRAINED

        untrained = out / UNTRAINED
        why = untrained.read_text(encoding="utf-8").strip() if untrained.is_file() else "no results"
        raise FedMetaError(f"run {run_id} ended {status}: {why}; see {run_dir / 'logs' / 'serverapp.log'}")
    results = json.loads((out / "results.json").read_text())
    summary["round_s"] = list(results.get("timings", {}).get("round_s", []))
    summary["results"] = str(out / "results.json")
    (run_dir / ("deployment-resumed.json" if resume else "deployment.json")).write_text(
        json.dumps(summary, indent=2) + "\n")
    return summary
