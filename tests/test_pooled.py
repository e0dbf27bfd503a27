"""The ``pooled`` baseline against a hand-written centralised fit, and the data it may not see."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedmeta.config import load_config
from fedmeta.data.hospital import Federation
from fedmeta.data.sources import load_federation
from fedmeta.evaluation import evaluate_few_shot, score_params
from fedmeta.models import build_model
from fedmeta.pooled_baseline import pooled_params, run_pooled_baseline
from fedmeta.tasks import BinaryTask

CI = Path(__file__).resolve().parents[1] / "configs" / "ci.toml"
# Logistic regression, full-batch Adam: the centralised fit a plain script would write.
SETTINGS = ["model.hidden=[]", "local.steps=40", "local.batch_size=100000", "local.lr=0.05",
            "data.held_out=['hospital-05']"]


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_pooled_is_a_centralised_fit_on_the_training_hospitals(schedule):
    cfg = load_config(CI, [*SETTINGS, f"local.lr_schedule='{schedule}'"])
    fed = load_federation(cfg)
    ours = pooled_params(fed, cfg)
    pool = [h for h in fed.hospitals if h.name != "hospital-05"]
    x = torch.as_tensor(np.concatenate([h.x_train for h in pool]))
    y = torch.as_tensor(np.concatenate([h.y_train for h in pool]))
    init = dict(build_model(cfg.model, fed.input_shape, cfg.seed).named_parameters())
    (w_name, w), (b_name, b) = [(k, torch.nn.Parameter(v.detach().clone())) for k, v in init.items()]
    opt = torch.optim.Adam([w, b], lr=0.05)
    for t in range(40):
        if schedule == "cosine":  # the rate of step t decays from 0.05 to 0 along half a cosine
            opt.param_groups[0]["lr"] = 0.05 * (1 + math.cos(math.pi * t / 40)) / 2
        opt.zero_grad()
        F.binary_cross_entropy_with_logits((x @ w.T + b).squeeze(-1), y).backward()
        opt.step()
    torch.testing.assert_close(ours[w_name], w.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours[b_name], b.detach(), atol=1e-5, rtol=1e-5)


def test_a_held_out_hospital_never_enters_the_pool():
    cfg = load_config(CI, SETTINGS)
    fed = load_federation(cfg)
    garbled = Federation(tuple(dataclasses.replace(h, y_train=1 - h.y_train, x_train=-h.x_train)
                               if h.name == "hospital-05" else h for h in fed.hospitals), fed.feature_names)
    a, b = pooled_params(fed, cfg), pooled_params(garbled, cfg)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_every_hospital_is_scored_after_its_own_few_shot_adaptation():
    cfg = load_config(CI, SETTINGS)
    fed = load_federation(cfg)
    out = run_pooled_baseline(fed, cfg)
    assert {h: m["role"] for h, m in out.items()} == {
        **{f"hospital-0{i}": "train" for i in range(1, 5)}, "hospital-05": "held-out"}
    # The federated methods' protocol: adapt the pooled model on k shots of the hospital, score on test.
    model, params = build_model(cfg.model, fed.input_shape, cfg.seed), pooled_params(fed, cfg)
    for h in fed.hospitals:
        score = evaluate_few_shot(model, params, h, task=BinaryTask(), eval_cfg=cfg.eval, meta_cfg=cfg.meta,
                                  seed=cfg.seed,
                                  device=torch.device("cpu"))["test"]
        assert out[h.name]["auc"] == pytest.approx(score["auc"])
        assert out[h.name]["accuracy"] == pytest.approx(score["accuracy"])
        unadapted = score_params(model, params, h, torch.device("cpu"), BinaryTask())
        assert out[h.name]["auc"] != unadapted["auc"]  # the adaptation took place
