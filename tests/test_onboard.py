"""``fedmeta onboard`` and ``fedmeta report``: the numbers of report.json recomputed by hand on a
small case, one-line errors for bad files, and the pages opened in a real headless browser."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import brier_score_loss, roc_auc_score

from fedmeta.cli import main
from fedmeta.config import ModelConfig
from fedmeta.meta.algorithms import ALGORITHMS, InnerLoop, get_algorithm
from fedmeta.meta.functional import params_of, per_episode_copies
from fedmeta.models import build_model
from fedmeta.report.bootstrap import stratified_bootstrap
from fedmeta.tasks.calibration import ece, fit_temperature, scaled_probabilities
from fedmeta.tasks import BinaryTask
from fedmeta.tasks.binary import auc
from in_process_grid import run_server_app

ROOT = Path(__file__).resolve().parents[1]
CI = str(ROOT / "configs" / "ci.toml")
NEW = "hospital-05"  # held out: it never trains, and onboards afterwards


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A record-level DP MAML run of four hospitals (ledgers in the run directory) and the fifth
    hospital's data as the file it brings."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0  # as a ServerApp process has it
    root = tmp_path_factory.mktemp("onboard")
    run = root / "run"
    nodes = [{"partition-id": i, "num-partitions": 5, "privacy-mode": "record", "max-epsilon": 50.0,
              "ledger": str(run / "ledgers" / f"hospital-0{i + 1}.sqlite")} for i in range(5)]
    run_server_app({"config-file": CI, "out-dir": str(run),
                    "overrides": f"federation.rounds=2 data.held_out=['{NEW}'] privacy.mode='record' "
                                 "privacy.noise_multiplier=1.0"}, first_id=10, nodes=nodes)
    assert main(["export-site", CI, "--hospital", NEW, "--out", str(root / "new.csv")]) == 0
    return root


def _onboard(finished: Path, out: Path, *extra: str) -> dict:
    assert main(["onboard", str(finished / "run"), "--data", str(finished / "new.csv"), "--out", str(out),
                 "--bootstrap", "200", *extra]) == 0
    return json.loads((out / "report.json").read_text())


def _by_hand(finished: Path, rep: dict) -> dict[str, np.ndarray]:
    """The global and the adapted model's probabilities on the evaluated cases, written out plainly:
    the file read with numpy, standardised by its own means and deviations, ``inner_steps`` steps of
    gradient descent on the support cases' mean binary cross-entropy."""
    table = np.genfromtxt(finished / "new.csv", delimiter=",", names=True)
    names = [n for n in table.dtype.names if n != "label"]
    x = np.stack([table[n] for n in names], axis=1)
    y = table["label"]
    x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
    support = np.array(rep["support_rows"])
    evaluated = np.setdiff1d(np.arange(len(y)), support)
    model = build_model(ModelConfig(hidden=[16]), (len(names),), 0, 1)
    model.load_state_dict(torch.load(finished / "run" / "model.pt"))
    xs, ys = torch.as_tensor(x[support]), torch.as_tensor(y[support], dtype=torch.float32)
    with torch.no_grad():
        before = torch.sigmoid(model(torch.as_tensor(x[evaluated]))).numpy()
    for _ in range(rep["settings"]["inner_steps"]):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(xs), ys)
        grads = torch.autograd.grad(loss, list(model.parameters()))
        with torch.no_grad():
            for p, g in zip(model.parameters(), grads):
                p -= rep["settings"]["inner_lr"] * g
    with torch.no_grad():
        after = torch.sigmoid(model(torch.as_tensor(x[evaluated]))).numpy()
    return {"y": y[evaluated], "global": before.astype(np.float64), "adapted": after.astype(np.float64)}


