"""A run that starts but never changes the model (every update non-finite) ends with one error and
writes no untrained model: the ServerApp with the real hospital ClientApps called in this process
(no Ray, no SuperLink)."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.app import Context, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedmeta.errors import FedMetaError
from fedmeta.flower.server import UNTRAINED, build_server_app

from in_process_grid import InProcessGrid

CI = str(Path(__file__).resolve().parents[1] / "configs" / "ci.toml")
NODES = [{"partition-id": i, "num-partitions": 5, "privacy-mode": "none"} for i in range(5)]


def test_a_diverging_run_fails_instead_of_writing_an_untrained_model(tmp_path):
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    out = tmp_path / "run"
    run_config = {"config-file": CI, "overrides": "meta.inner_lr=1e30 meta.outer_lr=1e30", "out-dir": str(out)}
    app = build_server_app(progress=False, expected_nodes=5)
    with pytest.raises(FedMetaError) as err:
        app(InProcessGrid(NODES, run_config),
            Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config))
    message = str(err.value)
    assert message.startswith("no round changed the model: nothing was trained") and "NaN or inf" in message
    assert "\n" not in message
    assert (out / UNTRAINED).read_text().strip() == message
    assert not (out / "results.json").exists() and not (out / "model.pt").exists()
