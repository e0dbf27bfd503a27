"""The careful plain script fedmeta's `local` and `pooled` baselines are held against, on exactly
the splits fedmeta builds (same config, same seeds): scikit-learn logistic regression with C chosen
on the validation splits, then refitted on train + validation (as `fedmeta tune` refits its chosen
config) and scored on each hospital's test split.

- local: one model per hospital, C chosen on that hospital's validation split;
- pooled: one model on the union of the hospitals' train splits, C chosen on the within-hospital
  validation AUC (each hospital weighted by its positive-negative pairs, as `fedmeta tune`);
- with `--leave-one-out`, also pooled zero-shot: for each hospital, one model on the other
  hospitals alone (C chosen on their validation splits), scored on the left-out hospital's test split
  (the reference's "leave-one-out zero-shot" row, on fedmeta's splits).

    .venv/bin/python benchmarks/plain_reference.py configs/uci-heart.toml \
        --data-dir ../shared/data/uci-heart-disease --seeds 0 1 2

Prints per seed and per hospital test AUC, and the means over the seeds given: the numbers to put
next to `local` and `pooled` in a `compare` table of the same seeds.
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


def _pairs(y: np.ndarray) -> int:
    return int(y.sum()) * int(len(y) - y.sum())


def _choose(scores: dict[float, float]) -> float:
    return max(C_GRID, key=lambda c: (scores[c], -c))  # ties: the stronger regularisation


def local_aucs(fed) -> dict[str, float]:  # noqa: ANN001 - a fedmeta Federation
    out = {}
    for h in fed.hospitals:
        c = _choose({c: roc_auc_score(h.y_val, _fit(h.x_train, h.y_train, c).predict_proba(h.x_val)[:, 1])
                     for c in C_GRID})
        model = _fit(np.vstack([h.x_train, h.x_val]), np.concatenate([h.y_train, h.y_val]), c)
        out[h.name] = float(roc_auc_score(h.y_test, model.predict_proba(h.x_test)[:, 1]))
    return out


def _pooled_model(hs) -> LogisticRegression:  # noqa: ANN001 - fedmeta Hospitals
    """Logistic regression on the hospitals' train splits, C chosen on their pair-weighted validation
    AUC, refitted on train + validation."""
    x, y = np.vstack([h.x_train for h in hs]), np.concatenate([h.y_train for h in hs])

    def validation(c: float) -> float:
        m = _fit(x, y, c)
        return sum(roc_auc_score(h.y_val, m.predict_proba(h.x_val)[:, 1]) * _pairs(h.y_val) for h in hs) / \
            sum(_pairs(h.y_val) for h in hs)

    c = _choose({c: validation(c) for c in C_GRID})
    return _fit(np.vstack([x, *(h.x_val for h in hs)]), np.concatenate([y, *(h.y_val for h in hs)]), c)


def pooled_aucs(fed) -> dict[str, float]:  # noqa: ANN001
    model = _pooled_model(fed.hospitals)
    return {h.name: float(roc_auc_score(h.y_test, model.predict_proba(h.x_test)[:, 1])) for h in fed.hospitals}


def left_out_pooled_aucs(fed) -> dict[str, float]:  # noqa: ANN001
    """Each hospital scored by the pooled model of the others (it never trains, never chooses C)."""
    out = {}
    for h in fed.hospitals:
        model = _pooled_model([g for g in fed.hospitals if g.name != h.name])
        out[h.name] = float(roc_auc_score(h.y_test, model.predict_proba(h.x_test)[:, 1]))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config")
    p.add_argument("--data-dir")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--leave-one-out", action="store_true", help="also pooled zero-shot on each left-out hospital")
    args = p.parse_args()
    base = load_config(args.config, ['privacy.mode="none"'], args.data_dir)
    if base.data.validation_fraction == 0:
        base = with_settings(base, {"data.validation_fraction": 0.2}, "plain_reference")
    methods = [("local", local_aucs), ("pooled", pooled_aucs)]
    if args.leave_one_out:
        methods.append(("pooled, leave-one-out zero-shot", left_out_pooled_aucs))
    for name, method in methods:
        table = []
        for seed in args.seeds:
            row = method(load_federation(with_settings(base, {"seed": seed}, "plain_reference")))
            table.append(row)
            print(f"{name} seed {seed}: mean {np.mean(list(row.values())):.3f}  "
                  + "  ".join(f"{k} {v:.3f}" for k, v in row.items()))
        means = [np.mean(list(r.values())) for r in table]
        print(f"{name}: mean over seeds {', '.join(map(str, args.seeds))}: {np.mean(means):.3f} ± {np.std(means):.3f}; "
              f"worst site {np.mean([min(r.values()) for r in table]):.3f}; per hospital "
              + ", ".join(f"{n} {np.mean([r[n] for r in table]):.3f}" for n in table[0]))


if __name__ == "__main__":
    main()
