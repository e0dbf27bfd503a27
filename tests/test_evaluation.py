"""Few-shot evaluation against a hand-written adaptation: k shots per class, or (``eval.adapt_on =
"all"``) a participating hospital's whole train split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from fedmeta.config import load_config
from fedmeta.data.sources import load_federation
from fedmeta.evaluation import evaluate_few_shot
from fedmeta.meta.functional import params_of
from fedmeta.models import build_model
from fedmeta.tasks import BinaryTask

CI = str(Path(__file__).resolve().parents[1] / "configs" / "ci.toml")


def _by_hand(w: torch.Tensor, b: torch.Tensor, x: np.ndarray, y: np.ndarray, steps: int, lr: float):
    """Gradient descent on the mean logistic loss, written out."""
    w, b = w.clone().double(), b.clone().double()
    xt, yt = torch.as_tensor(x).double(), torch.as_tensor(y).double()
    for _ in range(steps):
        p = torch.sigmoid(xt @ w.T + b).squeeze(-1)
        g = (p - yt) / len(yt)
        w, b = w - lr * (g @ xt)[None], b - lr * g.sum(0, keepdim=True)
    return w, b


@pytest.mark.parametrize("participant", [True, False])
def test_a_participant_adapts_on_its_whole_train_split_when_asked(participant):
    cfg = load_config(CI, ["model.hidden=[]", "eval.adapt_on=\"all\"", "eval.draws=3", "meta.inner_steps=4"])
    fed = load_federation(cfg)
    h = fed.hospitals[0]
    model = build_model(cfg.model, fed.input_shape, cfg.seed)
    params = params_of(model)
    score = evaluate_few_shot(model, params, h, task=BinaryTask(), eval_cfg=cfg.eval, meta_cfg=cfg.meta, seed=cfg.seed,
                              device=torch.device("cpu"), participant=participant)["test"]
    (wk, w), (bk, b) = params.items()
    assert wk.endswith("weight") and bk.endswith("bias")
    if participant:  # one adaptation, on every train example
        w1, b1 = _by_hand(w, b, h.x_train, h.y_train, cfg.meta.inner_steps, cfg.meta.inner_lr)
        prob = torch.sigmoid(torch.as_tensor(h.x_test).double() @ w1.T + b1).squeeze(-1).numpy()
        assert score["auc"] == pytest.approx(roc_auc_score(h.y_test, prob), abs=1e-9)
    else:  # a held-out hospital keeps the k-shot protocol whatever adapt_on says
        shots = load_config(CI, ["model.hidden=[]", "eval.draws=3", "meta.inner_steps=4"])
        same = evaluate_few_shot(model, params, h, task=BinaryTask(), eval_cfg=shots.eval, meta_cfg=shots.meta,
                                 seed=cfg.seed,
                                 device=torch.device("cpu"))["test"]
        assert score == same
