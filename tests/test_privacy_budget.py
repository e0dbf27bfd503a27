"""Budgets enforced by each hospital in a real Flower simulation: a hospital stops at the round
its cap would be exceeded, the others go on, the run stops cleanly when too few remain, and no
ledger ever exceeds its cap."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fedmeta.cli import main
from fedmeta.config import load_config
from fedmeta.data.sources import load_federation
from fedmeta.privacy.accounting import epsilon_of
from fedmeta.privacy.ledger import PrivacyLedger
from fedmeta.privacy.plan import plan_privacy

from conftest import built_once
from ledger_tamper import tamper

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
    table = "{" + ", ".join(f'"{h}" = {{max_epsilon = {c}}}' for h, c in caps.items()) + "}"

    def build(root: Path) -> None:
        code = main(["simulate", CI, *sum([["--set", s] for s in BASE], []),
                     "--set", f"privacy.hospitals={table}", "--out", str(root / "run"), "--quiet"])
        assert code == 0

    return built_once(tmp_path_factory, "capped-run", build) / "run", caps


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
    assert text.count("; ok") == len(caps) and "FAILED" not in text
    assert main(["audit", *ledgers, "--run", str(out), "--out", str(tmp_path / "with-run")]) == 0
    report = json.loads((tmp_path / "audit" / "audit.json").read_text())
    for r in report:
        assert r["max_epsilon"] == pytest.approx(caps[r["hospital"]])
        assert r["remaining"] == pytest.approx(caps[r["hospital"]] - r["epsilon"]) and r["remaining"] >= 0
        assert r["rounds"] == (1 if r["hospital"] == "hospital-01" else 2) and r["ok"]
    assert (tmp_path / "audit" / "audit.png").stat().st_size > 0


def _copy_ledger(out: Path, hospital: str, to: Path) -> Path:
    to.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        src = out / "ledgers" / f"{hospital}.sqlite{suffix}"
        if src.exists():
            shutil.copy(src, to / src.name)
    return to / f"{hospital}.sqlite"


# Edits that leave a ledger agreeing with itself (recomputed epsilons and chain): only the run catches them.
CONSISTENT_REWRITES = {
    "sigma x 3": "UPDATE spend SET sigma = sigma * 3;",
    "delta -> 0.01": "UPDATE spend SET delta = 0.01;",
    "q / 10": "UPDATE spend SET sample_rate = sample_rate / 10;",
    "last row deleted": "DELETE FROM spend WHERE id = (SELECT MAX(id) FROM spend);",
    "first row deleted, ids renumbered": "DELETE FROM spend WHERE id = 1; UPDATE spend SET id = id - 1;",
    "cap raised": "UPDATE spend SET max_epsilon = 1000;",
}


@pytest.mark.parametrize("edit", list(CONSISTENT_REWRITES))
def test_audit_against_the_run_catches_a_consistent_rewrite(capped_run, tmp_path, capsys, edit):
    out, _ = capped_run
    ledger = _copy_ledger(out, "hospital-02", tmp_path / "ledgers")
    assert main(["audit", str(ledger), "--run", str(out), "--out", str(tmp_path / "before")]) == 0
    tamper(ledger, CONSISTENT_REWRITES[edit], recompute_epsilon=True, rechain=True)
    assert main(["audit", str(ledger), "--out", str(tmp_path / "alone")]) == 0  # it agrees with itself ...
    assert main(["audit", str(ledger), "--run", str(out), "--out", str(tmp_path / "audit")]) == 1  # ... not the run
    assert "FAILED" in capsys.readouterr().out


# Edits the ledger alone betrays.
BROKEN = {
    "epsilon halved": ("UPDATE spend SET epsilon = epsilon * 0.5 WHERE id = 2;", {}, "recomputed"),
    "sigma x 3, nothing recomputed": ("UPDATE spend SET sigma = sigma * 3 WHERE id = 1;", {}, "recorded epsilon"),
    "a middle row deleted": ("DELETE FROM spend WHERE id = 1;", {}, "not contiguous"),
    "triggers dropped": ("", {"restore_triggers": False}, "trigger spend_no_update was dropped"),
    "over its cap": ("UPDATE spend SET max_epsilon = epsilon / 2;", {"rechain": True}, "over the cap"),
}


@pytest.mark.parametrize("edit", list(BROKEN))
def test_audit_fails_a_ledger_that_betrays_itself(capped_run, tmp_path, capsys, edit):
    out, _ = capped_run
    ledger = _copy_ledger(out, "hospital-02", tmp_path / "ledgers")
    sql, how, fragment = BROKEN[edit]
    tamper(ledger, sql, **how)
    assert main(["audit", str(ledger), "--out", str(tmp_path / "audit")]) == 1
    assert fragment in capsys.readouterr().out


MALFORMED = {
    "sigma <= 0": ("UPDATE spend SET sigma = -1 WHERE id = 1;", "sigma must be > 0"),
    "delta = 0": ("UPDATE spend SET delta = 0 WHERE id = 1;", "delta must be in (0, 1)"),
    "q > 1": ("UPDATE spend SET sample_rate = 2 WHERE id = 1;", "sample_rate must be in (0, 1]"),
    "unknown accountant": ("UPDATE spend SET accountant = 'gdp2' WHERE id = 1;", "unknown accountant"),
    "text in a number column": ("UPDATE spend SET sigma = 'lots' WHERE id = 1;", "sigma is 'lots', not a number"),
    "text in an integer column": ("UPDATE spend SET steps = 'x' WHERE id = 1;", "steps is 'x', not an integer"),
    "sigma that overflows": ("UPDATE spend SET sigma = 1e300 WHERE id = 1;", "its epsilon cannot be recomputed"),
    "sigma that underflows": ("UPDATE spend SET sigma = 1e-300 WHERE id = 1;", "its epsilon cannot be recomputed"),
}


@pytest.mark.parametrize("edit", list(MALFORMED))
def test_a_malformed_row_is_one_line_and_its_own_exit_code(capped_run, tmp_path, capsys, edit):
    out, _ = capped_run
    ledger = _copy_ledger(out, "hospital-02", tmp_path / "ledgers")
    sql, fragment = MALFORMED[edit]
    tamper(ledger, sql)
    assert main(["audit", str(ledger), "--out", str(tmp_path / "audit")]) == 3
    text = capsys.readouterr()
    assert "Traceback" not in text.out + text.err and "MALFORMED" in text.out
    assert f"row 1: {fragment}" in text.out


@pytest.mark.parametrize("edit", ["rows", "anchor", "n"])
def test_a_run_record_that_is_not_one_is_refused_in_one_line(capped_run, tmp_path, capsys, edit):
    out, _ = capped_run
    res = json.loads((out / "results.json").read_text())
    if edit == "rows":
        res["history"]["ledgers"]["hospital-02"]["rows"] = "two"
    elif edit == "anchor":
        res["history"]["ledgers"]["hospital-02"] = ["rows", 2]
    else:
        res["history"]["rounds"][0]["train"]["hospital-02"]["num-examples"] = 0
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(res))
    ledger = out / "ledgers" / "hospital-02.sqlite"
    assert main(["audit", str(ledger), "--run", str(run), "--out", str(tmp_path / "audit")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"fedmeta: error: --run {run}: not a readable fedmeta run") and "\n" not in err
