"""Where tuning's choice and a hand-set config part ways: for a baseline (`local` or `pooled`) of a
finished `compare --tune` run, the validation score (as `fedmeta tune` computes it, over the
config's validation draws) and the test AUC (refitted, as the compare ran it) of the tuned settings
and of settings given with --set-like KEY=VALUE arguments, per seed.

    .venv/bin/python benchmarks/validation_vs_test.py configs/uci-heart.toml RUN_DIR pooled \\
        --data-dir ../shared/data/uci-heart-disease --seeds 0 1 2 \\
        --other local.lr=0.01 local.steps=2000 local.weight_decay=0.001 meta.inner_lr=0.01 meta.inner_steps=1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from fedmeta.compare import BASELINES, counted
from fedmeta.config import load_config, with_settings
from fedmeta.data.sources import load_federation
from fedmeta.history import validation_score
from fedmeta.tuning.protocol import tuning_config


def _scores(cfg, name: str, settings: dict) -> tuple[float, list[float]]:  # noqa: ANN001
    vals = []
    for draw in range(cfg.tune.validation_draws):
        trial = with_settings(tuning_config(cfg, draw), settings, "trial")
        vals.append(validation_score(list(counted(BASELINES[name](load_federation(trial), trial)).values())))
    final = with_settings(with_settings(cfg, settings, "final"), {"data.validation_fraction": 0.0}, "final")
    rows = counted(BASELINES[name](load_federation(final), final))
    return float(np.mean(vals)), [float(m["auc"]) for m in rows.values()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config")
    p.add_argument("run_dir")
    p.add_argument("algorithm", choices=sorted(BASELINES))
    p.add_argument("--data-dir")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--other", nargs="+", required=True, help="KEY=VALUE settings to hold against the tuned ones")
    args = p.parse_args()
    base = load_config(args.config, ['privacy.mode="none"'], args.data_dir)
    other = {k: json.loads(v) for k, v in (kv.split("=", 1) for kv in args.other)}
    for seed in args.seeds:
        cfg = with_settings(base, {"seed": seed}, "seed")
        tuned = json.loads((Path(args.run_dir) / "tuning" / args.algorithm / f"seed{seed}" / "tune.json").read_text())
        for label, settings in (("tuned", tuned["best"]["settings"]), ("other", other)):
            val, test = _scores(cfg, args.algorithm, settings)
            print(f"seed {seed} {label:>5}: validation {val:.3f}  test mean {np.mean(test):.3f}  per hospital "
                  + " ".join(f"{t:.3f}" for t in test))


if __name__ == "__main__":
    main()
