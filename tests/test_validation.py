"""The validation split (per site, stratified, never overlapping train or test, preprocessed with
train statistics only) and model selection on it: the best round, early stopping, the config checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fedmeta.config import load_config, with_settings
from fedmeta.data.hospital import RawSite, preprocess_site
from fedmeta.data.sources import load_federation
from fedmeta.errors import FedMetaError
from fedmeta.evaluation import evaluate_few_shot, score_params
from fedmeta.flower.selection import RoundSelection, StopRun
from fedmeta.history import RunHistory, validation_score
from fedmeta.models import build_model
from fedmeta.tasks import BinaryTask

CI_CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "ci.toml")


def _site(n: int = 400, prevalence: float = 0.3, seed: int = 0) -> RawSite:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)) * [1.0, 5.0, 0.1] + [0.0, 10.0, -3.0]
    x[:, 0] = np.arange(n)  # row ids, to tell the splits apart
    return RawSite("a", x, (rng.random(n) < prevalence).astype(float), "test")


def test_the_validation_split_is_stratified_disjoint_and_scaled_with_train_statistics():
    site = _site()
    plain = preprocess_site(site, 0.3, seed=0, task=BinaryTask())
    h = preprocess_site(site, 0.3, seed=0, validation_fraction=0.25, task=BinaryTask())
    n = len(site.y)
    assert len(h.y_test) == len(plain.y_test) and len(h.y_train) + len(h.y_val) == len(plain.y_train)
    assert len(h.y_val) == pytest.approx(0.25 * len(plain.y_train), abs=1)
    # Stratified: each part keeps the site's prevalence (to one example).
    for y in (h.y_train, h.y_val, h.y_test):
        assert abs(y.sum() - site.y.mean() * len(y)) <= 1
    # The first feature is the row id, standardised with one affine map: the parts partition the site.
    parts = [h.x_train[:, 0], h.x_val[:, 0], h.x_test[:, 0]]
    slope, icept = np.polyfit(np.sort(np.concatenate(parts)).astype(np.float64), np.arange(n), 1)
    ids = [set(np.rint(p * slope + icept).astype(int).tolist()) for p in parts]
    assert sum(map(len, ids)) == n and set().union(*ids) == set(range(n))
    # Standardised with the train part's statistics: train has mean 0, validation does not exactly.
    assert abs(h.x_train.mean(0)).max() < 1e-5 and abs(h.x_val.mean(0)).max() > 1e-3


def test_validation_draws_change_the_validation_split_and_never_the_test_split():
    site = _site()
    first = preprocess_site(site, 0.3, seed=0, validation_fraction=0.25, task=BinaryTask())
    again = preprocess_site(site, 0.3, seed=0, validation_fraction=0.25, validation_draw=0, task=BinaryTask())
    other = preprocess_site(site, 0.3, seed=0, validation_fraction=0.25, validation_draw=1, task=BinaryTask())
    assert np.array_equal(first.x_val, again.x_val)  # draw 0 is the split every run uses

    def raw_ids(h):  # the row id column, undone from each draw's own standardisation
        every = np.concatenate([h.x_train[:, 0], h.x_val[:, 0], h.x_test[:, 0]]).astype(np.float64)
        slope, icept = np.polyfit(np.sort(every), np.arange(len(site.y)), 1)
        return [set(np.rint(p * slope + icept).astype(int).tolist()) for p in (h.x_val[:, 0], h.x_test[:, 0])]

    (val0, test0), (val1, test1) = raw_ids(first), raw_ids(other)
    assert test0 == test1 and val0 != val1 and len(val0) == len(val1)
    assert other.y_val.sum() == first.y_val.sum()  # still stratified


def test_each_hospital_gets_its_own_validation_split_and_needs_both_classes_in_it():
    cfg = load_config(CI_CONFIG, ["data.validation_fraction=0.25"])
    fed = load_federation(cfg)
    assert all(len(h.y_val) and 0 < h.y_val.sum() < len(h.y_val) for h in fed.hospitals)
    with pytest.raises(FedMetaError, match="validation split"):
        load_federation(load_config(CI_CONFIG, ["data.validation_fraction=0.01"]))


@pytest.mark.parametrize("settings, message", [
    (["eval.keep=\"best\""], "set data.validation_fraction > 0"),
    (["eval.split=\"validation\""], "set data.validation_fraction > 0"),
    (["eval.keep=\"best\"", "data.validation_fraction=0.2", "data.held_out=[\"hospital-01\"]"],
     "would select on the unseen hospitals' own data"),
])
def test_selection_on_validation_is_refused_where_it_cannot_be_done(settings, message):
    with pytest.raises(FedMetaError, match=message):
        load_config(CI_CONFIG, settings)


def _history(val_aucs: list[float]) -> RunHistory:
    h = RunHistory(hospitals={"a": "train", "b": "train"})
    for r, v in enumerate(val_aucs, start=1):
        h.round(r).eval = {"a": {"val_auc": v - 0.1, "val_pairs": 50}, "b": {"val_auc": v + 0.1, "val_pairs": 50}}
    return h


def test_the_best_round_and_its_parameters_are_kept_and_patience_stops_the_run():
    cfg = load_config(CI_CONFIG, ["data.validation_fraction=0.2", "eval.keep=\"best\"", "eval.patience=2"])
    hist, sel = _history([0.6, 0.8, 0.7, 0.75, 0.9]), RoundSelection(cfg)
    sel.observe(hist, 1, lambda: {"w": torch.tensor(1.0)})
    sel.observe(hist, 2, lambda: {"w": torch.tensor(2.0)})
    sel.observe(hist, 3, lambda: {"w": torch.tensor(3.0)})
    with pytest.raises(StopRun, match="no better validation AUC in 2 evaluations since round 2"):
        sel.observe(hist, 4, lambda: {"w": torch.tensor(4.0)})
    kept_round, params = sel.kept({"w": torch.tensor(4.0)})
    assert kept_round == 2 and params["w"].item() == 2.0 and sel.best["auc"] == pytest.approx(0.8)
    # keep = "last": the last model, whatever validation said; a tuner's callback stops the run.
    last = RoundSelection(with_settings(cfg, {"eval.keep": "last"}, "t"), on_validation=lambda r, v: r == 3)
    last.observe(hist, 1, dict)
    assert last.kept({"w": torch.tensor(9.0)})[0] == 0
    last.observe(hist, 2, dict)
    with pytest.raises(StopRun, match="by the tuner"):
        last.observe(hist, 3, dict)


def test_a_hospital_counts_in_the_validation_score_by_its_positive_negative_pairs():
    # One negative in a split of 13: its AUC moves in steps of a whole patient; it counts as 12 pairs.
    big, tiny = {"val_auc": 0.80, "val_pairs": 20 * 23}, {"val_auc": 0.0, "val_pairs": 12}
    assert validation_score([big, tiny]) == pytest.approx((0.80 * 460 + 0.0 * 12) / 472)
    assert validation_score([big, {"val_auc": 0.9}]) is None  # a score without its pairs is no score
    # The pairs come from the scored split's labels.
    site = _site()
    h = preprocess_site(site, 0.3, seed=0, validation_fraction=0.25, task=BinaryTask())
    model = build_model(load_config(CI_CONFIG).model, h.input_shape, 0)
    params = {k: v.detach() for k, v in model.named_parameters()}
    score = score_params(model, params, h, torch.device("cpu"), BinaryTask(), "validation")
    assert score.pairs == int(h.y_val.sum()) * int((h.y_val == 0).sum())


def test_a_round_without_every_counted_hospitals_validation_score_is_no_candidate():
    hist = _history([0.6, 0.9])
    del hist.round(2).eval["b"]
    assert hist.round_validation(1) == pytest.approx(0.6) and hist.round_validation(2) is None


def test_a_run_keeps_its_best_validation_round(tmp_path):
    from fedmeta.simulation import simulate

    cfg = load_config(CI_CONFIG, ["data.validation_fraction=0.25", "eval.keep=\"best\"", "federation.rounds=4",
                                  "meta.outer_lr=3.0"])
    res = simulate(cfg, tmp_path / "run", progress=False)
    curve = {int(r): v for r, v in res["validation_score"].items()}
    best = max(curve, key=lambda r: (curve[r], -r))
    assert len(curve) == 4 and res["kept_round"] == best and res["selection"] == "best validation round"
    kept = next(r for r in res["history"]["rounds"] if r["round"] == best)
    assert {h: m["auc"] for h, m in res["final"].items()} == {h: m["auc"] for h, m in kept["eval"].items()}
    # model.pt is that round's model: adapted again here, it scores what the hospitals reported then.
    fed = load_federation(cfg)
    model = build_model(cfg.model, fed.input_shape, cfg.seed)
    params = torch.load(tmp_path / "run" / "model.pt")
    h = fed.hospitals[0]
    val = evaluate_few_shot(model, params, h, task=BinaryTask(), eval_cfg=cfg.eval, meta_cfg=cfg.meta, seed=cfg.seed,
                            device=torch.device("cpu"), splits=("validation",))["validation"]
    assert val["auc"] == pytest.approx(kept["eval"][h.name]["val_auc"], abs=1e-9)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["eval"]["keep"] == "best"
