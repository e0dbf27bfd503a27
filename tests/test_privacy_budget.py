"""Budgets enforced by each hospital in a real Flower simulation: a hospital stops at the round
its cap would be exceeded, the others go on, the run stops cleanly when too few remain, and no
ledger ever exceeds its cap."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from fedmeta.cli import main
from fedmeta.config import load_config
from fedmeta.data.sources import load_federation
from fedmeta.privacy.accounting import epsilon_of
from fedmeta.privacy.ledger import PrivacyLedger
from fedmeta.privacy.plan import plan_privacy

CI = str(Path(__file__).resolve().parents[1] / "configs" / "ci.toml")
BASE = ['privacy.mode="record"', "privacy.noise_multiplier=1.0", "federation.rounds=4", 'privacy.accountant="rdp"']


def _caps() -> dict[str, float]:
    """hospital-01 may train 1 round, every other hospital 2 rounds."""
    cfg = load_config(CI, BASE)
    caps = {}
    for h in load_federation(cfg).hospitals:
        plan = plan_privacy(cfg, hospital=h.name, n_train=h.n_train)
        eps = [epsilon_of(plan.round_history() * r, delta=plan.delta, accountant="rdp") for r in (1, 2, 3)]
        allowed = 1 if h.name == "hospital-01" else 2
        caps[h.name] = (eps[allowed - 1] + eps[allowed]) / 2
    return caps


@pytest.fixture(scope="module")
def capped_run(tmp_path_factory) -> tuple[Path, dict[str, float]]:
    caps = _caps()
    out = tmp_path_factory.mktemp("dp") / "run"
    table = "{" + ", ".join(f'"{h}" = {{max_epsilon = {c}}}' for h, c in caps.items()) + "}"
    code = main(["simulate", CI, *sum([["--set", s] for s in BASE], []),
                 "--set", f"privacy.hospitals={table}", "--out", str(out), "--quiet"])
    assert code == 0
    return out, caps


def test_hospitals_stop_at_their_cap_and_the_run_ends_cleanly(capped_run):
    out, caps = capped_run
    res = json.loads((out / "results.json").read_text())
    rounds = {r["round"]: r for r in res["history"]["rounds"]}
    assert set(rounds[1]["train"]) == set(caps)
    assert "hospital-01" not in rounds[2]["train"] and rounds[2]["missed"]["hospital-01"]["kind"] == "declined"
    assert "declines to train" in rounds[2]["missed"]["hospital-01"]["reason"]
    assert set(rounds[2]["train"]) == set(caps) - {"hospital-01"}
    assert not rounds[3]["train"]  # everyone else declines in round 3 ...
    assert "stopped before round 4" in res["stopped_early"]  # ... and the run stops cleanly
    assert res["rounds_completed"] == 2
    for hospital, cap in caps.items():
        rows = PrivacyLedger(out / "ledgers" / f"{hospital}.sqlite").rows()
        assert len(rows) == (1 if hospital == "hospital-01" else 2)
        assert all(r.epsilon <= cap for r in rows)
        # Each recorded epsilon is the accountant's value for the history up to that row.
        for i, r in enumerate(rows):
            assert r.epsilon == pytest.approx(
                epsilon_of([x.as_mechanism for x in rows[: i + 1]], delta=r.delta, accountant=r.accountant))
        # Every train reply reported the spend the ledger holds, and sent no training loss.
        for rnd in rounds.values():
            if hospital in rnd["train"]:
                assert "train-loss" not in rnd["train"][hospital]
                assert rnd["train"][hospital]["epsilon"] == pytest.approx(rows[rnd["round"] - 1].epsilon)


def test_audit_recomputes_every_ledger_and_reports_remaining_budget(capped_run, tmp_path, capsys):
    out, caps = capped_run
    ledgers = sorted(str(p) for p in (out / "ledgers").glob("*.sqlite"))
    assert main(["audit", *ledgers, "--out", str(tmp_path / "audit")]) == 0
    text = capsys.readouterr().out
    assert text.count("; ok") == len(caps) and "MISMATCH" not in text
    report = json.loads((tmp_path / "audit" / "audit.json").read_text())
    for r in report:
        assert r["max_epsilon"] == pytest.approx(caps[r["hospital"]])
        assert r["remaining"] == pytest.approx(caps[r["hospital"]] - r["epsilon"]) and r["remaining"] >= 0
    assert (tmp_path / "audit" / "audit.png").stat().st_size > 0


@pytest.mark.parametrize("tamper", ["UPDATE spend SET epsilon = epsilon * 0.5 WHERE id = 2",
                                    "UPDATE spend SET sigma = sigma * 3 WHERE id = 1"])
def test_audit_flags_a_tampered_ledger(capped_run, tmp_path, capsys, tamper):
    out, _ = capped_run
    ledger = tmp_path / "hospital-02.sqlite"
    shutil.copy(out / "ledgers" / "hospital-02.sqlite", ledger)
    for suffix in ("-wal", "-shm"):
        src = out / "ledgers" / f"hospital-02.sqlite{suffix}"
        if src.exists():
            shutil.copy(src, tmp_path / f"hospital-02.sqlite{suffix}")
    db = sqlite3.connect(ledger)  # a tamperer goes around the append-only triggers
    db.executescript(f"DROP TRIGGER spend_no_update; {tamper};")
    db.close()
    assert main(["audit", str(ledger), "--out", str(tmp_path / "audit")]) == 1
    assert "MISMATCH" in capsys.readouterr().out
