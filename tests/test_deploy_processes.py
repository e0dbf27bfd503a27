"""The process manager stops exactly what it started (and the children those spawned), escalates
to SIGKILL, and can kill and restart one process by name."""

from __future__ import annotations

import sys
import time

from fedmeta.deploy.processes import ProcessManager, group_members, pid_alive

# A parent that spawns a child (as a SuperNode spawns its SuperExec), then waits.
PARENT = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
          "print('up', flush=True); time.sleep(60)")
STUBBORN = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); "
            "time.sleep(60)")


def _wait_up(proc, n: int = 2) -> None:
    deadline = time.monotonic() + 20
    while (len(group_members(proc.pid)) < n or "up" not in proc.log_tail()) and time.monotonic() < deadline:
        time.sleep(0.05)


def test_stop_ends_the_process_and_its_children(tmp_path):
    with ProcessManager(cwd=tmp_path) as pm:
        proc = pm.start("node", [sys.executable, "-c", PARENT], tmp_path / "node.log")
        _wait_up(proc)
        members = group_members(proc.pid)
        assert proc.pid in members and len(members) == 2
        pm.stop("node")
        assert not any(pid_alive(p) for p in members)
    assert pm.alive_pids() == []


def test_sigterm_ignored_escalates_to_sigkill(tmp_path):
    with ProcessManager(cwd=tmp_path, stop_timeout_s=1.0) as pm:
        proc = pm.start("stubborn", [sys.executable, "-c", STUBBORN], tmp_path / "s.log")
        _wait_up(proc, 1)
        t0 = time.monotonic()
        assert pm.stop("stubborn") == -9
        assert time.monotonic() - t0 < 5.0


def test_kill_and_restart_one_process_leaves_the_others(tmp_path):
    pm = ProcessManager(cwd=tmp_path, stop_timeout_s=1.0)
    try:
        a = pm.start("a", [sys.executable, "-c", STUBBORN], tmp_path / "a.log")
        b = pm.start("b", [sys.executable, "-c", STUBBORN], tmp_path / "b.log")
        _wait_up(a, 1)
        pm.kill("a")
        assert not a.alive() and b.alive()
        a2 = pm.restart("a")
        assert a2.pid != a.pid and a2.alive() and b.alive()
        assert [p.pid for p in pm.started] == [a.pid, b.pid, a2.pid]
    finally:
        pm.stop_all()
    assert pm.alive_pids() == []


def test_leaving_the_context_on_an_error_stops_everything(tmp_path):
    pm = ProcessManager(cwd=tmp_path, stop_timeout_s=1.0)
    try:
        with pm:
            pm.start("x", [sys.executable, "-c", PARENT], tmp_path / "x.log")
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert pm.alive_pids() == []
