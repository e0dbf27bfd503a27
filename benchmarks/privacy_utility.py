"""Privacy-utility table: mean / worst-site few-shot AUC per algorithm, non-private and with
record-level DP at several epsilons, over seeds, on Flower's simulation engine (what
``fedmeta compare`` runs).

Non-private runs use the config as it is. DP runs use each algorithm's DP hyper-parameters
(``TUNED``), chosen on a validation federation by ``benchmarks/dp_tuning.py``, and sigma calibrated
by Opacus (PRV) so that each hospital reaches epsilon after the planned rounds; delta is
min(1e-5, 0.1/n) for a hospital with n train records.

    .venv/bin/python benchmarks/privacy_utility.py --config configs/default.toml --out runs/pu-synthetic
    .venv/bin/python benchmarks/privacy_utility.py --config configs/uci-heart.toml \
        --data-dir ../shared/data/uci-heart-disease --out runs/pu-uci
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fedmeta.compare import run_comparison
from fedmeta.config import load_config
from fedmeta.simulation import simulate

# Per algorithm: meta overrides for record-level DP (benchmarks/dp_tuning.py, validation seed 100, epsilon 4).
TUNED = {
    "fedavg": [],  # the non-private defaults were as good as any candidate
    "fedmeta-maml": ["meta.meta_batch=256", "meta.outer_steps=1", "meta.outer_lr=1.0"],
    "fedmeta-fomaml": ["meta.meta_batch=4", "meta.outer_steps=2", "meta.outer_lr=1.0"],
    "fedmeta-reptile": ["meta.meta_batch=4", "meta.outer_steps=2", "meta.outer_lr=1.0"],
}
# Not searched one by one: the other per-episode constructions take second-order MAML's settings,
# the other per-record DP-SGD ones FedAvg's (Per-FedAvg and FedRep have no record-level construction).
TUNED |= {name: TUNED["fedmeta-maml"] for name in
          ("fedmeta-metasgd", "fedmeta-anil", "fedmeta-protonet", "fedmeta-matchingnet", "fedmeta-relationnet")}
TUNED |= {name: TUNED["fedavg"] for name in ("fedprox", "ditto")}


def _cell(row: dict) -> str:
    m, w = row["mean_auc"], row["worst_auc"]
    return f"{m['mean']:.3f}±{m['std']:.3f} / {w['mean']:.3f}±{w['std']:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/default.toml")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 4.0, 8.0])
    ap.add_argument("--algorithms", nargs="+", default=["fedavg", "fedmeta-maml", "fedmeta-fomaml", "fedmeta-reptile"],
                    choices=list(TUNED))
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    def compare(overrides: list[str], algorithms: list[str], name: str) -> dict:
        done = args.out / name / "comparison.json"
        if done.is_file():  # an interrupted table goes on where it stopped
            return json.loads(done.read_text())["algorithms"]
        cfg = load_config(args.config, overrides, args.data_dir)
        # Only the final evaluation enters the table (evaluation does not change training).
        cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"every": cfg.federation.rounds})})
        result = run_comparison(cfg, algorithms, args.seeds, args.out / name,
                                run_federated=lambda c, d: simulate(c, d, progress=False), announce=say)
        (args.out / name / "comparison.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        return result["algorithms"]

    args.out.mkdir(parents=True, exist_ok=True)
    columns = {"non-DP": compare(['privacy.mode="none"'], args.algorithms, "non-dp")}
    for eps in args.epsilons:
        col = {}
        for algo in args.algorithms:
            dp = ['privacy.mode="record"', f"privacy.target_epsilon={eps}", *TUNED[algo]]
            col.update(compare(dp, [algo], f"eps{eps:g}-{algo}"))
        columns[f"ε = {eps:g}"] = col
    lines = ["| algorithm | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for algo in args.algorithms:
        lines.append(f"| {algo} | " + " | ".join(_cell(col[algo]) for col in columns.values()) + " |")
    table = "\n".join(lines)
    (args.out / "privacy_utility.md").write_text(table + "\n", encoding="utf-8")
    print(f"mean / worst-site AUC (mean ± std over seeds {', '.join(map(str, args.seeds))}), {args.config}")
    print(table)


if __name__ == "__main__":
    main()
