"""FedMeta's rounds when hospitals fail: who missed which round and why, rejoining under a new node
id, too few hospitals, and resuming from a checkpoint. Hospitals here are small functions behind a
stand-in grid, so any failure can be staged in any round (the real engine is in test_faults_simulation)."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import torch
from flwr.app import ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedmeta.checkpoint import load_checkpoint
from fedmeta.config import ExperimentConfig
from fedmeta.errors import FedMetaError
from fedmeta.flower.records import params_to_record
from fedmeta.flower.membership import Shape
from fedmeta.flower.server import discover_hospitals
from fedmeta.flower.reply_codes import BUDGET_EXHAUSTED
from fedmeta.flower.strategy import FederationStopped, FedMeta
from fedmeta.outputs import missed_rounds

PARAMS = {"w": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "b": torch.tensor([0.5, -0.5])}


@pytest.fixture(autouse=True)
def _task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


class Hospital:
    """Answers like fedmeta's ClientApp; ``faults[round]`` is "silent", "error", "nan" or "declined"."""

    def __init__(self, name: str, faults: dict[int, str] | None = None, role: str = "train",
                 input_shape: tuple[int, ...] = (2,), task: str = "binary", keeps: tuple[str, ...] = ()):
        self.name, self.faults, self.role, self.keeps = name, faults or {}, role, keeps
        self.input_shape, self.task = input_shape, task

    def __call__(self, msg: Message) -> Message | None:
        kind = msg.metadata.message_type
        if kind == MessageType.QUERY:
            return Message(RecordDict({
                "identity": ConfigRecord({"hospital": self.name, "role": self.role, "device": "cpu", "task": self.task}),
                "sizes": MetricRecord({"input-shape": list(self.input_shape), "n-outputs": 1, "num-examples": 10})}), reply_to=msg)
        if kind == MessageType.EVALUATE:
            return Message(RecordDict({"metrics": MetricRecord(
                {"auc": 0.7, "accuracy": 0.6, "brier": 0.2, "ece": 0.1, "auc-unadapted": 0.6,
                 "num-examples": 5})}), reply_to=msg)
        fault = self.faults.get(int(msg.content["config"]["server-round"]))
        if fault == "silent":
            return None
        if fault == "error":
            return Message(Error(code=0, reason="ClientApp crashed"), reply_to=msg)
        if fault == "declined":
            return Message(Error(code=BUDGET_EXHAUSTED, reason=f"{self.name}: privacy cap reached"), reply_to=msg)
        theta = msg.content["arrays"].to_torch_state_dict()
        # A deterministic meta-update that depends on the model sent and on the hospital.
        bias = 0.1 * (ord(self.name[-1]) - ord("a") + 1)
        update = {k: 0.5 * v + bias for k, v in theta.items() if k not in self.keeps}
        if fault == "nan":
            update["b"][0] = float("nan")
        return Message(RecordDict({"arrays": params_to_record(update),
                                   "metrics": MetricRecord({"num-examples": 10 + len(self.name), "train-loss": 0.5})}),
                       reply_to=msg)


class Grid:
    """Delivers each message to the hospital behind its node; a ``None`` answer is never delivered."""

    def __init__(self, nodes: dict[int, Hospital]):
        self.nodes = dict(nodes)
        self.sent: list[tuple[int, str]] = []

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)

    def send_and_receive(self, messages, timeout=None):
        self.sent += [(m.metadata.dst_node_id, m.metadata.message_type) for m in messages]
        replies = [self.nodes[m.metadata.dst_node_id](m) for m in messages if m.metadata.dst_node_id in self.nodes]
        return [r for r in replies if r is not None]


def _cfg(**federation) -> ExperimentConfig:
    return ExperimentConfig.model_validate({"federation": {"rounds": 4, "reply_timeout_s": 0.5, **federation},
                                            "server": {"optimizer": "adam", "lr": 0.1}})


def _run(tmp_path, cfg: ExperimentConfig, grid: Grid, on_round_end: Callable[[int], None] | None = None,
         restore_from=None, kept: frozenset[str] = frozenset()) -> FedMeta:
    hospital_of = {n: h.name for n, h in grid.nodes.items()}
    strategy = FedMeta(cfg=cfg, hospital_of=hospital_of, train_nodes=list(hospital_of), initial_params=PARAMS,
                       checkpoint_dir=tmp_path, on_round_end=on_round_end, shape=Shape((2,), 1, "binary"),
                       kept_at_hospitals=kept)
    if restore_from is not None:
        strategy.restore(load_checkpoint(restore_from, cfg))
    try:
        strategy.start(grid=grid, initial_arrays=params_to_record(PARAMS), num_rounds=cfg.federation.rounds,
                       timeout=cfg.federation.reply_timeout_s, train_config=ConfigRecord())
    except FederationStopped:
        pass
    return strategy


