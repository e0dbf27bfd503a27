"""Paired differences over seeds against scipy's paired t-test, and the table built from them."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from fedmeta.compare import comparison_markdown
from fedmeta.paired import paired_difference, paired_table


def test_the_interval_is_scipys_paired_t_interval():
    a = {"0": 0.81, "1": 0.90, "2": 0.85, "3": 0.78}
    b = {"0": 0.70, "1": 0.83, "2": 0.80, "3": 0.79, "9": 0.5}  # seed 9 has no pair: left out
    d = paired_difference(a, b)
    seeds = ["0", "1", "2", "3"]
    ci = stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds]).confidence_interval(0.95)
    assert d["seeds"] == 4 and d["mean"] == pytest.approx(sum(a[s] - b[s] for s in seeds) / 4)
    assert (d["low"], d["high"]) == (pytest.approx(ci.low), pytest.approx(ci.high))


def test_one_seed_has_no_interval():
    d = paired_difference({"0": 0.8}, {"0": 0.7})
    assert d["mean"] == pytest.approx(0.1) and math.isnan(d["low"]) and math.isnan(d["high"])


def _row(mean: dict[str, float]) -> dict:
    return {"seeds": {s: {"mean_auc": v, "worst_auc": v - 0.1} for s, v in mean.items()}}


def test_every_algorithm_is_paired_with_fedavg_and_the_table_shows_it():
    algos = {"local": _row({"0": 0.7, "1": 0.72}), "fedavg": _row({"0": 0.8, "1": 0.83}),
             "fedmeta-maml": _row({"0": 0.82, "1": 0.84})}
    paired = paired_table(algos)
    assert set(paired) == {"local", "fedmeta-maml"} and all(p["reference"] == "fedavg" for p in paired.values())
    assert paired["fedmeta-maml"]["mean_auc"]["mean"] == pytest.approx(0.015)
    for name, p in paired.items():
        algos[name]["paired"] = p
        for k in ("mean_auc", "worst_auc", "mean_accuracy"):
            algos[name][k] = {"mean": 0.8, "std": 0.01}
    algos["fedavg"].update({k: {"mean": 0.8, "std": 0.01} for k in ("mean_auc", "worst_auc", "mean_accuracy")})
    for row in algos.values():
        for s in row["seeds"].values():
            s.update(hospitals={}, mean_accuracy=0.7)
    text = comparison_markdown({"mode": "personalisation", "seeds": [0, 1], "metrics": ["auc", "accuracy"],
                                "algorithms": algos})
    assert "Difference to fedavg, paired by seed" in text and "| fedmeta-maml | +0.015 [" in text


def test_without_fedavg_the_first_algorithm_is_the_reference():
    paired = paired_table({"local": _row({"0": 0.7}), "fedmeta-fomaml": _row({"0": 0.75})})
    assert paired["fedmeta-fomaml"]["reference"] == "local"


def _tuned(row: dict, validation: float) -> dict:
    best = {"validation_score": validation, "settings": {"meta.inner_lr": 0.1}}
    return {**row, "tuning": {"seed0": {"best": best}, "seed1": {"best": best}}}


def test_meta_learners_are_paired_with_the_personalised_baseline_validation_ranks_first():
    from fedmeta.compare import _pair_with_best_personalised, family

    assert [family(n) for n in ("pooled", "fedavg", "fedmeta-metasgd", "fedrep", "perfedavg")] == [
        "baseline", "federated", "meta-learning", "personalised-fl", "personalised-fl"]
    # ditto is better on test, fedrep on validation: the choice must not read the test scores
    algos = {"fedavg": _tuned(_row({"0": 0.80, "1": 0.81}), 0.90),
             "ditto": _tuned(_row({"0": 0.85, "1": 0.86}), 0.88),
             "fedrep": _tuned(_row({"0": 0.78, "1": 0.79}), 0.89),
             "fedmeta-anil": _tuned(_row({"0": 0.80, "1": 0.83}), 0.87)}
    best = _pair_with_best_personalised(algos, ("mean_auc", "worst_auc"))
    assert best["name"] == "fedrep" and best["validation_score"] == pytest.approx(0.89)
    assert set(name for name, row in algos.items() if "paired_to_best_personalised" in row) == {"fedmeta-anil"}
    assert algos["fedmeta-anil"]["paired_to_best_personalised"]["mean_auc"]["mean"] == pytest.approx(0.03)
    for row in algos.values():
        row.update({k: {"mean": 0.8, "std": 0.01} for k in ("mean_auc", "worst_auc")})
        for s in row["seeds"].values():
            s["hospitals"] = {}
    text = comparison_markdown({"mode": "unseen hospitals", "seeds": [0, 1], "metrics": ["auc"], "algorithms": algos,
                                "tuning_trials": 2, "best_personalised": best})
    assert "Difference to fedrep, the personalised-FL baseline that validation ranks first" in text
    assert "| fedmeta-anil | +0.030 [" in text


def test_without_tuning_no_personalised_baseline_is_chosen():
    from fedmeta.compare import _pair_with_best_personalised

    algos = {"ditto": _row({"0": 0.85}), "fedmeta-anil": _row({"0": 0.8})}
    assert _pair_with_best_personalised(algos, ("mean_auc",)) is None and "paired_to_best_personalised" not in algos["ditto"]
