"""Metric-based learners against their definitions. Prototypical networks: logits are minus the
squared distances of the query embeddings to the support means of each class; matching networks:
the log of a cosine-softmax attention over the support labels; relation networks: a learned
module's score of (query, class mean). The meta-gradient is the plain autograd gradient of the
episode loss; evaluation reads the k shots and trains nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from flwr.supercore.task_identity import TaskIdentity

from fedmeta.config import MetaConfig, load_config
from fedmeta.data.episodes import EpisodeBatch
from fedmeta.meta.algorithms import ALGORITHMS, InnerLoop
from fedmeta.meta.functional import params_of, per_episode_copies
from fedmeta.models import MLP, build_model
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


def test_matching_logits_are_the_log_of_a_cosine_attention_over_the_support_labels():
    model, batch, task = _model(), _episodes(3), MulticlassTask(3)
    params = params_of(model)
    algo = ALGORITHMS["matchingnet"]
    out = algo.episode_outputs(model, per_episode_copies(params, batch.size), batch.x_support, batch.y_support,
                               batch.x_query, task)
    for i in range(batch.size):
        support, query = model(batch.x_support[i]), model(batch.x_query[i])
        attention = F.cosine_similarity(query[:, None], support[None], dim=-1).softmax(-1)
        probs = attention @ F.one_hot(batch.y_support[i].long(), 3).double()
        torch.testing.assert_close(out[i], torch.log(probs + 1e-12), rtol=1e-10, atol=1e-10)
    # Padding with weight 0 gets no attention.
    pad = torch.randn(batch.size, 2, 4, dtype=torch.float64)
    padded = algo.episode_outputs(model, per_episode_copies(params, batch.size), torch.cat([batch.x_support, pad], 1),
                                  torch.cat([batch.y_support, torch.zeros(batch.size, 2, dtype=torch.float64)], 1),
                                  batch.x_query, task,
                                  weight=torch.cat([torch.ones(batch.size, 9), torch.zeros(batch.size, 2)], 1).double())
    torch.testing.assert_close(padded, out, rtol=1e-10, atol=1e-10)


def test_relation_logits_are_the_module_score_of_query_and_class_mean():
    model, batch, task = _model(), _episodes(2), BinaryTask()
    algo = ALGORITHMS["relationnet"]
    state = algo.initial_state(params_of(model), MetaConfig(embedding=6))
    w1, b1, w2 = (state[f"relation:{k}"] for k in ("w1", "b1", "w2"))
    assert w1.shape == (8, 12) and w2.shape == (1, 8)
    out = algo.episode_outputs(model, per_episode_copies(state, batch.size), batch.x_support, batch.y_support,
                               batch.x_query, task)
    for i in range(batch.size):
        support, query = model(batch.x_support[i]), model(batch.x_query[i])
        means = [support[batch.y_support[i] == c].mean(0) for c in range(2)]
        scores = torch.stack([torch.stack([w2[0] @ torch.relu(w1 @ torch.cat([q, m]) + b1) for m in means])
                              for q in query])
        torch.testing.assert_close(out[i], scores[:, 1] - scores[:, 0], rtol=1e-10, atol=1e-10)
    grads, _ = algo.episode_gradients(model, state, batch, InnerLoop(5, 0.3, task))
    assert all(grads[f"relation:{k}"].abs().max() > 0 for k in ("w1", "b1", "w2"))  # learned with the embedding


@pytest.fixture
def _task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


@pytest.mark.usefixtures("_task_identity")
@pytest.mark.parametrize("algorithm", ["protonet", "matchingnet", "relationnet"])
def test_a_federated_run_learns_an_embedding(tmp_path, algorithm):
    out = tmp_path / "run"
    run_server_app({"config-file": str(ROOT / "configs" / "ci.toml"), "out-dir": str(out),
                    "overrides": f"meta.algorithm='{algorithm}' meta.embedding=8 federation.rounds=2"}, first_id=10)
    results = json.loads((out / "results.json").read_text())
    embedding = torch.load(out / "model.pt")
    assert results["rounds_completed"] == 2 and embedding["net.2.bias"].shape == (8,)
    cfg = load_config(str(ROOT / "configs" / "ci.toml"))
    start = build_model(cfg.model, (8,), cfg.seed, 8).state_dict()  # what every node built at round 0
    # Trained (a ProtoNet's last bias shifts every embedding alike: distances ignore it, it gets no gradient).
    assert all(not torch.allclose(embedding[k], start[k]) for k in start if k.endswith("weight"))
    assert all(0.0 <= m["auc"] <= 1.0 and "auc_unadapted" not in m for m in results["final"].values())
    if algorithm == "relationnet":  # the relation module is learned, aggregated and kept with the model
        module = torch.load(out / "algorithm_state.pt")
        start = ALGORITHMS["relationnet"].initial_state({"x": torch.zeros(1)}, MetaConfig(embedding=8))
        assert set(module) == {k for k in start if k != "x"}
        assert all(not torch.allclose(module[k], start[k]) for k in module)