def test_rounds_go_on_without_failed_hospitals_and_say_who_missed_which_round(tmp_path):
    grid = Grid({11: Hospital("hospital-a"), 22: Hospital("hospital-b", {2: "silent", 3: "declined"}),
                 33: Hospital("hospital-c", {2: "error", 3: "silent"}), 44: Hospital("hospital-d", {3: "nan"})})
    strategy = _run(tmp_path, _cfg(min_train_nodes=2), grid)
    r1, r2, r3, r4 = strategy.history.rounds
    everyone = ["hospital-a", "hospital-b", "hospital-c", "hospital-d"]
    assert r1.sampled == r1.replied == everyone and r1.aggregated and not r1.missed
    # Round 2: two usable updates, as many as min_train_nodes: the round counts.
    assert r2.replied == ["hospital-a", "hospital-c", "hospital-d"] and set(r2.train) == {"hospital-a", "hospital-d"}
    assert r2.aggregated
    assert r2.missed == {"hospital-b": {"kind": "no-reply", "reason": "no reply within 0.5s"},
                         "hospital-c": {"kind": "error", "reason": "error reply (code 0): ClientApp crashed"}}
    # Round 3: one usable update: the model is left as it was.
    assert not r3.aggregated and set(r3.train) == {"hospital-a"}
    assert {h: m["kind"] for h, m in r3.missed.items()} == {
        "hospital-b": "declined", "hospital-c": "no-reply", "hospital-d": "dropped"}
    assert "NaN or inf" in r3.missed["hospital-d"]["reason"]
    # Round 4: the hospital at its privacy cap is not asked again; the others are back.
    assert r4.sampled == ["hospital-a", "hospital-c", "hospital-d"] and r4.aggregated
    assert missed_rounds(strategy.history)["hospital-c"] == [
        {"round": 2, "kind": "error", "reason": "error reply (code 0): ClientApp crashed"},
        {"round": 3, "kind": "no-reply", "reason": "no reply within 0.5s"}]
    assert torch.load(tmp_path / "checkpoint.pt")["round"] == 4
    json.dumps(strategy.history.to_dict())  # what results.json holds


def test_what_hospitals_keep_never_moves_and_a_reply_that_carries_it_is_dropped(tmp_path):
    """FedRep's head: the server steps the parameters hospitals send (with Adam: no moment, no decay
    for the others) and drops a reply that holds a kept parameter."""
    grid = Grid({11: Hospital("hospital-a", keeps=("w",)), 22: Hospital("hospital-b", keeps=("w",)),
                 33: Hospital("hospital-c")})
    strategy = _run(tmp_path, _cfg(rounds=2), grid, kept=frozenset({"w"}))
    final = strategy.optimizer.current()
    assert torch.equal(final["w"], PARAMS["w"]) and not torch.equal(final["b"], PARAMS["b"])
    for r in strategy.history.rounds:
        assert r.aggregated and set(r.train) == {"hospital-a", "hospital-b"}
        assert r.missed["hospital-c"]["kind"] == "dropped" and "do not match" in r.missed["hospital-c"]["reason"]


def test_a_restarted_node_rejoins_under_its_new_id_and_only_new_nodes_are_queried(tmp_path):
    b = Hospital("hospital-b")
    grid = Grid({11: Hospital("hospital-a"), 22: b, 33: Hospital("hospital-c")})

    def churn(server_round: int) -> None:
        if server_round == 1:  # hospital-b's SuperNode dies
            del grid.nodes[22]
        if server_round == 2:  # ... restarts under a new id; a stranger and an impostor connect too
            grid.nodes.update({99: b, 77: Hospital("hospital-x"), 55: Hospital("hospital-a", role="held-out")})

    strategy = _run(tmp_path, _cfg(rounds=3), grid, on_round_end=churn)
    r1, r2, r3 = strategy.history.rounds
    assert r2.offline == ["hospital-b"] and r2.sampled == ["hospital-a", "hospital-c"] and not r2.missed
    assert r3.rejoined == ["hospital-b"] and r3.sampled == ["hospital-a", "hospital-b", "hospital-c"]
    assert set(r3.train) == {"hospital-a", "hospital-b", "hospital-c"} and set(r3.eval) == set(r3.train)
    assert strategy.members.node_of == {"hospital-a": 11, "hospital-b": 99, "hospital-c": 33}
    queried = sorted(n for n, kind in grid.sent if kind == MessageType.QUERY)
    assert queried == [55, 77, 99]  # once each, only the nodes it had not seen
    assert (99, MessageType.TRAIN) in grid.sent and (77, MessageType.TRAIN) not in grid.sent


