"""FedMeta's aggregation and server meta-optimizer, fed real Flower reply messages."""

from __future__ import annotations

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedmeta.config import ExperimentConfig, ServerConfig
from fedmeta.flower.records import RecordError, params_to_record, record_to_params
from fedmeta.flower.strategy import FedMeta
from fedmeta.server_optimizer import ServerMetaOptimizer


@pytest.fixture(autouse=True)
def _task_identity():
    # Flower stamps messages with the run/task they belong to; a ServerApp has these set.
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


PARAMS = {"w": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "b": torch.tensor([0.5, -0.5])}
HOSPITALS = {11: "hospital-a", 22: "hospital-b", 33: "hospital-c"}


def _strategy(tmp_path, **server) -> FedMeta:
    cfg = ExperimentConfig.model_validate({"server": server, "federation": {"rounds": 2}})
    return FedMeta(cfg=cfg, hospital_of=HOSPITALS, train_nodes=list(HOSPITALS), initial_params=PARAMS,
                   checkpoint_dir=tmp_path)


def _reply(node: int, update: dict[str, torch.Tensor] | None, n: float = 10.0, error: str | None = None) -> Message:
    sent = Message(RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN)
    if error:
        return Message(Error(code=1, reason=error), reply_to=sent)
    arrays = params_to_record(update) if update is not None else ArrayRecord()
    return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": n, "train-loss": 0.5})}),
                   reply_to=sent)


def _upd(value: float) -> dict[str, torch.Tensor]:
    return {k: torch.full_like(v, value) for k, v in PARAMS.items()}


def test_meta_updates_are_averaged_by_example_count_then_stepped(tmp_path):
    strategy = _strategy(tmp_path, optimizer="sgd", lr=1.0)
    arrays, metrics = strategy.aggregate_train(1, [_reply(11, _upd(1.0), n=30), _reply(22, _upd(-1.0), n=10)])
    new = arrays.to_torch_state_dict()
    expected = 1.0 * 0.75 - 1.0 * 0.25
    for k in PARAMS:
        torch.testing.assert_close(new[k], PARAMS[k] - expected)
    assert metrics["hospitals"] == 2
    assert strategy.history.round(1).aggregated


def test_hostile_replies_are_dropped_and_named(tmp_path):
    strategy = _strategy(tmp_path, optimizer="sgd", lr=1.0)
    bad_shape = {"w": torch.zeros(3, 2), "b": torch.zeros(2)}
    nan = _upd(1.0)
    nan["b"][0] = float("nan")
    replies = [_reply(11, _upd(2.0)), _reply(22, bad_shape), _reply(33, nan)]
    arrays, _ = strategy.aggregate_train(1, replies)
    new = arrays.to_torch_state_dict()
    torch.testing.assert_close(new["w"], PARAMS["w"] - 2.0)  # only hospital-a counted
    missed = strategy.history.round(1).missed
    assert missed["hospital-b"]["kind"] == "dropped" and "shape (3, 2)" in missed["hospital-b"]["reason"]
    assert missed["hospital-c"]["kind"] == "dropped" and "NaN or inf" in missed["hospital-c"]["reason"]
    assert set(strategy.history.round(1).train) == {"hospital-a"}
    assert strategy.history.round(1).replied == ["hospital-a", "hospital-b", "hospital-c"]


def test_replies_with_inf_or_wrong_names_are_dropped_too(tmp_path):
    strategy = _strategy(tmp_path, optimizer="sgd", lr=1.0)
    inf = _upd(1.0)
    inf["w"][1, 1] = float("-inf")
    renamed = {"weight": torch.zeros(2, 2), "b": torch.zeros(2)}
    arrays, _ = strategy.aggregate_train(1, [_reply(11, _upd(2.0)), _reply(22, inf), _reply(33, renamed)])
    torch.testing.assert_close(arrays.to_torch_state_dict()["w"], PARAMS["w"] - 2.0)
    missed = strategy.history.round(1).missed
    assert "NaN or inf" in missed["hospital-b"]["reason"] and "names" in missed["hospital-c"]["reason"]


