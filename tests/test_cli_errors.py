"""Bad input: one line naming the file/field and what is wrong, exit code 2, no traceback, and no
output directory left behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedmeta.cli import main

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = str(ROOT / "configs" / "default.toml")


def _csv_dir(tmp_path: Path, edit=None, n: int = 60) -> Path:
    d = tmp_path / "sites"
    d.mkdir()
    rng = np.random.default_rng(0)
    for name in ("alpha", "beta", "gamma"):
        rows = [["age", "bp", "label"]]
        for i in range(n):
            rows.append([f"{rng.normal(50, 10):.1f}", f"{rng.normal(120, 15):.1f}", str(int(i % 2))])
        if edit:
            rows = edit(name, rows)
        (d / f"{name}.csv").write_text("\n".join(",".join(r) for r in rows) + "\n")
    return d


def _run(capsys, tmp_path: Path, *args: str) -> tuple[int, str]:
    out = tmp_path / "out"
    code = main(["simulate", *args, "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert not out.exists(), "a failed run left its output directory behind"
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name], "a hidden partial directory was left"
    return code, err


def _csv_config(tmp_path: Path) -> str:
    cfg = tmp_path / "csv.toml"
    cfg.write_text('[data]\nsource = "csv"\nlabel = "label"\n[meta]\nshots = 3\nquery = 5\n[eval]\nshots = 3\n')
    return str(cfg)


CASES = {
    "unknown algorithm": (["--set", "meta.algorithm=meta-sgd"], "meta.algorithm: unknown algorithm 'meta-sgd'"),
    "unknown source": (["--set", "data.source=mimic"], "data.source: unknown data source 'mimic'"),
    "negative lr": (["--set", "meta.inner_lr=-0.1"], "meta.inner_lr: Input should be greater than 0"),
    "zero rounds": (["--set", "federation.rounds=0"], "federation.rounds: Input should be greater than or equal to 1"),
    "unknown key": (["--set", "meta.inner_lrr=0.1"], "meta.inner_lrr: unknown key"),
    "bad override": (["--set", "meta.inner_lr"], "is not of the form key=value"),
    "unknown held-out": (["--set", "data.held_out=['nowhere']"], "data.held_out: unknown hospital 'nowhere'"),
    "too many shots": (["--set", "meta.shots=60"], "too few examples for the configured shots"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_config_values(case, capsys, tmp_path):
    extra, expected = CASES[case]
    code, err = _run(capsys, tmp_path, DEFAULT, *extra)
    assert code == 2
    assert len(err.splitlines()) == 1 and expected in err and "Traceback" not in err
    assert "default.toml" in err or "hospital" in err or "--set" in err


def test_missing_config_file(capsys, tmp_path):
    code, err = _run(capsys, tmp_path, str(tmp_path / "nope.toml"))
    assert code == 2 and "nope.toml: config file not found" in err


def test_unreadable_config_file(capsys, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"\xff\xfe rounds = \x00")
    code, err = _run(capsys, tmp_path, str(bad))
    assert code == 2 and "bad.toml: cannot read config" in err


def test_missing_data_dir(capsys, tmp_path):
    code, err = _run(capsys, tmp_path, _csv_config(tmp_path), "--data-dir", str(tmp_path / "absent"))
    assert code == 2 and "absent: data directory not found" in err


def _edit_csv(fn):
    return lambda name, rows: fn(rows) if name == "beta" else rows


CSV_CASES = {
    "missing label column": (_edit_csv(lambda r: [[c for c in row[:2]] for row in r]), "beta.csv: label column 'label' not found"),
    "non-numeric feature": (_edit_csv(lambda r: r[:3] + [["old", "120", "1"]] + r[4:]), "beta.csv: line 4, column 'age': non-numeric value 'old'"),
    "inconsistent columns": (_edit_csv(lambda r: [["age", "pressure", "label"]] + r[1:]), "beta.csv: columns differ from alpha.csv"),
    "nan feature": (_edit_csv(lambda r: r[:2] + [["nan", "120", "0"]] + r[3:]), "beta.csv: line 3, column 'age': non-finite value 'nan'"),
    "inf feature": (_edit_csv(lambda r: r[:2] + [["50", "inf", "0"]] + r[3:]), "column 'bp': non-finite value 'inf'"),
    "single-class hospital": (_edit_csv(lambda r: [r[0]] + [row[:2] + ["0"] for row in r[1:]]), "hospital 'beta' has a single class"),
    "too few examples": (_edit_csv(lambda r: r[:9]), "hospital 'beta': too few examples for the configured shots"),
    "non-binary label": (_edit_csv(lambda r: r[:2] + [["50", "120", "2"]] + r[3:]), "label must be 0 or 1"),
}


@pytest.mark.parametrize("case", list(CSV_CASES))
def test_bad_csv_data(case, capsys, tmp_path):
    edit, expected = CSV_CASES[case]
    data = _csv_dir(tmp_path, edit)
    code, err = _run(capsys, tmp_path, _csv_config(tmp_path), "--data-dir", str(data))
    assert code == 2
    assert len(err.splitlines()) == 1 and expected in err and "Traceback" not in err


def test_compare_rejects_unknown_algorithm(capsys, tmp_path):
    out = tmp_path / "cmp"
    code = main(["compare", DEFAULT, "--algorithms", "local", "fedproxx", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--algorithms: unknown fedproxx" in err and not out.exists()


def test_existing_output_directory_is_not_overwritten(capsys, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code = main(["simulate", DEFAULT, "--out", str(out)])
    assert code == 2 and "already exists" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"


def test_console_script_exit_code_and_single_line(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-m", "fedmeta.cli", "simulate", DEFAULT, "--set", "server.lr=-1", "--out", str(tmp_path / "o")],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "server.lr: Input should be greater than 0" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("extra,expected", [
    (["--canaries", "5000"], "audit.canaries: 5000 gradient canaries need as many model parameters"),
    (["--canaries", "50", "--hospital", "nowhere"], "audit.hospital: 'nowhere' is not a training hospital"),
    (["--canaries", "3"], "audit.canaries: an empirical audit needs at least 10 canaries"),
])
def test_empirical_audit_bad_input(extra, expected, capsys, tmp_path):
    out = tmp_path / "audit"
    code = main(["audit", "--empirical", str(ROOT / "configs" / "ci.toml"), *extra, "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and expected in err and len(err.splitlines()) == 1 and not out.exists()


def test_ledger_audit_bad_input(capsys, tmp_path):
    assert main(["audit", str(tmp_path / "missing.sqlite"), "--out", str(tmp_path / "a")]) == 2
    assert "missing.sqlite: ledger not found" in capsys.readouterr().err
    junk = tmp_path / "junk.sqlite"
    junk.write_text("not a database")
    assert main(["audit", str(junk), "--out", str(tmp_path / "a")]) == 2
    assert "junk.sqlite: not a privacy ledger" in capsys.readouterr().err
    assert main(["audit", "--out", str(tmp_path / "a")]) == 2
    assert not (tmp_path / "a").exists()