def test_too_few_connected_hospitals_stop_the_run_with_the_reason(tmp_path):
    grid = Grid({11: Hospital("hospital-a"), 22: Hospital("hospital-b")})
    strategy = _run(tmp_path, _cfg(min_train_nodes=2), grid, on_round_end=lambda r: grid.nodes.pop(22, None))
    assert [r.round for r in strategy.history.rounds] == [1]
    assert strategy.stop_reason == ("stopped before round 2: 1 hospital(s) can train, fewer than "
                                    "federation.min_train_nodes=2 (privacy cap reached: none; "
                                    "not connected: hospital-b)")
    assert torch.load(tmp_path / "checkpoint.pt")["round"] == 1


def test_resuming_from_a_checkpoint_gives_the_uninterrupted_run(tmp_path):
    def grid() -> Grid:
        return Grid({11: Hospital("hospital-a"), 22: Hospital("hospital-b", {2: "silent"}),
                     33: Hospital("hospital-c", {3: "declined"})})

    cfg = _cfg(fraction_train=0.7)
    whole = _run(tmp_path / "whole", cfg, grid())

    def crash(server_round: int) -> None:
        if server_round == 2:
            raise KeyboardInterrupt  # the server dies after round 2's checkpoint

    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "cut", cfg, grid(), on_round_end=crash)
    # The restarted server gets new node ids; hospitals are matched by name.
    renumbered = grid()
    renumbered.nodes = {n + 100: h for n, h in renumbered.nodes.items()}
    resumed = _run(tmp_path / "cut", cfg, renumbered, restore_from=tmp_path / "cut")
    for k in PARAMS:
        assert torch.equal(resumed.optimizer.current()[k], whole.optimizer.current()[k])
    for a, b in zip(resumed.history.rounds, whole.history.rounds, strict=True):
        assert (a.round, a.sampled, a.train, a.missed, a.eval) == (b.round, b.sampled, b.train, b.missed, b.eval)
    assert resumed.declined == {"hospital-c"}
    assert {n for n, kind in renumbered.sent if kind == MessageType.TRAIN} <= {111, 122, 133}


def test_a_hospital_down_when_the_server_restarts_rejoins_later(tmp_path):
    cfg = _cfg(rounds=3)
    c = Hospital("hospital-c")

    def crash(server_round: int) -> None:
        if server_round == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, cfg, Grid({11: Hospital("hospital-a"), 22: Hospital("hospital-b"), 33: c}), on_round_end=crash)
    grid = Grid({41: Hospital("hospital-a"), 42: Hospital("hospital-b")})  # hospital-c is still down
    strategy = _run(tmp_path, cfg, grid, restore_from=tmp_path,
                    on_round_end=lambda r: grid.nodes.update({43: c}) if r == 2 else None)
    r1, r2, r3 = strategy.history.rounds
    assert r2.offline == ["hospital-c"] and r2.sampled == ["hospital-a", "hospital-b"]
    assert r3.rejoined == ["hospital-c"] and set(r3.train) == {"hospital-a", "hospital-b", "hospital-c"}
    assert strategy.history.hospitals == {"hospital-a": "train", "hospital-b": "train", "hospital-c": "train"}


def test_a_checkpoint_of_another_config_is_refused_in_one_line(tmp_path):
    grid = Grid({11: Hospital("hospital-a")})
    _run(tmp_path, _cfg(rounds=1), grid)
    load_checkpoint(tmp_path, _cfg(rounds=1, reply_timeout_s=9.0, client_cpus=2))  # how, not what: fine
    with pytest.raises(FedMetaError) as err:
        load_checkpoint(tmp_path, _cfg(rounds=1, fraction_train=0.5))
    assert str(err.value) == (f"{tmp_path}/checkpoint.pt: the config differs from the checkpointed run's in "
                              "federation.fraction_train (checkpoint 1.0, now 0.5); resume with the same config")
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(FedMetaError, match="not a readable fedmeta checkpoint"):
        load_checkpoint(tmp_path, _cfg(rounds=1))
    with pytest.raises(FedMetaError, match="no checkpoint to resume from"):
        load_checkpoint(tmp_path / "nowhere", _cfg(rounds=1))