def test_error_replies_and_bad_counts_leave_the_model_unchanged(tmp_path):
    strategy = _strategy(tmp_path)
    arrays, metrics = strategy.aggregate_train(
        1, [_reply(11, None, error="out of memory"), _reply(22, _upd(1.0), n=0.0)])
    assert arrays is None and metrics is None
    missed = strategy.history.round(1).missed
    assert missed["hospital-a"] == {"kind": "error", "reason": "error reply (code 1): out of memory"}
    assert missed["hospital-b"]["kind"] == "dropped" and "num-examples" in missed["hospital-b"]["reason"]
    torch.testing.assert_close(strategy.optimizer.current()["w"], PARAMS["w"])
    assert not strategy.history.round(1).aggregated


def test_only_training_hospitals_are_sampled(tmp_path):
    cfg = ExperimentConfig.model_validate({"federation": {"fraction_train": 0.5, "min_train_nodes": 1}})
    strategy = FedMeta(cfg=cfg, hospital_of=HOSPITALS, train_nodes=[11, 22], initial_params=PARAMS,
                       checkpoint_dir=tmp_path)
    for r in range(1, 6):
        msgs = list(strategy.configure_train(r, params_to_record(PARAMS), ConfigRecord(), None))
        assert len(msgs) == 1 and msgs[0].metadata.dst_node_id in (11, 22)
        assert msgs[0].content["config"]["server-round"] == r


def test_server_adam_matches_torch_adam_and_restores_its_state():
    cfg = ServerConfig(optimizer="adam", lr=0.1)
    opt = ServerMetaOptimizer(PARAMS, cfg)
    ref = {k: torch.nn.Parameter(v.clone()) for k, v in PARAMS.items()}
    ref_opt = torch.optim.Adam(ref.values(), lr=0.1)
    for step in range(3):
        g = _upd(float(step + 1))
        opt.step(g)
        for k, p in ref.items():
            p.grad = g[k].clone()
        ref_opt.step()
    for k in PARAMS:
        torch.testing.assert_close(opt.current()[k], ref[k].detach())
    restored = ServerMetaOptimizer(PARAMS, cfg)
    restored.load_state_dict(opt.state_dict())
    opt.step(_upd(1.0))
    restored.step(_upd(1.0))
    for k in PARAMS:
        torch.testing.assert_close(opt.current()[k], restored.current()[k])


def test_records_reject_parameters_that_do_not_fit_the_model():
    with pytest.raises(RecordError, match="shape"):
        record_to_params(params_to_record({"w": torch.zeros(2, 3), "b": torch.zeros(2)}), PARAMS)
    with pytest.raises(RecordError, match="names"):
        record_to_params(params_to_record({"w": torch.zeros(2, 2)}), PARAMS)
    bad = {k: v.clone() for k, v in PARAMS.items()}
    bad["w"][0, 0] = float("inf")
    with pytest.raises(RecordError, match="NaN or inf"):
        record_to_params(params_to_record(bad), PARAMS)
    ok = record_to_params(params_to_record(PARAMS), PARAMS)
    torch.testing.assert_close(ok["w"], PARAMS["w"])


