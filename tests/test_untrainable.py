"""A run that starts but never changes the model (every update non-finite) ends with one error line
and a non-zero exit, and writes no untrained model."""

from __future__ import annotations

from pathlib import Path

from fedmeta.cli import main

CI = str(Path(__file__).resolve().parents[1] / "configs" / "ci.toml")


def test_a_diverging_run_fails_instead_of_writing_an_untrained_model(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["simulate", CI, "--set", "meta.inner_lr=1e30", "--set", "meta.outer_lr=1e30",
                 "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("fedmeta: error: no round changed the model: nothing was trained")
    assert "NaN or inf" in err[-1] and not any("Traceback" in line for line in err)
    assert not out.exists() and list(tmp_path.iterdir()) == []