class SuperLinkGrid(Grid):
    """Sets message ids as Flower's grid does, and answers a message to a node listed in ``gone``
    as the SuperLink does for a node that stopped its heartbeats: an error reply from the
    SuperLink's own node id (1) that names the message it answers."""

    def __init__(self, nodes: dict[int, Hospital]):
        super().__init__(nodes)
        self.gone: set[int] = set()

    def send_and_receive(self, messages, timeout=None):
        for m in messages:
            m.metadata.__dict__["_message_id"] = m.object_id
        live = [m for m in messages if m.metadata.dst_node_id not in self.gone]
        replies = list(super().send_and_receive(live, timeout))
        for m in messages:
            if m.metadata.dst_node_id in self.gone:
                reply = Message(Error(code=5, reason="Error: Node Unavailable"), reply_to=m)
                reply.metadata.__dict__["_src_node_id"] = 1
                replies.append(reply)
        return replies


def test_an_unavailable_node_reply_from_the_superlink_counts_for_its_hospital_and_it_rejoins_on_the_same_id(
        tmp_path):
    c = Hospital("hospital-c")
    grid = SuperLinkGrid({11: Hospital("hospital-a"), 22: Hospital("hospital-b"), 33: c})

    def churn(server_round: int) -> None:
        if server_round == 1:  # hospital-c's SuperNode is killed; the SuperLink still lists it
            grid.gone.add(33)
        if server_round == 2:  # ... its heartbeats have expired: it is no longer listed
            del grid.nodes[33]
        if server_round == 3:  # restarted with the same key: SuperNode authentication gives the same id
            grid.gone.discard(33)
            grid.nodes[33] = c

    strategy = _run(tmp_path, _cfg(rounds=4), grid, on_round_end=churn)
    r1, r2, r3, r4 = strategy.history.rounds
    assert r2.missed == {"hospital-c": {"kind": "error", "reason": "error reply (code 5): Error: Node Unavailable"}}
    assert r2.replied == ["hospital-a", "hospital-b", "hospital-c"] and set(r2.train) == {"hospital-a", "hospital-b"}
    assert "hospital-c" in r2.eval_missed and set(r2.eval) == {"hospital-a", "hospital-b"}
    assert r3.offline == ["hospital-c"] and not r3.missed
    assert r4.rejoined == ["hospital-c"] and set(r4.train) == {"hospital-a", "hospital-b", "hospital-c"}
    assert set(missed_rounds(strategy.history)) == {"hospital-c"}


def test_hospitals_that_disagree_on_their_data_are_refused_before_any_round():
    grid = Grid({11: Hospital("hospital-a"), 22: Hospital("hospital-b", input_shape=(1, 28, 28))})
    with pytest.raises(FedMetaError, match=r"^federation: hospitals disagree on their data: hospital-a has inputs of "
                       r"shape \(2,\), 1 output\(s\), a binary task; hospital-b has inputs of shape \(1, 28, 28\)"):
        discover_hospitals(grid, expected=2, timeout_s=1.0)
    grid = Grid({11: Hospital("hospital-a", task="survival"), 22: Hospital("hospital-b", task="survival")})
    with pytest.raises(FedMetaError, match="disagree") as err:
        discover_hospitals(Grid({11: Hospital("hospital-a"), 22: Hospital("hospital-b", task="survival")}), 2, 1.0)
    assert len(discover_hospitals(grid, expected=2, timeout_s=1.0)) == 2  # they agree; the run's task is checked next
    assert "a survival task" in str(err.value)


def test_a_rejoining_node_whose_data_changed_shape_is_ignored(tmp_path):
    grid = Grid({11: Hospital("hospital-a"), 22: Hospital("hospital-b")})

    def churn(server_round: int) -> None:
        if server_round == 1:  # hospital-b's node is replaced by one whose examples are images
            grid.nodes[33] = Hospital("hospital-b", input_shape=(1, 28, 28))
            del grid.nodes[22]

    strategy = _run(tmp_path, _cfg(rounds=2), grid, on_round_end=churn)
    assert strategy.members.node_of["hospital-b"] == 22 and strategy.history.rounds[1].offline == ["hospital-b"]
