"""The careful plain script fedmeta's local baseline is held against: per hospital, scikit-learn
logistic regression with C chosen on the hospital's validation split, fitted on its train split and
scored on its test split, on exactly the splits fedmeta builds (same config, same seeds).

    .venv/bin/python benchmarks/plain_reference.py configs/uci-heart.toml \
        --data-dir ../shared/data/uci-heart-disease --seeds 0 1 2 3 4

Prints per seed and per hospital test AUC, and the mean over the seeds given: the number to put next
to `local` in a `compare` table of the same seeds.
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from fedmeta.config import load_config, with_settings
from fedmeta.data.sources import load_federation

C_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


def _fit(x: np.ndarray, y: np.ndarray, c: float) -> LogisticRegression:
    return LogisticRegression(C=c, max_iter=5000).fit(x, y)


def site_auc(h) -> tuple[float, float]:  # noqa: ANN001 - a fedmeta Hospital
    """(test AUC, chosen C) of the validation-tuned logistic regression."""
    val = {c: roc_auc_score(h.y_val, _fit(h.x_train, h.y_train, c).predict_proba(h.x_val)[:, 1]) for c in C_GRID}
    c = max(C_GRID, key=lambda k: (val[k], -k))  # ties: the stronger regularisation
    return float(roc_auc_score(h.y_test, _fit(h.x_train, h.y_train, c).predict_proba(h.x_test)[:, 1])), c


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config")
    p.add_argument("--data-dir")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    args = p.parse_args()
    base = load_config(args.config, ['privacy.mode="none"'], args.data_dir)
    if base.data.validation_fraction == 0:
        base = with_settings(base, {"data.validation_fraction": 0.2}, "plain_reference")
    table = []
    for seed in args.seeds:
        fed = load_federation(with_settings(base, {"seed": seed}, "plain_reference"))
        row = {h.name: site_auc(h)[0] for h in fed.hospitals}
        table.append(row)
        print(f"seed {seed}: mean {np.mean(list(row.values())):.3f}  "
              + "  ".join(f"{k} {v:.3f}" for k, v in row.items()))
    names = list(table[0])
    means = [np.mean(list(r.values())) for r in table]
    print(f"mean over seeds {', '.join(map(str, args.seeds))}: {np.mean(means):.3f} ± {np.std(means):.3f}; "
          f"worst site {np.mean([min(r.values()) for r in table]):.3f}; per hospital "
          + ", ".join(f"{n} {np.mean([r[n] for r in table]):.3f}" for n in names))


if __name__ == "__main__":
    main()
