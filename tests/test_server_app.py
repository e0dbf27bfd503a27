"""The ServerApp as ``flwr run`` drives it (config from the run config, ``resume-from``), against the
real hospital ClientApps called in this process through a stand-in grid (no Ray, no SuperLink)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from flwr.supercore.task_identity import TaskIdentity

from fedmeta.flower.server import SimulatedCrash

from in_process_grid import run_server_app

CI = str(Path(__file__).resolve().parents[1] / "configs" / "ci.toml")


@pytest.fixture(autouse=True)
def _task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


def test_resume_from_in_the_run_config_continues_a_killed_run(tmp_path):
    config = {"config-file": CI, "overrides": "federation.rounds=3 server.optimizer='adam' server.lr=0.1"}
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    run_server_app({**config, "out-dir": str(whole)}, first_id=100)
    with pytest.raises(SimulatedCrash):
        run_server_app({**config, "out-dir": str(cut)}, first_id=200, _stop_after_round=1)
    # The restarted SuperLink numbers the nodes anew; outputs go to the resumed directory.
    run_server_app({**config, "resume-from": str(cut)}, first_id=300)
    a, b = torch.load(cut / "model.pt"), torch.load(whole / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in b)
    res = json.loads((cut / "results.json").read_text())
    assert res["resumed_from_round"] == 1 and [r["round"] for r in res["history"]["rounds"]] == [1, 2, 3]
    adam_steps = torch.load(cut / "checkpoint.pt")["server"]["optimizer"]["state"][0]["step"]
    assert float(adam_steps) == 3.0  # the optimizer state went on from the checkpoint
