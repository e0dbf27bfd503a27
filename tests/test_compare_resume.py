"""An interrupted comparison continues with ``compare --resume``: finished units are kept, the
rest runs, and the table is the one an uninterrupted comparison writes."""

from __future__ import annotations

import json
from pathlib import Path

from fedmeta import compare
from fedmeta.cli import main
from fedmeta.output_dir import CLAIM

ROOT = Path(__file__).resolve().parents[1]
CI = str(ROOT / "configs" / "ci.toml")
ARGS = ["compare", CI, "--algorithms", "local", "pooled", "--seeds", "0", "1", "--quiet"]


def _whole(tmp_path: Path) -> Path:
    whole = tmp_path / "whole"
    assert main([*ARGS, "--out", str(whole)]) == 0
    return whole


def _table(out: Path) -> dict:
    result = json.loads((out / "comparison.json").read_text())
    return result["algorithms"]


def test_an_interrupted_comparison_resumes_where_it_stopped(tmp_path, monkeypatch, capsys):
    whole = tmp_path / "whole"
    assert main([*ARGS, "--out", str(whole)]) == 0

    calls: list[int] = []
    pooled = compare.BASELINES["pooled"]

    def interrupted(fed, cfg):
        calls.append(cfg.seed)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the session stops during pooled, seed 1
        return pooled(fed, cfg)

    monkeypatch.setitem(compare.BASELINES, "pooled", interrupted)
    out = tmp_path / "cut"
    assert main([*ARGS, "--out", str(out)]) == 130
    units = sorted(p.relative_to(out / "units").as_posix() for p in (out / "units").rglob("*.json"))
    assert units == ["local/seed0.json", "local/seed1.json", "pooled/seed0.json"]
    kept = {u: (out / "units" / u).read_bytes() for u in units}

    # Written by a version whose config had no meta.episode_chunk yet: it takes its default, still the same plan.
    plan = json.loads((out / "plan.json").read_text())
    del plan["config"]["meta"]["episode_chunk"]
    (out / "plan.json").write_text(json.dumps(plan))
    monkeypatch.setitem(compare.BASELINES, "pooled", pooled)
    calls.clear()
    assert main([*ARGS, "--resume", str(out)]) == 0
    err = capsys.readouterr().err
    assert err.count("finished before, kept") == 3 and "[4/4] pooled, seed 1\n" in err
    assert all((out / "units" / u).read_bytes() == data for u, data in kept.items())
    assert _table(out) == _table(whole)
    assert not (out / CLAIM).exists()


def test_a_resume_with_other_arguments_or_without_a_comparison_is_refused(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main([*ARGS[:-3], "0", "--quiet", "--out", str(out)]) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert main([*ARGS[:-3], "1", "--quiet", "--resume", str(out)]) == 2  # seed 1, not 0
    assert main([*ARGS[:-3], "0", "--quiet", "--set", "local.lr=0.5", "--resume", str(out)]) == 2
    assert main([*ARGS, "--resume", str(tmp_path / "none")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()[-3:]
    assert lines == [
        f"fedmeta: error: --resume {out}: that comparison ran with another --seeds; resume with the same config, "
        "--set and --tune, and its --algorithms and --seeds or more",
        f"fedmeta: error: --resume {out}: that comparison ran with another config (or --set); resume with the same "
        "config, --set and --tune, and its --algorithms and --seeds or more",
        f"fedmeta: error: --resume {tmp_path / 'none'}: no plan.json there; nothing to resume",
    ]
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_a_resume_with_more_algorithms_keeps_the_finished_ones_and_runs_the_new(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", CI, "--algorithms", "local", "--seeds", "0", "1", "--quiet", "--out", str(out)]) == 0
    kept = {p: p.read_bytes() for p in (out / "units").rglob("*.json")}
    assert main([*ARGS, "--resume", str(out)]) == 0
    err = capsys.readouterr().err
    assert err.count("finished before, kept") == 2 and "[3/4] pooled, seed 0\n" in err
    assert all(p.read_bytes() == data for p, data in kept.items())
    assert json.loads((out / "plan.json").read_text())["algorithms"] == ["local", "pooled"]
    assert set(_table(out)) == {"local", "pooled"} and "paired" in _table(out)["pooled"]
    # The same ones in another order run nothing again (the order given now is the table's).
    assert main(["compare", CI, "--algorithms", "pooled", "local", "--seeds", "0", "1", "--quiet",
                 "--resume", str(out)]) == 0
    assert capsys.readouterr().err.count("finished before, kept") == 4
    assert json.loads((out / "plan.json").read_text())["algorithms"] == ["pooled", "local"]
    # Fewer than before is another comparison.
    assert main(["compare", CI, "--algorithms", "pooled", "--seeds", "0", "1", "--quiet", "--resume", str(out)]) == 2


def test_a_resume_with_more_seeds_keeps_the_finished_ones_and_runs_the_new(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main([*ARGS[:-3], "0", "--quiet", "--out", str(out)]) == 0
    kept = {p: p.read_bytes() for p in (out / "units").rglob("*.json")}
    assert main([*ARGS, "--resume", str(out)]) == 0
    err = capsys.readouterr().err
    assert err.count("finished before, kept") == 2 and "[2/4] local, seed 1\n" in err
    assert all(p.read_bytes() == data for p, data in kept.items())
    assert json.loads((out / "plan.json").read_text())["seeds"] == [0, 1]
    assert _table(out) == _table(_whole(tmp_path))
