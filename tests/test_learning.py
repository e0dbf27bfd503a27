"""Learning, measured: meta-training on the synthetic federation lifts few-shot AUC well above
what the same adaptation achieves from the untrained initialisation.

The loop below is the arithmetic of a FedMeta round without Flower (local meta-training, weighted
mean of meta-updates, server step), so the claim is checked in seconds; the Flower path itself is
covered end to end in test_simulation.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedmeta.config import load_config
from fedmeta.data.episodes import EpisodeSampler
from fedmeta.data.sources import load_federation
from fedmeta.evaluation import evaluate_few_shot
from fedmeta.meta.functional import params_of
from fedmeta.meta.local_training import meta_train_locally
from fedmeta.models import build_model
from fedmeta.server_optimizer import ServerMetaOptimizer
from fedmeta.tasks import BinaryTask

CI = Path(__file__).resolve().parents[1] / "configs" / "ci.toml"


def _few_shot_auc_after(algorithm: str, rounds: int, seed: int) -> float:
    cfg = load_config(CI, [f'meta.algorithm="{algorithm}"', f"seed={seed}", "eval.draws=5"])
    fed = load_federation(cfg)
    model = build_model(cfg.model, fed.input_shape, cfg.seed)
    server = ServerMetaOptimizer(params_of(model), cfg.server)
    cpu = torch.device("cpu")
    samplers = [EpisodeSampler(h.x_train, h.y_train, task=BinaryTask(), shots=cfg.meta.shots, query=cfg.meta.query,
                               device=cpu)
                for h in fed.hospitals]
    for r in range(1, rounds + 1):
        theta = server.current()
        results = [meta_train_locally(model, theta, s, cfg.meta, np.random.default_rng([seed, r, i]))
                   for i, s in enumerate(samplers)]
        weights = np.array([h.n_train for h in fed.hospitals], dtype=float)
        weights /= weights.sum()
        server.step({k: sum(w * res.update[k] for w, res in zip(weights, results)) for k in theta})
    theta = server.current()
    return float(np.mean([evaluate_few_shot(model, theta, h, task=BinaryTask(), eval_cfg=cfg.eval, meta_cfg=cfg.meta,
                                            seed=seed,
                                            device=cpu)["test"].value for h in fed.hospitals]))


@pytest.mark.parametrize("algorithm", ["maml", "fomaml", "reptile", "fedavg"])
def test_meta_training_beats_the_untrained_initialisation(algorithm):
    before = _few_shot_auc_after(algorithm, rounds=0, seed=0)
    after = _few_shot_auc_after(algorithm, rounds=12, seed=0)
    assert after > before + 0.15, (before, after)
    assert after > 0.7
