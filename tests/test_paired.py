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
