"""Start, stop and restart exactly the processes we started, by their own PIDs.

Every process is started in a new session, so it leads its own process group (group id = its
PID) and the children Flower spawns (a SuperNode's SuperExec, ClientApp processes) are in that
group. Stopping sends SIGTERM to that one group, waits, then SIGKILL. Nothing is ever looked up
by name. Output goes to one log file per process. Linux (reads ``/proc``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

__all__ = ["ManagedProcess", "ProcessManager", "group_members", "pid_alive"]


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, process group) of ``pid`` from ``/proc``, or ``None`` if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[2])


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st is not None and st[1] == pgid and st[0] not in ("Z", "X"):
                out.append(int(entry.name))
    return sorted(out)


@dataclass
class ManagedProcess:
    """One started process: its name, command, log file and ``Popen``."""

    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen
    env: dict[str, str] = field(repr=False, default_factory=dict)
    cwd: Path | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def alive(self) -> bool:
        """True while the process or any process of its group is running."""
        return self.popen.poll() is None or bool(group_members(self.pid))

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class ProcessManager:
    """Context manager owning the processes it starts; leaving it stops all of them (last first).

    ``stop``/``restart`` act on one process by name, so a test can kill and restart one SuperNode
    or the SuperLink.
    """

    def __init__(self, *, env: Mapping[str, str] | None = None, cwd: Path | None = None,
                 stop_timeout_s: float = 15.0) -> None:
        self.env = dict(env if env is not None else os.environ)
        self.cwd = cwd
        self.stop_timeout_s = stop_timeout_s
        self.processes: dict[str, ManagedProcess] = {}
        self.started: list[ManagedProcess] = []  # every process ever started, restarts included

    def __enter__(self) -> "ProcessManager":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop_all()

    def start(self, name: str, argv: Sequence[str], log_path: Path, *,
              env: Mapping[str, str] | None = None) -> ManagedProcess:
        if name in self.processes and self.processes[name].alive():
            raise RuntimeError(f"process {name!r} is already running (pid {self.processes[name].pid})")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        full_env = {**self.env, **(env or {})}
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=full_env, cwd=self.cwd, start_new_session=True)
        proc = ManagedProcess(name, list(argv), log_path, popen, full_env, self.cwd)
        self.processes[name] = proc
        self.started.append(proc)
        return proc

    def _signal_group(self, proc: ManagedProcess, sig: signal.Signals) -> None:
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, name: str, timeout_s: float | None = None, sig: signal.Signals = signal.SIGTERM) -> int | None:
        """Signal ``name``'s process group (SIGTERM by default), wait, then SIGKILL what is left.
        Returns the exit code of the process itself."""
        proc = self.processes[name]
        timeout_s = self.stop_timeout_s if timeout_s is None else timeout_s
        if proc.alive():
            self._signal_group(proc, sig)
            deadline = time.monotonic() + timeout_s
            while proc.alive() and time.monotonic() < deadline:
                time.sleep(0.1)
            if proc.alive():
                self._signal_group(proc, signal.SIGKILL)
                deadline = time.monotonic() + 5.0
                while proc.alive() and time.monotonic() < deadline:
                    time.sleep(0.1)
        try:
            return proc.popen.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            return None

    def kill(self, name: str) -> int | None:
        """SIGKILL ``name``'s process group at once (a crash, for fault tests)."""
        return self.stop(name, timeout_s=0.0, sig=signal.SIGKILL)

    def restart(self, name: str) -> ManagedProcess:
        """Stop ``name`` if it runs, then start it again with the same command and log file."""
        old = self.processes[name]
        self.stop(name)
        return self.start(name, old.argv, old.log_path, env=old.env)

    def stop_all(self) -> None:
        """Stop every running process, the most recently started first."""
        for proc in reversed(list(self.processes.values())):
            if proc.alive():
                self.stop(proc.name)

    def alive_pids(self) -> list[int]:
        """PIDs of everything started here (and of their groups) that still runs."""
        pids: set[int] = set()
        for proc in self.started:
            if proc.popen.poll() is None:
                pids.add(proc.pid)
            pids.update(group_members(proc.pid))
        return sorted(pids)
