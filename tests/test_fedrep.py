"""FedRep: the head and body updates against hand-written steps; through the real ClientApp the head
stays at the hospital (in no reply, kept next to the ledger across rounds and restarts, evaluated
with); through the ServerApp the global head never moves (a reply that carries it: test_strategy_faults)."""

from __future__ import annotations

import json
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
from fedmeta.meta.functional import params_of, per_episode_copies
from fedmeta.meta.local_training import meta_train_locally
from fedmeta.models import build_model
from fedmeta.personal_state import PersonalStore
from fedmeta.tasks import BinaryTask, build_task
from in_process_grid import NODES, run_server_app
from joined_episodes import episode_grads, small_setting

ROOT = Path(__file__).resolve().parents[1]
CI = ROOT / "configs" / "ci.toml"
HEAD = {"net.2.weight", "net.2.bias"}  # MLP(5, [8]): Linear, ReLU, Linear


@pytest.fixture(autouse=True)
def _task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


def _setting():
    model, sampler = small_setting()
    return model, sampler, MetaConfig(algorithm="fedrep", meta_batch=2, outer_steps=3, outer_lr=0.4, inner_lr=0.3)


def test_the_head_is_the_last_layer_and_trains_with_the_body_fixed():
    model, sampler, meta = _setting()
    fedrep = ALGORITHMS["fedrep"]
    glob = params_of(model)
    assert fedrep.kept_at_hospital(model) == HEAD
    head = {k: glob[k] + 0.1 for k in HEAD}
    out = fedrep.update_personal(model, head, glob, sampler, meta, np.random.default_rng(3))
    draws, h = np.random.default_rng(3), dict(head)
    for _ in range(meta.outer_steps):
        grads = episode_grads(model, {**glob, **h}, sampler.sample(meta.meta_batch, draws))
        h = {k: h[k] - meta.inner_lr * sum(g[k] for g in grads) / len(grads) for k in h}
    assert set(out) == HEAD
    for k in HEAD:
        torch.testing.assert_close(out[k], h[k], rtol=1e-10, atol=1e-12)


def test_the_body_trains_with_the_kept_head_fixed():
    model, sampler, meta = _setting()
    glob = params_of(model)
    start = ALGORITHMS["fedrep"].training_start(glob, {k: glob[k] + 0.1 for k in HEAD})
    result = meta_train_locally(model, start, sampler, meta, np.random.default_rng(4))
    draws, p = np.random.default_rng(4), dict(start)
    for _ in range(meta.outer_steps):
        grads = episode_grads(model, p, sampler.sample(meta.meta_batch, draws))
        p = {k: p[k] if k in HEAD else p[k] - meta.outer_lr * sum(g[k] for g in grads) / len(grads) for k in p}
    for k in p:
        torch.testing.assert_close(result.update[k], start[k] - p[k], rtol=1e-10, atol=1e-12)
    assert all(result.update[k].abs().max() == 0 for k in HEAD)


def test_an_unseen_hospital_trains_only_the_head_on_its_shots():
    model, sampler, _ = _setting()
    from fedmeta.meta.algorithms import InnerLoop

    batch = sampler.sample(2, np.random.default_rng(0))
    glob = params_of(model)
    state = per_episode_copies(glob, 2)
    adapted = ALGORITHMS["fedrep"].adapt(model, state, batch.x_support, batch.y_support,
                                         InnerLoop(steps=2, lr=0.5, task=BinaryTask()), create_graph=False)
    assert all(torch.equal(adapted[k], state[k]) for k in glob if k not in HEAD)
    assert all(not torch.allclose(adapted[k], state[k]) for k in HEAD)


def _send(app, kind: str, params: dict, server_round: int, ledger: Path) -> Message:
    msg = Message(RecordDict({"arrays": params_to_record(params),
                              "config": ConfigRecord({"server-round": server_round})}),
                  dst_node_id=7, message_type=kind)
    context = Context(run_id=1, node_id=7, node_config={"partition-id": 0, "num-partitions": 5, "ledger": str(ledger)},
                      state=RecordDict(), run_config={})
    return app(msg, context)