def _ece_by_hand(y: np.ndarray, p: np.ndarray) -> float:
    total = 0.0
    for b in range(10):
        low, high = b / 10, (b + 1) / 10
        inside = [(pi, yi) for pi, yi in zip(p, y) if (low < pi <= high) or (b == 0 and pi == 0.0)]
        if inside:
            conf = sum(pi for pi, _ in inside) / len(inside)
            freq = sum(yi for _, yi in inside) / len(inside)
            total += len(inside) * abs(freq - conf)
    return total / len(p)


def test_onboarding_numbers_are_those_recomputed_by_hand(finished, tmp_path):
    rep = _onboard(finished, tmp_path / "ob")
    shots = rep["settings"]["shots"]
    y_all = np.genfromtxt(finished / "new.csv", delimiter=",", names=True)["label"]
    assert rep["hospital"]["cases"] == len(y_all) and rep["hospital"]["adapted_on"] == 2 * shots
    assert sorted(y_all[rep["support_rows"]].tolist()) == [0.0] * shots + [1.0] * shots
    hand = _by_hand(finished, rep)
    assert rep["hospital"]["evaluated"] == len(hand["y"])
    for name in ("global", "adapted"):
        m, p = rep["models"][name], hand[name]
        assert m["auc"]["value"] == pytest.approx(roc_auc_score(hand["y"], p), abs=1e-6)
        assert m["brier"]["value"] == pytest.approx(brier_score_loss(hand["y"], p), abs=1e-6)
        assert m["ece"]["value"] == pytest.approx(_ece_by_hand(hand["y"], p), abs=1e-6)
        assert m["sensitivity"]["value"] == pytest.approx(np.mean(p[hand["y"] == 1] >= 0.5))
        assert m["specificity"]["value"] == pytest.approx(np.mean(p[hand["y"] == 0] < 0.5))
        assert m["auc"]["low"] <= m["auc"]["value"] <= m["auc"]["high"]
    assert not np.allclose(hand["global"], hand["adapted"])  # the adaptation did something
    paired = rep["differences"]["adapted − global"]
    assert paired["value"] == pytest.approx(roc_auc_score(hand["y"], hand["adapted"])
                                            - roc_auc_score(hand["y"], hand["global"]), abs=1e-6)
    assert paired["low"] <= paired["value"] <= paired["high"]
    assert "local only" in rep["models"] and rep["data_left_site"] is False
    # The privacy section is the ledgers' own account, as `fedmeta audit` recomputes it.
    trained = {h["hospital"]: h for h in rep["privacy"]["hospitals"]}
    assert sorted(trained) == ["hospital-01", "hospital-02", "hospital-03", "hospital-04"]
    assert all(h["ok"] and h["rounds"] == 2 and 0 < h["epsilon"] < h["max_epsilon"] == 50.0 for h in trained.values())
    # The features attributed are the run's, for both models.
    assert [f["feature"] for f in rep["attribution"]["features"]] == [f"x{i}" for i in range(8)]


def test_bootstrap_interval_agrees_with_delong():
    rng = np.random.default_rng(1)
    y = (rng.random(400) < 0.4).astype(int)
    s = rng.normal(size=400) + y
    got = stratified_bootstrap(lambda r: {"auc": auc(y[r], s[r])}, y, resamples=2000, seed=0)["auc"]
    pos, neg = s[y == 1], s[y == 0]
    v10 = np.array([np.mean((p > neg) + 0.5 * (p == neg)) for p in pos])
    v01 = np.array([np.mean((pos > q) + 0.5 * (pos == q)) for q in neg])
    se = np.sqrt(v10.var(ddof=1) / len(pos) + v01.var(ddof=1) / len(neg))  # DeLong et al. 1988
    assert got["value"] == pytest.approx(v10.mean())
    assert got["low"] == pytest.approx(v10.mean() - 1.96 * se, abs=0.01)
    assert got["high"] == pytest.approx(v10.mean() + 1.96 * se, abs=0.01)


