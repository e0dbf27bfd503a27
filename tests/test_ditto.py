"""Ditto: the personal model update against its formula, and through the hospital's real ClientApp:
kept next to the ledger across rounds and restarts, used at evaluation, never in a reply."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedmeta.config import MetaConfig, load_config
from fedmeta.data.sources import load_federation
from fedmeta.evaluation import score_params
from fedmeta.flower.client import build_client_app
from fedmeta.flower.records import params_to_record
from fedmeta.meta.algorithms import ALGORITHMS
from fedmeta.meta.functional import params_of
from fedmeta.models import build_model
from fedmeta.personal_state import PersonalStore
from fedmeta.tasks import build_task
from joined_episodes import episode_grads, small_setting

CI = Path(__file__).resolve().parents[1] / "configs" / "ci.toml"


@pytest.fixture(autouse=True)
def _task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


def test_the_personal_update_is_sgd_pulled_towards_the_global_model():
    model, sampler = small_setting()
    meta = MetaConfig(algorithm="ditto", meta_batch=2, outer_steps=3, outer_lr=0.4, ditto_lambda=0.7)
    glob = params_of(model)
    personal = {k: v + 0.1 for k, v in glob.items()}
    out = ALGORITHMS["ditto"].update_personal(model, personal, glob, sampler, meta, np.random.default_rng(3))
    draws, v = np.random.default_rng(3), dict(personal)
    for _ in range(meta.outer_steps):
        grads = episode_grads(model, v, sampler.sample(meta.meta_batch, draws))
        v = {k: v[k] - meta.outer_lr * (sum(g[k] for g in grads) / len(grads) + meta.ditto_lambda * (v[k] - glob[k]))
             for k in v}
    for k in v:
        torch.testing.assert_close(out[k], v[k], rtol=1e-10, atol=1e-12)


def _send(app, kind: str, params: dict, server_round: int, partition: int = 0) -> Message:
    msg = Message(RecordDict({"arrays": params_to_record(params),
                              "config": ConfigRecord({"server-round": server_round})}),
                  dst_node_id=7, message_type=kind)
    context = Context(run_id=1, node_id=7, node_config={"partition-id": partition, "num-partitions": 5},
                      state=RecordDict(), run_config={})
    return app(msg, context)


def test_the_personal_model_stays_at_the_hospital_across_rounds_and_restarts(tmp_path):
    cfg = load_config(CI, ["meta.algorithm='ditto'"])
    ledgers = tmp_path / "ledgers"
    model = build_model(cfg.model, (8,), cfg.seed)
    params = params_of(model)
    store = PersonalStore(ledgers / "hospital-01.sqlite", cfg)
    app = build_client_app(cfg, ledger_dir=ledgers)
    kept = []
    for server_round in (1, 2):
        reply = _send(app, MessageType.TRAIN, params, server_round)
        assert set(reply.content.keys()) == {"arrays", "metrics"}
        update = reply.content["arrays"].to_torch_state_dict()
        assert set(update) == set(params)  # the global model's update only
        personal = store.load(torch.device("cpu"))
        assert personal is not None and torch.load(store.path)["round"] == server_round
        assert all(not torch.allclose(params[k] - update[k], personal[k]) for k in params)  # not what was sent
        kept.append(personal)
        params = {k: params[k] - update[k] for k in params}
    assert any(not torch.equal(kept[0][k], kept[1][k]) for k in params)  # it trains every round
    assert store.path == ledgers / "hospital-01.ditto-personal.pt"  # next to the hospital's ledger
    # A restarted hospital (a new ClientApp) evaluates with the personal model it kept.
    reply = _send(build_client_app(cfg, ledger_dir=ledgers), MessageType.EVALUATE, params, 3)
    hospital = load_federation(cfg).get("hospital-01")
    expected = score_params(model, kept[1], hospital, torch.device("cpu"), build_task(cfg.task), cfg.eval.split)
    assert reply.content["metrics"]["auc"] == pytest.approx(expected.value, abs=1e-12)
    # Another run config does not inherit it.
    assert PersonalStore(ledgers / "hospital-01.sqlite", load_config(CI, ["meta.algorithm='ditto'", "seed=1"])).load(
        torch.device("cpu")) is None


def test_the_global_update_is_fedavgs_and_an_unseen_hospital_scores_as_under_fedavg(tmp_path):
    """What the README's unseen-site tables rest on: Ditto's personal model changes nothing it sends,
    and a hospital that never trained has none, so it adapts the global model as FedAvg's does."""
    sent, unseen = {}, {}
    for algorithm in ("ditto", "fedavg"):
        cfg = load_config(CI, [f"meta.algorithm='{algorithm}'", "data.held_out=['hospital-05']"])
        params = params_of(build_model(cfg.model, (8,), cfg.seed))
        app = build_client_app(cfg, ledger_dir=tmp_path / algorithm)
        sent[algorithm] = _send(app, MessageType.TRAIN, params, 1).content["arrays"].to_torch_state_dict()
        unseen[algorithm] = _send(app, MessageType.EVALUATE, params, 1, partition=4).content["metrics"]["auc"]
    assert sent["ditto"].keys() == sent["fedavg"].keys()
    assert all(torch.equal(sent["ditto"][k], sent["fedavg"][k]) for k in sent["fedavg"])
    assert unseen["ditto"] == unseen["fedavg"]
    assert (tmp_path / "ditto" / "hospital-01.ditto-personal.pt").is_file()  # the trained one has its own
