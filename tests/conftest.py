"""Two lanes (pytest-xdist, ``--dist loadgroup``): the deployment tests, which mostly wait on
Flower's polling and heartbeats, run beside the rest instead of after it. Within a lane tests run
one at a time, so no two Ray instances or two deployments ever share the machine's cores."""

from __future__ import annotations

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
    """A directory ``build`` fills once per session. pytest-xdist hands a worker its tests in chunks
    and tears every fixture down at the end of a chunk, so a module fixture that runs a whole
    federation may run again; its result is kept in the session's base temp instead."""
    out = tmp_path_factory.getbasetemp() / f"built-once-{name}"
    if not (out / ".built").exists():
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        build(out)
        (out / ".built").touch()
    return out
