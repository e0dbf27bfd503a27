"""Faults on the loopback deployment (``fedmeta deploy-local``'s topology: a SuperLink with TLS and
SuperNode authentication, the ServerApp executor, one SuperNode per hospital, ``flwr run``).

1. One hospital's SuperNode is SIGKILLed after round 1, stays down for at least a round and is
   started again with the same command line: the run finishes, results.json says which rounds the
   hospital missed and why, the others trained those rounds, and it trains again after it rejoined.
   (This run also covers the plain deployment: every hospital scored, every round present, every
   process stopped.)
2. The SuperLink and the ServerApp executor are SIGKILLed after round 1's checkpoint; the SuperLink
   is started again on the same database, the run is submitted again with ``resume-from``: it
   continues after the checkpointed round and ends with the model of an uninterrupted run.

Every process a test started is stopped by its PID in the fixture's finalizer, also on failure.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from flwr.app import Context, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedmeta.cli import main
from fedmeta.config import load_config
from fedmeta.deploy.local import LocalDeployment
from fedmeta.deploy.processes import ProcessManager, pid_alive
from fedmeta.flower.server import build_server_app
from fedmeta.history import MISS_KINDS

from in_process_grid import InProcessGrid

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "configs" / "deploy.toml"
HOSPITALS = ["hospital-a", "hospital-b", "hospital-c"]

pytestmark = pytest.mark.skipif(not (Path(sys.executable).parent / "flower-supernode").exists(),
                                reason="Flower's deployment executables are not installed in this env")


def _all_stopped(pm: ProcessManager) -> bool:
    return pm.alive_pids() == [] and not any(pid_alive(p.pid) for p in pm.started)


def test_a_supernode_killed_mid_run_misses_rounds_and_rejoins(tmp_path, manager):
    rounds = 5
    cfg = load_config(DEPLOY, [f"federation.rounds={rounds}", "federation.reply_timeout_s=45",
                               "federation.min_train_nodes=2", f"eval.every={rounds}"])
    lines: list[str] = []
    dep = LocalDeployment(cfg, tmp_path / "run", hospitals=HOSPITALS, announce=lines.append, manager=manager)
    try:
        dep.start()
        run_id = dep.submit()
        dep.wait(run_id, 240, until_round=1)
        dep.kill("hospital-c")
        killed_after = dep.checkpoint_round()
        dep.wait(run_id, 240, until_round=killed_after + 1)  # at least one round without it
        dep.restart("hospital-c")  # once the SuperLink lists it offline (Flower refuses it before)
        restarted_after = dep.checkpoint_round()
        status = dep.wait(run_id, 420)
    finally:
        print("\n".join(lines))
    assert status == "finished:completed", (tmp_path / "run" / "logs" / "serverapp.log").read_text()[-3000:]
    manager.stop_all()
    assert [p.name for p in manager.started] == ["superlink", "serverapp", *HOSPITALS, "hospital-c"]
    assert _all_stopped(manager)

    results = json.loads((dep.out / "results.json").read_text())
    history = results["history"]["rounds"]
    print("rounds:", json.dumps([{k: r[k] for k in ("round", "sampled", "replied", "missed", "offline", "rejoined",
                                                      "aggregated", "seconds")} for r in history], indent=1))
    assert [r["round"] for r in history] == list(range(1, rounds + 1))
    assert sorted(results["final"]) == HOSPITALS  # the last round evaluated every hospital, c included
    by_round = {r["round"]: r for r in history}
    assert set(by_round[1]["train"]) == set(HOSPITALS)
    # The rounds after the kill and up to the restart: c contributed nothing, and each says why
    # (sent work that got no reply / an error, or not connected at all); a and b trained them.
    down = range(killed_after + 1, restarted_after + 1)
    # Flower answers a message to a node that stopped its heartbeats with an error reply from the
    # SuperLink ("Node Unavailable"): it is put down to the hospital the message went to.
    assert set(results["missed_rounds"]) == {"hospital-c"}, results["missed_rounds"]
    missed = {m["round"]: m for m in results["missed_rounds"]["hospital-c"]}
    for r in down:
        rec = by_round[r]
        assert "hospital-c" not in rec["train"] and rec["aggregated"]
        assert set(rec["train"]) == {"hospital-a", "hospital-b"}
        if "hospital-c" in rec["sampled"]:
            assert missed[r]["kind"] in MISS_KINDS and missed[r]["reason"], missed
        else:
            assert "hospital-c" in rec["offline"]
    assert missed and min(missed) == killed_after + 1
    # It came back and trained in a later round, and every round after that.
    back = min(r["round"] for r in history if r["round"] > killed_after and "hospital-c" in r["train"])
    assert back > restarted_after
    assert all(set(by_round[r]["train"]) == set(HOSPITALS) for r in range(back, rounds + 1))
    # A round that found it not connected is followed by one that says it rejoined.
    offline = [r["round"] for r in history if "hospital-c" in r["offline"]]
    if offline:
        assert any("hospital-c" in by_round[r]["rejoined"] for r in range(max(offline) + 1, rounds + 1))

    run = tmp_path / "run"
    assert {p.name for p in (run / "logs").iterdir()} == {"superlink.log", "serverapp.log",
                                                          *(f"{h}.log" for h in HOSPITALS)}
    assert "--enable-supernode-auth" in manager.started[0].argv and "--ssl-certfile" in manager.started[0].argv
    assert not any("--insecure" in p.argv for p in manager.started)
    assert any(f"round {rounds}/{rounds} checkpointed" in line for line in lines)
    # Record-level DP under the nodes' default policy: each ledger stayed in its node's directory,
    # still holds the head the run recorded and matches the run's config, c's killed rounds included.
    assert set(results["history"]["ledgers"]) == set(HOSPITALS)
    for h in HOSPITALS:
        assert main(["audit", str(run / "nodes" / h / "ledger.sqlite"), "--run", str(dep.out),
                     "--out", str(tmp_path / f"audit-{h}")]) == 0


def _uninterrupted(cfg, dep: LocalDeployment, out: Path) -> dict[str, torch.Tensor]:
    """The same config, seed and node configs, run by the ServerApp over an in-process grid."""
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    run_config = {"config-json": cfg.to_json(), "out-dir": str(out)}
    configs = [{**s.node_config, "ledger": str(out.parent / f"{s.hospital}.sqlite")} for s in dep.specs]
    app = build_server_app(progress=False, expected_nodes=len(configs))
    app(InProcessGrid(configs, run_config),
        Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config))
    return torch.load(out / "model.pt")


def test_superlink_and_serverapp_killed_then_resumed_end_with_the_uninterrupted_model(tmp_path, manager):
    rounds, hospitals = 2, HOSPITALS[:2]  # kept small: each message starts a ClientApp process
    # Non-private, which the nodes' own policy allows: a deployed node's DP noise comes from OS entropy,
    # and this test compares the resumed model with an uninterrupted one bit for bit.
    cfg = load_config(DEPLOY, [f"federation.rounds={rounds}", f"eval.every={rounds}", "server.optimizer='adam'",
                               "server.lr=0.1", "privacy.mode='none'"])
    lines: list[str] = []
    dep = LocalDeployment(cfg, tmp_path / "run", hospitals=hospitals, announce=lines.append, manager=manager,
                          node_policy={"privacy-mode": "none"})
    try:
        dep.start()
        first = dep.submit()
        dep.wait(first, 240, until_round=1)
        dep.kill("superlink")
        dep.kill("serverapp")
        k = dep.checkpoint_round()
        dep.restart("superlink")  # same command line: same port, same database file
        dep.restart("serverapp")
        second = dep.submit(resume_from=dep.out)
        status = dep.wait(second, 300)
        first_status = dep.control.run_status(first)["status"]
    finally:
        print("\n".join(lines))
    print(f"killed after round {k}; the killed run {first} is now {first_status!r}")
    assert status == "finished:completed", (tmp_path / "run" / "logs" / "serverapp.log").read_text()[-3000:]
    # The SuperNodes were never restarted: they reconnected to the restarted SuperLink by themselves.
    assert [p.name for p in manager.started] == ["superlink", "serverapp", *hospitals, "superlink", "serverapp"]
    manager.stop_all()
    assert _all_stopped(manager)

    results = json.loads((dep.out / "results.json").read_text())
    assert 1 <= k < rounds and results["resumed_from_round"] == k
    assert [r["round"] for r in results["history"]["rounds"]] == list(range(1, rounds + 1))
    assert all(set(r["train"]) == set(hospitals) for r in results["history"]["rounds"])
    assert results["rounds_completed"] == rounds and not results.get("stopped_early")

    reference = _uninterrupted(cfg, dep, tmp_path / "reference" / "out")
    model = torch.load(dep.out / "model.pt")
    assert all(torch.equal(model[name], reference[name]) for name in reference)  # bit for bit
    whole = json.loads((tmp_path / "reference" / "out" / "results.json").read_text())
    assert results["final"] == whole["final"]
