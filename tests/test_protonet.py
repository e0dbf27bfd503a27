"""Prototypical networks against their definition: logits are minus the squared distances of the
query embeddings to the support means of each class; the meta-gradient is the plain autograd
gradient of that episode loss; evaluation builds prototypes from the k shots and trains nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flwr.supercore.task_identity import TaskIdentity

from fedmeta.config import MetaConfig
from fedmeta.data.episodes import EpisodeBatch
from fedmeta.meta.algorithms import ALGORITHMS, InnerLoop
from fedmeta.meta.functional import params_of, per_episode_copies
from fedmeta.models import MLP
from fedmeta.tasks import BinaryTask, MulticlassTask
from in_process_grid import run_server_app

ROOT = Path(__file__).resolve().parents[1]
PROTO = ALGORITHMS["protonet"]


def _episodes(classes: int, m: int = 2, k: int = 3, q: int = 5, d: int = 4) -> EpisodeBatch:
    g = torch.Generator().manual_seed(0)
    ys = torch.arange(classes).repeat_interleave(k).double().expand(m, -1).clone()
    return EpisodeBatch(torch.randn(m, classes * k, d, generator=g, dtype=torch.float64), ys,
                        torch.randn(m, q, d, generator=g, dtype=torch.float64),
                        torch.randint(0, classes, (m, q), generator=g).double())


def _model(embedding: int = 6) -> torch.nn.Module:
    torch.manual_seed(1)
    return MLP(4, [8], n_outputs=embedding).double()


@pytest.mark.parametrize("classes", [2, 3])
def test_logits_are_minus_squared_distances_to_the_support_means(classes):
    model, batch = _model(), _episodes(classes)
    task = BinaryTask() if classes == 2 else MulticlassTask(3)
    params = params_of(model)
    out = PROTO.episode_outputs(model, per_episode_copies(params, batch.size), batch.x_support, batch.y_support,
                                batch.x_query, task)
    for i in range(batch.size):
        support, query = model(batch.x_support[i]), model(batch.x_query[i])
        means = torch.stack([support[batch.y_support[i] == c].mean(0) for c in range(classes)])
        logits = -torch.cdist(query, means) ** 2
        expected = logits[:, 1] - logits[:, 0] if classes == 2 else logits
        torch.testing.assert_close(out[i], expected, rtol=1e-10, atol=1e-10)


def test_the_meta_gradient_is_the_gradient_of_the_episode_loss():
    model, batch = _model(), _episodes(3)
    task = MulticlassTask(3)
    params = params_of(model)
    grads, losses = PROTO.episode_gradients(model, params, batch, InnerLoop(5, 0.3, task))
    for i in range(batch.size):
        w = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        support = torch.func.functional_call(model, w, (batch.x_support[i],))
        query = torch.func.functional_call(model, w, (batch.x_query[i],))
        means = torch.stack([support[batch.y_support[i] == c].mean(0) for c in range(3)])
        loss = F.cross_entropy(-((query[:, None] - means[None]) ** 2).sum(-1), batch.y_query[i].long())
        torch.testing.assert_close(losses[i], loss.detach(), rtol=1e-12, atol=1e-12)
        for k, g in zip(w, torch.autograd.grad(loss, list(w.values()))):
            torch.testing.assert_close(grads[k][i], g, rtol=1e-10, atol=1e-12)


def test_the_model_outputs_an_embedding_and_evaluation_trains_nothing():
    assert PROTO.model_outputs(BinaryTask(), MetaConfig(embedding=12)) == 12
    model, batch = _model(), _episodes(2, m=3)
    params = params_of(model)
    before = {k: v.clone() for k, v in params.items()}
    outputs = PROTO.draw_outputs(model, per_episode_copies(params, 3), batch.x_support, batch.y_support,
                                 batch.x_query[0], InnerLoop(5, 0.3, BinaryTask()))
    assert len(outputs) == 3 and outputs[0].shape == (5,)
    assert all(torch.equal(before[k], params[k]) for k in params)
    assert not torch.allclose(outputs[0], outputs[1])  # each draw's own prototypes


@pytest.fixture
def _task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


@pytest.mark.usefixtures("_task_identity")
def test_a_federated_protonet_run_learns_an_embedding(tmp_path):
    out = tmp_path / "run"
    run_server_app({"config-file": str(ROOT / "configs" / "ci.toml"), "out-dir": str(out),
                    "overrides": "meta.algorithm='protonet' meta.embedding=8 federation.rounds=2"}, first_id=10)
    results = json.loads((out / "results.json").read_text())
    assert results["rounds_completed"] == 2 and torch.load(out / "model.pt")["net.2.bias"].shape == (8,)
    aucs = [m["auc"] for m in results["final"].values()]
    assert np.mean(aucs) > 0.6 and all("auc_unadapted" not in m for m in results["final"].values())
