"""The hospital's policy against a curious or malicious coordinator: a deployed ClientApp (config from
the run config, which whoever submits the run controls) is sent real Flower train messages asking for
less privacy than its node config allows. It refuses each with POLICY_REFUSED, sends no update and
writes no ledger row; what it accepts is trained with the stricter of the two."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedmeta.config import load_config
from fedmeta.errors import FedMetaError
from fedmeta.flower.client import build_client_app
from fedmeta.flower.records import params_to_record
from fedmeta.flower.reply_codes import POLICY_REFUSED
from fedmeta.meta.functional import params_of
from fedmeta.models import build_model
from fedmeta.privacy.ledger import PrivacyLedger

ROOT = Path(__file__).resolve().parents[1]
CI = ROOT / "configs" / "ci.toml"
DP = 'privacy.mode="record" privacy.noise_multiplier=1.0 privacy.accountant="rdp"'


@pytest.fixture(autouse=True)
def _task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


@pytest.fixture(scope="module")
def app():
    return build_client_app()  # as `clients/client_app.py`: the config comes from the run config


def _train(app, tmp_path: Path, overrides: str, **node: object) -> Message:
    params = params_of(build_model(load_config(CI).model, (8,), 0))
    msg = Message(RecordDict({"arrays": params_to_record(params), "config": ConfigRecord({"server-round": 1})}),
                  dst_node_id=7, message_type=MessageType.TRAIN)
    node_config = {"hospital": "hospital-01", "partition-id": 0, "ledger": str(tmp_path / "ledger.sqlite"), **node}
    # The coordinator also points out-dir at a directory of its own: it must not move the ledger.
    run_config = {"config-file": str(CI), "overrides": overrides, "out-dir": str(tmp_path / "coordinator")}
    return app(msg, Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config=run_config))


def _rows(tmp_path: Path) -> int:
    path = tmp_path / "ledger.sqlite"
    return len(PrivacyLedger.read_only(path)) if path.exists() else 0


ATTACKS = {
    "no DP (node without a policy)": ('privacy.mode="none"', {}, "requires record-level DP"),
    "no DP (node requires record)": ('privacy.mode="none"', {"privacy-mode": "record", "max-epsilon": 1.0},
                                     "the run asks for none"),
    "hospital-level instead of record-level": ('privacy.mode="client" privacy.noise_multiplier=1.0', {},
                                               "asks for client-level"),
    "delta above 1/n": (f"{DP} privacy.delta=0.99", {}, "privacy.delta: 0.99 is above 1/n"),
    "delta above the node's bound": (f"{DP} privacy.delta=1e-4", {"delta": 1e-6}, "accepts delta <= 1e-06"),
    "delta above the default bound": (f"{DP} privacy.delta=1e-3", {}, "accepts delta <= "),
    "less noise than the node's floor": ('privacy.mode="record" privacy.noise_multiplier=0.5', {"min-noise-multiplier": 1.0},
                                         "accepts noise multiplier >= 1"),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_a_run_asking_for_less_than_the_node_policy_is_refused(app, tmp_path, attack):
    overrides, node, fragment = ATTACKS[attack]
    reply = _train(app, tmp_path, overrides, **node)
    assert reply.has_error() and reply.error.code == POLICY_REFUSED, reply
    assert fragment in reply.error.reason and "hospital-01" in reply.error.reason
    assert _rows(tmp_path) == 0 and not (tmp_path / "coordinator").exists()


def test_what_the_node_accepts_it_trains_with_the_stricter_settings(app, tmp_path):
    reply = _train(app, tmp_path, f"{DP} privacy.max_epsilon=1000", **{"max-epsilon": 50.0, "accountant": "prv"})
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    rows = PrivacyLedger.read_only(tmp_path / "ledger.sqlite")
    assert len(rows) == 1 and rows[0].max_epsilon == 50.0 and rows[0].accountant == "prv" and rows[0].sigma == 1.0
    assert reply.content["metrics"]["epsilon"] == rows[0].epsilon
    # What leaves: the noised update, scalars that do not depend on the records (no loss, no training
    # time: a record drawn again would lengthen it) and where the spend was recorded.
    assert set(reply.content.keys()) == {"arrays", "metrics", "ledger"}
    assert set(reply.content["metrics"]) == {"num-examples", "episodes", "on-gpu", "epsilon", "delta",
                                             "noise-multiplier"}
    ledger = reply.content["ledger"]
    assert set(ledger) == {"rows", "head", "run-id", "accountant"}
    assert ledger["rows"] == 1 and ledger["head"] == rows[0].row_hash
    assert not (tmp_path / "coordinator").exists()  # the ledger stayed where the node put it


def test_the_node_cap_is_kept_whatever_the_run_says(app, tmp_path):
    reply = _train(app, tmp_path, f"{DP} privacy.max_epsilon=1000", **{"max-epsilon": 0.01})
    assert reply.has_error() and "declines to train" in reply.error.reason and "cap 0.01" in reply.error.reason
    assert _rows(tmp_path) == 0


def test_a_node_that_allows_non_private_runs_trains_them(app, tmp_path):
    reply = _train(app, tmp_path, 'privacy.mode="none"', **{"privacy-mode": "none"})
    assert not reply.has_error() and "train-loss" in reply.content["metrics"] and _rows(tmp_path) == 0


def test_a_malformed_node_policy_is_refused_in_one_line(app, tmp_path):
    reply = _train(app, tmp_path, DP, **{"max-epsilon": "lots"})
    assert reply.has_error() and "node config max-epsilon: expected a number" in reply.error.reason


def test_the_coordinator_cannot_replay_a_deployed_node_noise_from_the_seed(app, tmp_path):
    """Same run config (same seed), same model, same round, two fresh ledgers: a deployed node's
    updates differ (sampling and noise from OS entropy); a simulated hospital's are reproducible."""
    updates = []
    for i in (1, 2):
        reply = _train(app, tmp_path / f"node-{i}", DP)
        updates.append(reply.content["arrays"].to_torch_state_dict())
    assert any(not torch.equal(updates[0][k], updates[1][k]) for k in updates[0])
    cfg = load_config(CI, DP.split())
    simulated = build_client_app(cfg, ledger_dir=tmp_path / "sim")
    params = params_of(build_model(cfg.model, (8,), 0))
    same = []
    for i in (1, 2):
        msg = Message(RecordDict({"arrays": params_to_record(params), "config": ConfigRecord({"server-round": 1})}),
                      dst_node_id=7, message_type=MessageType.TRAIN)
        ctx = Context(run_id=i, node_id=7, node_config={"partition-id": 0, "num-partitions": 5}, state=RecordDict(),
                      run_config={})
        same.append(simulated(msg, ctx).content["arrays"].to_torch_state_dict())
    assert all(torch.equal(same[0][k], same[1][k]) for k in same[0])