def test_malformed_evaluation_replies_are_dropped(tmp_path):
    strategy = _strategy(tmp_path)

    def ev(node: int, metrics: dict) -> Message:
        sent = Message(RecordDict(), dst_node_id=node, message_type=MessageType.EVALUATE)
        return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=sent)

    good = {"auc": 0.8, "accuracy": 0.7, "brier": 0.2, "ece": 0.1, "auc-unadapted": 0.75, "num-examples": 10}
    agg = strategy.aggregate_evaluate(1, [ev(11, good), ev(22, {"auc": 0.9, "num-examples": 10}),
                                          ev(33, {**good, "auc": float("nan")})])
    assert set(strategy.history.round(1).eval) == {"hospital-a"}
    assert agg["mean-auc"] == pytest.approx(0.8)
    # A validation score must come with the positive integer count of pairs it weighs by.
    val = {**good, "val-auc": 0.9, "val-accuracy": 0.8, "val-brier": 0.2, "val-ece": 0.1}
    strategy.aggregate_evaluate(2, [ev(11, {**val, "val-pairs": 40}), ev(22, {**val, "val-pairs": 0.5}),
                                    ev(33, val)])
    assert set(strategy.history.round(2).eval) == {"hospital-a"}
    assert strategy.history.round(2).eval["hospital-a"]["val_pairs"] == 40


def _private(node: int, rows: int, epsilon: float, head: str) -> Message:
    sent = Message(RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN)
    return Message(RecordDict({
        "arrays": params_to_record(_upd(0.1)),
        "metrics": MetricRecord({"num-examples": 10.0, "epsilon": epsilon, "delta": 1e-5, "noise-multiplier": 1.0}),
        "ledger": ConfigRecord({"rows": rows, "head": head, "run-id": "7", "accountant": "prv"})}), reply_to=sent)


def test_the_server_sends_back_each_ledger_head_and_drops_a_ledger_that_went_back(tmp_path):
    strategy = _strategy(tmp_path, optimizer="sgd", lr=1.0)
    strategy.aggregate_train(1, [_private(11, 1, 0.5, "a1"), _private(22, 1, 0.5, "b1")])
    assert strategy.history.ledgers["hospital-a"] == {
        "round": 1, "epsilon": 0.5, "delta": 1e-5, "sigma": 1.0, "accountant": "prv", "rows": 1, "head": "a1",
        "run_ids": ["7"]}
    sent = {m.metadata.dst_node_id: m.content["config"] for m in
            strategy.configure_train(2, params_to_record(PARAMS), ConfigRecord(), None)}
    assert (sent[11]["ledger-rows"], sent[11]["ledger-head"]) == (1, "a1")
    assert (sent[22]["ledger-rows"], sent[22]["ledger-head"]) == (1, "b1")
    assert (sent[33]["ledger-rows"], sent[33]["ledger-head"]) == (0, "")  # nothing recorded yet
    # hospital-a reports a ledger that grew; hospital-b one that is back at its first row (reset).
    strategy.aggregate_train(2, [_private(11, 2, 0.8, "a2"), _private(22, 1, 0.3, "b0")])
    missed = strategy.history.round(2).missed
    assert missed["hospital-b"]["kind"] == "dropped" and "its ledger went back" in missed["hospital-b"]["reason"]
    assert strategy.history.ledgers["hospital-b"]["head"] == "b1" and strategy.history.ledgers["hospital-a"]["rows"] == 2


def test_a_policy_or_ledger_refusal_is_a_missed_round_and_not_asked_again(tmp_path):
    from fedmeta.flower.reply_codes import LEDGER_INVALID, POLICY_REFUSED

    strategy = _strategy(tmp_path, optimizer="sgd", lr=1.0)
    sent = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.TRAIN) for n in (11, 22)]
    strategy._sent = sent
    replies = [Message(Error(code=POLICY_REFUSED, reason="hospital hospital-a requires record-level DP"),
                       reply_to=sent[0]),
               Message(Error(code=LEDGER_INVALID, reason="hospital hospital-b's ledger: rewritten"), reply_to=sent[1])]
    strategy.aggregate_train(1, replies)
    missed = strategy.history.round(1).missed
    assert {h: m["kind"] for h, m in missed.items()} == {"hospital-a": "refused", "hospital-b": "refused"}
    msgs = list(strategy.configure_train(2, params_to_record(PARAMS), ConfigRecord(), None))
    assert [m.metadata.dst_node_id for m in msgs] == [33]
