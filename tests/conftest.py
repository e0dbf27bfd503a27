"""Two lanes (pytest-xdist, ``--dist loadgroup``): the deployment tests, which mostly wait on
Flower's polling and heartbeats, run beside the rest instead of after it. Within a lane tests run
one at a time, so no two Ray instances or two deployments ever share the machine's cores."""

from __future__ import annotations

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