def test_a_deployed_node_sends_no_detail_of_its_data_in_an_error(app, tmp_path):
    """The run config chooses the label column: a wrong one must not carry a patient's value back."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "hospital-01.csv").write_text("age,label\n" + "".join(f"{53 + i},{i % 2}\n" for i in range(40)))
    msg = Message(RecordDict({"arrays": params_to_record({}), "config": ConfigRecord({"server-round": 1})}),
                  dst_node_id=7, message_type=MessageType.QUERY)
    run_config = {"config-file": str(CI), "overrides": 'data.source="csv" data.label="age"',
                  "data-dir": str(data)}
    node_config = {"hospital": "hospital-01", "data-dir": str(data)}
    with pytest.raises(FedMetaError) as err:  # Flower turns it into an error reply with this text
        app(msg, Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config=run_config))
    assert "53" not in str(err.value) and "age" not in str(err.value) and "not sent" in str(err.value)
    # The coordinator's data.dir is never read by a deployed node: only its node config's.
    node_config = {"hospital": "hospital-01"}
    with pytest.raises(FedMetaError) as err:
        app(msg, Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(),
                         run_config={**run_config, "overrides": 'data.source="csv"'}))
    assert str(data) not in str(err.value)


def test_a_deployed_node_refuses_audit_canaries(app, tmp_path):
    reply = _train(app, tmp_path, f"{DP} audit.canaries=10 audit.hospital='hospital-01'")
    assert reply.has_error() and reply.error.code == POLICY_REFUSED and "canaries" in reply.error.reason