def test_temperature_scaling_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=20_000) * 4
    y = (rng.random(20_000) < scaled_probabilities(logits, 2.5)).astype(int)
    assert fit_temperature(logits, y) == pytest.approx(2.5, rel=0.05)
    assert ece(y, scaled_probabilities(logits, 2.5)) < 0.02 < ece(y, scaled_probabilities(logits, 1.0))


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_the_adapted_model_onboarding_scores_is_the_one_evaluation_scores(name):
    """``adapted_forward`` (what onboarding scores and attributes) gives ``draw_outputs``' outputs."""
    task, algorithm = BinaryTask(), get_algorithm(name)
    from fedmeta.config import MetaConfig

    meta = MetaConfig()
    model = build_model(ModelConfig(hidden=[8]), (6,), 0, algorithm.model_outputs(task, meta))
    state = algorithm.initial_state(params_of(model), meta)
    g = torch.Generator().manual_seed(0)
    xs, ys, x = torch.randn(10, 6, generator=g), torch.tensor([0.0, 1.0] * 5), torch.randn(7, 6, generator=g)
    inner = InnerLoop(2, 0.1, task)
    mine = algorithm.adapted_forward(model, state, xs, ys, inner)(x)
    evaluated = algorithm.draw_outputs(model, per_episode_copies(state, 1), xs[None], ys[None], x, inner)[0]
    torch.testing.assert_close(mine, evaluated)


def _bad_file(finished: Path, tmp_path: Path, case: str) -> tuple[list[str], str]:
    rows = (finished / "new.csv").read_text().splitlines()
    path = tmp_path / "bad.csv"
    if case == "missing column":
        path.write_text("\n".join(",".join(r.split(",")[1:]) for r in rows) + "\n")
        return ["--data", str(path)], "bad.csv: missing column(s) x0 of the run's schema"
    if case == "too few cases":
        kept = [rows[0]] + [r for r in rows[1:] if r.endswith(",0.0")][:3] + [r for r in rows[1:] if r.endswith(",1.0")]
        path.write_text("\n".join(kept) + "\n")
        return ["--data", str(path)], "bad.csv: 3 case(s) of class 0; --shots 5 needs at least 6 of each class"
    if case == "bad label":
        path.write_text("\n".join([rows[0], rows[1].rsplit(",", 1)[0] + ",2", *rows[2:]]) + "\n")
        return ["--data", str(path)], "bad.csv: line 2, column 'label': label must be 0 or 1"
    if case == "wrong format":
        return ["--data", str(finished / "run" / "model.pt")], "a synthetic run reads .csv files, not .pt"
    if case == "model setting":
        return ["--data", str(finished / "new.csv"), "--set", "model.hidden=[4]"], \
            "--set model.hidden: onboarding changes only how the hospital adapts"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["missing column", "too few cases", "bad label", "wrong format", "model setting"])
