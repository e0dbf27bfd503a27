"""Is the imaging pipeline sound? Pooled training of the ``resnet`` model on BreastMNIST with the
simulated site shift switched off, scored on MedMNIST's official test split, beside MedMNIST v2's
centralised ResNet-18 (test AUC 0.901, Yang et al. 2023).

The number of Adam steps is chosen on validation only (the sites' validation splits, pooled); the
chosen setting is then refitted on the whole train data (validation included) and scored once on
the test images, which are exactly MedMNIST's official test split (dealt to the sites, each
normalised with its own site's train statistics, as every fedmeta run does). No adaptation.

    .venv/bin/python benchmarks/medmnist_pooled_check.py --data-dir ../shared/data/medmnist_breastmnist \
        [--steps 100 200 300 500 1000] [--lr 0.001] [--weight-decay 0] [--width 32] [--seed 0] [--schedule cosine]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from fedmeta.config import load_config
from fedmeta.data.sources import load_federation
from fedmeta.models import build_model
from fedmeta.pooled_baseline import pooled_params
from fedmeta.tasks import build_task

ROOT = Path(__file__).resolve().parents[1]
MEDMNIST_RESNET18_AUC = 0.901


def _auc(model, params, fed, split: str) -> float:
    task = build_task(load_config(ROOT / "configs" / "breastmnist.toml").task)
    ys, ps = [], []
    device = next(iter(params.values())).device
    for h in fed.hospitals:
        x, y = h.split(split)
        with torch.no_grad():
            outputs = torch.func.functional_call(model, params, (torch.as_tensor(x, device=device),))
        ps.append(task.predictions(outputs))
        ys.append(y)
    return float(roc_auc_score(np.concatenate(ys), np.concatenate(ps)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--steps", type=int, nargs="+", default=[100, 200, 300, 500, 1000])
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--schedule", choices=("constant", "cosine"), default="constant", help="Adam's rate over the steps")
    args = ap.parse_args()
    torch.set_num_threads(2)
    base = [f"seed={args.seed}", "privacy.mode='none'", "model.kind='resnet'", f"model.width={args.width}",
            "data.medmnist.acquisition_shift=0", "data.medmnist.label_shift=0", "data.medmnist.quantity_skew=0",
            f"local.lr={args.lr}", f"local.batch_size={args.batch_size}", f"local.weight_decay={args.weight_decay}",
            f"local.lr_schedule='{args.schedule}'"]
    scores = {}
    for steps in args.steps:
        cfg = load_config(ROOT / "configs" / "breastmnist.toml", [*base, f"local.steps={steps}"], args.data_dir)
        fed = load_federation(cfg)
        model = build_model(cfg.model, fed.input_shape, cfg.seed)
        t0 = time.perf_counter()
        scores[steps] = _auc(model, pooled_params(fed, cfg), fed, "validation")
        print(f"  {steps:>5} Adam steps: validation AUC {scores[steps]:.3f} ({time.perf_counter() - t0:.0f}s)",
              flush=True)
    chosen = max(scores, key=scores.__getitem__)
    cfg = load_config(ROOT / "configs" / "breastmnist.toml",
                      [*base, f"local.steps={chosen}", "data.validation_fraction=0"], args.data_dir)
    fed = load_federation(cfg)
    model = build_model(cfg.model, fed.input_shape, cfg.seed)
    test = _auc(model, pooled_params(fed, cfg), fed, "test")
    n_test = sum(len(h.y_test) for h in fed.hospitals)
    print(f"pooled resnet (width {args.width}, {args.schedule} rate), site shift off, seed {args.seed}: {chosen} steps "
          "chosen on validation; "
          f"test AUC {test:.3f} on the {n_test} official test images; MedMNIST ResNet-18 {MEDMNIST_RESNET18_AUC:.3f} "
          f"(difference {test - MEDMNIST_RESNET18_AUC:+.3f})")


if __name__ == "__main__":
    main()
