"""The hospital's ClientApp called directly with real Flower messages (no Ray): what it accepts,
what it refuses, and that only model-shaped arrays and scalar metrics leave the hospital."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedmeta.config import load_config
from fedmeta.flower.client import build_client_app
from fedmeta.flower.reply_codes import BAD_ARRAYS
from fedmeta.flower.records import params_to_record
from fedmeta.meta.functional import params_of
from fedmeta.models import build_model

CI = Path(__file__).resolve().parents[1] / "configs" / "ci.toml"


@pytest.fixture(autouse=True)
def _task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


@pytest.fixture(scope="module")
def setup():
    cfg = load_config(CI, ["data.held_out=['hospital-05']"])
    params = params_of(build_model(cfg.model, (8,), cfg.seed))
    return cfg, build_client_app(cfg), params


def _context(partition: int) -> Context:
    return Context(run_id=1, node_id=7, node_config={"partition-id": partition, "num-partitions": 5},
                   state=RecordDict(), run_config={})


def _send(app, kind: str, params: dict, partition: int = 0) -> Message:
    msg = Message(RecordDict({"arrays": params_to_record(params), "config": ConfigRecord({"server-round": 1})}),
                  dst_node_id=7, message_type=kind)
    return app(msg, _context(partition))


def test_train_reply_holds_only_a_model_shaped_update_and_scalar_metrics(setup):
    cfg, app, params = setup
    reply = _send(app, MessageType.TRAIN, params)
    assert not reply.has_error()
    assert set(reply.content.keys()) == {"arrays", "metrics"}
    update = reply.content["arrays"].to_torch_state_dict()
    assert {k: tuple(v.shape) for k, v in update.items()} == {k: tuple(v.shape) for k, v in params.items()}
    metrics = reply.content["metrics"]
    assert isinstance(metrics, MetricRecord)
    assert all(isinstance(v, (int, float)) for v in metrics.values())
    assert metrics["num-examples"] > 0 and any(v.abs().sum() > 0 for v in update.values())


def test_evaluate_reply_is_scalar_metrics(setup):
    _, app, params = setup
    reply = _send(app, MessageType.EVALUATE, params, partition=4)
    assert set(reply.content.keys()) == {"metrics"}
    m = reply.content["metrics"]
    assert 0 <= m["auc"] <= 1 and 0 <= m["auc-unadapted"] <= 1 and m["held-out"] == 1


@pytest.mark.parametrize("kind", [MessageType.TRAIN, MessageType.EVALUATE])
def test_parameters_of_the_wrong_shape_or_with_nan_are_refused(setup, kind):
    _, app, params = setup
    wrong = {k: torch.zeros(v.shape[0] + 1, *v.shape[1:]) for k, v in params.items()}
    reply = _send(app, kind, wrong)
    assert reply.has_error() and reply.error.code == BAD_ARRAYS and "shape" in reply.error.reason
    nan = {k: v.clone() for k, v in params.items()}
    next(iter(nan.values())).view(-1)[0] = float("nan")
    reply = _send(app, kind, nan)
    assert reply.has_error() and reply.error.code == BAD_ARRAYS and "NaN or inf" in reply.error.reason
    inf = {k: v.clone() for k, v in params.items()}
    list(inf.values())[-1].view(-1)[-1] = float("inf")
    reply = _send(app, kind, inf)
    assert reply.has_error() and reply.error.code == BAD_ARRAYS and "NaN or inf" in reply.error.reason


def test_a_held_out_hospital_refuses_to_train(setup):
    _, app, params = setup
    reply = _send(app, MessageType.TRAIN, params, partition=4)
    assert reply.has_error() and "held out" in reply.error.reason


def test_query_names_the_hospital_and_its_role(setup):
    _, app, _ = setup
    msg = Message(RecordDict({"config": ConfigRecord({"ask": "identity"})}), dst_node_id=7,
                  message_type=MessageType.QUERY)
    reply = app(msg, _context(4))
    assert reply.content["identity"]["hospital"] == "hospital-05"
    assert reply.content["identity"]["role"] == "held-out"
    assert list(reply.content["sizes"]["input-shape"]) == [8] and reply.content["sizes"]["n-outputs"] == 1
    assert reply.content["identity"]["task"] == "binary"