def test_the_head_stays_at_the_hospital_across_rounds_and_restarts(tmp_path):
    cfg = load_config(CI, ["meta.algorithm='fedrep'"])
    ledger = tmp_path / "ledgers" / "hospital-01.sqlite"
    model = build_model(cfg.model, (8,), cfg.seed)
    params = params_of(model)
    head = ALGORITHMS["fedrep"].kept_at_hospital(model)
    store = PersonalStore(ledger, cfg)
    app = build_client_app(cfg)
    kept = []
    for server_round in (1, 2):
        reply = _send(app, MessageType.TRAIN, params, server_round, ledger)
        update = reply.content["arrays"].to_torch_state_dict()
        assert set(update) == set(params) - head  # the body's update only: the head is on no reply
        personal = store.load(torch.device("cpu"))
        assert personal is not None and set(personal) == head and torch.load(store.path)["round"] == server_round
        kept.append(personal)
        params = {k: params[k] - update[k] if k in update else params[k] for k in params}
    assert all(not torch.equal(kept[0][k], kept[1][k]) for k in head)  # it trains every round, from where it was
    assert store.path == ledger.with_name("hospital-01.fedrep-personal.pt")  # next to the hospital's ledger
    # A restarted hospital evaluates with the global body and the head it kept.
    reply = _send(build_client_app(cfg), MessageType.EVALUATE, params, 3, ledger)
    hospital = load_federation(cfg).get("hospital-01")
    expected = score_params(model, {**params, **kept[1]}, hospital, torch.device("cpu"), build_task(cfg.task),
                            cfg.eval.split)
    assert reply.content["metrics"]["auc"] == pytest.approx(expected.value, abs=1e-12)


def test_the_global_head_never_moves_and_the_run_reports_every_hospital(tmp_path):
    out = tmp_path / "run"
    nodes = [{**n, "ledger": str(tmp_path / "ledgers" / f"node-{n['partition-id']}.sqlite")} for n in NODES]
    run_server_app({"config-file": str(CI), "out-dir": str(out),
                    "overrides": "meta.algorithm='fedrep' federation.rounds=2"}, first_id=10, nodes=nodes)
    results = json.loads((out / "results.json").read_text())
    final = torch.load(out / "model.pt")
    cfg = load_config(CI)
    start = build_model(cfg.model, (8,), cfg.seed).state_dict()  # what every node built at round 0
    head = ALGORITHMS["fedrep"].kept_at_hospital(build_model(cfg.model, (8,), cfg.seed))
    assert results["rounds_completed"] == 2 and len(results["final"]) == 5
    assert all(torch.equal(final[k], start[k]) for k in head)
    assert all(not torch.allclose(final[k], start[k]) for k in start if k not in head)
    assert len(list((tmp_path / "ledgers").glob("*.fedrep-personal.pt"))) == 5


def test_a_one_layer_model_is_refused_in_one_line(tmp_path, capsys):
    from fedmeta.cli import main

    out = tmp_path / "run"
    assert main(["simulate", str(CI), "--set", "meta.algorithm='fedrep'", "--set", "model.hidden=[]",
                 "--out", str(out), "--quiet"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "fedmeta: error: meta.algorithm: 'fedrep' shares the model's body and keeps its last layer at each hospital; "
        "this model is one layer (give model.hidden a layer)"]
    assert not out.exists()


def test_hospital_level_dp_clips_and_noises_the_body_alone(tmp_path):
    from fedmeta.local_round import train_hospital_round
    from fedmeta.privacy.plan import plan_privacy

    cfg = load_config(CI, ["meta.algorithm='fedrep'", 'privacy.mode="client"', "privacy.noise_multiplier=1.0"])
    hospital = load_federation(cfg).hospitals[0]
    model = build_model(cfg.model, hospital.input_shape, cfg.seed)
    params, head = params_of(model), ALGORITHMS["fedrep"].kept_at_hospital(model)
    plan = plan_privacy(cfg, hospital=hospital.name, n_train=hospital.n_train)
    outcome = train_hospital_round(cfg, hospital, 0, model, params, plan=plan, server_round=1, run_id="run",
                                   ledger_path=tmp_path / "ledger.sqlite", device=torch.device("cpu"))
    update = torch.cat([v.reshape(-1) for v in outcome.result.update.values()])
    assert set(outcome.result.update) == set(params) - head
    # Noise of std sigma*S on every coordinate of what is sent (the body), none spent on the head.
    n = update.numel()
    assert abs(float(update.std()) / (plan.sigma * plan.max_grad_norm) - 1) < 5 / n ** 0.5 + 0.05
