"""Two lanes (pytest-xdist, ``--dist loadgroup``): the deployment tests, which mostly wait on
Flower's polling and heartbeats, are meant to run beside the rest instead of after it, and within a
lane one at a time. pytest-xdist 3.8 marks a group by rewriting ``item._nodeid``, which pytest 9 no
longer reads, so with pytest 9 the groups are ignored and tests spread over both workers."""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from fedmeta.deploy.processes import ProcessManager

DEPLOYMENT_MODULES = {"test_deploy_local", "test_deploy_faults"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        lane = "deployment" if item.module.__name__.rsplit(".", 1)[-1] in DEPLOYMENT_MODULES else "main"
        item.add_marker(pytest.mark.xdist_group(lane))


@pytest.fixture
def manager():
    """A process manager whose processes are all stopped after the test, also when it fails."""
    pm = ProcessManager(stop_timeout_s=10.0)
    yield pm
    pm.stop_all()
    assert pm.alive_pids() == [], "a process started by the test is still running"


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """A directory ``build`` fills once per test session, shared by the xdist workers: a module's
    tests may be spread over both workers, and a worker tears its fixtures down between the chunks
    of tests it is handed, so a module fixture that runs a whole federation would run again. The
    first worker to ask builds it under a lock; the others wait and reuse it."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    out = root / f"built-once-{name}"
    with open(root / f"built-once-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / ".built").exists():
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            build(out)
            (out / ".built").touch()
    return out