def test_a_bad_file_or_setting_is_one_line(finished, tmp_path, capsys, case):
    args, message = _bad_file(finished, tmp_path, case)
    out = tmp_path / "ob"
    code = main(["onboard", str(finished / "run"), *args, "--out", str(out), "--bootstrap", "10"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()


def test_a_directory_that_is_not_a_finished_run_is_one_line(finished, tmp_path, capsys):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "checkpoint.pt").write_bytes(b"")
    code = main(["onboard", str(tmp_path / "half"), "--data", str(finished / "new.csv"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.endswith("not a finished fedmeta run: no results.json (the run has not finished: "
                                      "resume it first)")
    (tmp_path / "cmp").mkdir()
    (tmp_path / "cmp" / "plan.json").write_text("{}")
    assert main(["report", str(tmp_path / "cmp")]) == 2
    assert capsys.readouterr().err.strip().endswith("(a comparison: its runs are under runs/<algorithm>/seed<N>)")


def test_the_run_report_holds_the_run_and_its_ledgers(finished, tmp_path):
    assert main(["report", str(finished / "run"), "--out", str(tmp_path / "rep")]) == 0
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    results = json.loads((finished / "run" / "results.json").read_text())
    assert rep["final"] == results["final"] and rep["summary"] == results["summary"]
    assert [h["hospital"] for h in rep["privacy"]["hospitals"]] == [f"hospital-0{i}" for i in range(1, 5)]
    html = (tmp_path / "rep" / "report.html").read_text()
    assert all(h in html for h in ("Final metrics per hospital", "Privacy", "Missed rounds", NEW))


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: .ci/run installs Debian's chromium")
        pytest.skip("chromium not installed (apt-get install chromium)")
    return found


@pytest.mark.parametrize("page", ["onboard", "report"])
def test_the_pages_open_in_a_headless_browser(finished, tmp_path, page):
    from PIL import Image

    if page == "onboard":
        _onboard(finished, tmp_path / "ob", "--temperature")
        html = tmp_path / "ob" / "report.html"
    else:
        assert main(["report", str(finished / "run"), "--out", str(tmp_path / "rep")]) == 0
        html = tmp_path / "rep" / "report.html"
    text = html.read_text()
    # Self-contained: every image and link is embedded data, nothing to fetch.
    assert re.findall(r'(?:src|href)="([^"]*)"', text) and all(
        ref.startswith("data:") for ref in re.findall(r'(?:src|href)="([^"]*)"', text))
    shot = tmp_path / "shot.png"
    proc = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--window-size=1100,2400", f"--screenshot={shot}", "--enable-logging=stderr", "--v=0",
                           f"--user-data-dir={tmp_path / 'profile'}", html.as_uri()],
                          capture_output=True, text=True, timeout=120)
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    assert proc.returncode == 0 and not console, (proc.returncode, console or proc.stderr[-2000:])
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.shape == (2400, 1100) and pixels.std() > 20  # text, tables and figures, not a blank page


def test_an_unseen_imaging_site_onboards_with_saliency_maps(tmp_path, capsys):
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    images = str(ROOT / "configs" / "images.toml")
    nodes = [{"partition-id": i, "num-partitions": 6, "privacy-mode": "none"} for i in range(6)]
    run_server_app({"config-file": images, "out-dir": str(tmp_path / "run"),
                    "overrides": "federation.rounds=1 model.width=4 eval.draws=1"}, first_id=10, nodes=nodes)
    assert main(["export-site", images, "--hospital", "hospital-06", "--out", str(tmp_path / "new.npz")]) == 0
    assert main(["onboard", str(tmp_path / "run"), "--data", str(tmp_path / "new.npz"), "--out", str(tmp_path / "ob"),
                 "--bootstrap", "20"]) == 0
    rep = json.loads((tmp_path / "ob" / "report.json").read_text())
    assert rep["attribution"]["method"] == "saliency" and set(rep["models"]) == {"global", "adapted", "local only"}
    assert 'alt="saliency maps"' in (tmp_path / "ob" / "report.html").read_text()
    # Scans of another size than the run's are refused in one line.
    np.savez(tmp_path / "big.npz", images=np.zeros((20, 32, 32)), labels=np.arange(20) % 2)
    code = main(["onboard", str(tmp_path / "run"), "--data", str(tmp_path / "big.npz"), "--out", str(tmp_path / "o2")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.endswith("big.npz: examples of shape (1, 32, 32); the run's model takes (1, 16, 16)")


@pytest.mark.parametrize("source, kind", [("csv", "binary"), ("tcga-brca", "survival"), ("images", "multiclass")])
def test_a_site_file_reads_back_what_was_written(tmp_path, source, kind):
    from fedmeta.config import load_config
    from fedmeta.data.hospital import RawSite
    from fedmeta.data.site_file import SITE_FILES, read_site_file, write_site_file

    rng = np.random.default_rng(0)
    cfg = load_config(CI, [f"data.source='{source}'", f"task.kind='{kind}'"] + (["task.classes=3"] * (kind == "multiclass")))
    if kind == "survival":
        x, y = rng.normal(size=(30, 3)), np.stack([rng.uniform(1, 900, 30), np.arange(30) % 2], 1).astype(np.float32)
    elif kind == "multiclass":
        x, y = rng.uniform(0, 255, size=(30, 1, 6, 6)).astype(np.float32), np.arange(30) % 3
    else:
        x, y = rng.normal(size=(30, 3)), (np.arange(30) % 2).astype(np.float32)
    if x.ndim == 2:
        x[4, 1] = np.nan  # a missing value stays missing
    path = tmp_path / f"site{SITE_FILES[source][0][0]}"
    write_site_file(RawSite("site", x, y, "test"), ["age", "bp", "grade"], cfg, path)
    site, features = read_site_file(path, cfg)
    np.testing.assert_array_equal(site.x, x)
    np.testing.assert_array_equal(site.y, y)
    assert features == ([] if x.ndim == 4 else ["age", "bp", "grade"])


def test_a_uci_hospital_file_is_read_as_the_federation_reads_it():
    from fedmeta.config import load_config
    from fedmeta.data.site_file import read_site_file
    from fedmeta.data.sources import SOURCES

    data = ROOT.parent / "shared" / "data" / "uci-heart-disease"
    if not data.is_dir():
        pytest.skip("../shared/data/uci-heart-disease not present")
    cfg = load_config(ROOT / "configs" / "uci-heart.toml", data_dir=str(data))
    site, features = read_site_file(data / "processed.va.data", cfg)
    sites, names = SOURCES["uci-heart"](cfg)
    va = next(s for s in sites if s.name == "va")
    np.testing.assert_array_equal(site.x, va.x)
    np.testing.assert_array_equal(site.y, va.y)
    assert features == names


def test_an_unseen_region_onboards_a_survival_model(tmp_path):
    from flwr.supercore.task_identity import TaskIdentity

    tcga = ROOT.parent / "shared" / "data" / "fed_tcga_brca"
    if not tcga.is_dir():
        pytest.skip("../shared/data/fed_tcga_brca not present")
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    config = str(ROOT / "configs" / "tcga-brca.toml")
    nodes = [{"partition-id": i, "num-partitions": 6, "privacy-mode": "none"} for i in range(6)]
    run_server_app({"config-file": config, "out-dir": str(tmp_path / "run"),
                    "overrides": f"federation.rounds=1 data.dir='{tcga}' data.held_out=['europe'] "
                                 "privacy.mode='none'"}, first_id=10, nodes=nodes)
    assert main(["export-site", config, "--data-dir", str(tcga), "--hospital", "europe",
                 "--out", str(tmp_path / "europe.csv")]) == 0
    assert main(["onboard", str(tmp_path / "run"), "--data", str(tmp_path / "europe.csv"), "--out",
                 str(tmp_path / "ob"), "--bootstrap", "20", "--shots", "3"]) == 0
    rep = json.loads((tmp_path / "ob" / "report.json").read_text())
    assert set(rep["models"]["adapted"]) == {"c_index"} and rep["calibration"] == {}
    assert rep["attribution"]["method"] == "integrated gradients"
    assert "not probabilities" in (tmp_path / "ob" / "report.html").read_text()


@pytest.mark.parametrize("args, message", [
    (["--hospital", "nowhere", "--out", "{tmp}/x.csv"], "--hospital nowhere: not a hospital of this config"),
    (["--hospital", NEW, "--out", "{tmp}/x.npz"], "a synthetic hospital is written as a .csv file"),
    (["--hospital", NEW, "--out", "{tmp}/taken.csv"], "taken.csv: already exists; choose another file"),
])
def test_export_site_refuses_bad_arguments_in_one_line(tmp_path, capsys, args, message):
    (tmp_path / "taken.csv").write_text("kept\n")
    code = main(["export-site", CI, *[a.format(tmp=tmp_path) for a in args]])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert (tmp_path / "taken.csv").read_text() == "kept\n" and not (tmp_path / "x.csv").exists()
