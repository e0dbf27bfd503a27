"""Meta-SGD and ANIL against their definitions, in float64: the batched engine against the per-task
reference loop (``fedmeta.meta.reference``), Meta-SGD with constant rates against MAML, ANIL with a
frozen body against MAML on the head alone; and both through a whole federated run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from flwr.supercore.task_identity import TaskIdentity
from torch import nn

from fedmeta.config import MetaConfig
from fedmeta.data.episodes import EpisodeBatch
from fedmeta.meta.algorithms import ALGORITHMS, InnerLoop
from fedmeta.meta.algorithms.anil import head_names
from fedmeta.meta.algorithms.metasgd import RATE_PREFIX
from fedmeta.meta.functional import params_of, per_episode_copies
from fedmeta.meta.reference import reference_maml_gradients
from fedmeta.models import MLP
from fedmeta.models.convnet import ConvNet
from fedmeta.tasks import BinaryTask
from in_process_grid import run_server_app

ROOT = Path(__file__).resolve().parents[1]
INNER = InnerLoop(steps=3, lr=0.3, task=BinaryTask())


def _batch(m: int = 3, d: int = 5, s: int = 4, q: int = 6) -> EpisodeBatch:
    g = torch.Generator().manual_seed(0)
    return EpisodeBatch(torch.randn(m, s, d, generator=g, dtype=torch.float64),
                        (torch.rand(m, s, generator=g) < 0.5).double(),
                        torch.randn(m, q, d, generator=g, dtype=torch.float64),
                        (torch.rand(m, q, generator=g) < 0.5).double())


def _model() -> nn.Module:
    torch.manual_seed(1)
    return MLP(5, [8, 6]).double()


def test_metasgd_matches_the_per_task_reference_for_weights_and_rates():
    model, batch, algo = _model(), _batch(), ALGORITHMS["metasgd"]
    params = params_of(model)
    g = torch.Generator().manual_seed(2)
    rates = {k: 0.1 + 0.4 * torch.rand(v.shape, generator=g, dtype=torch.float64) for k, v in params.items()}
    state = {**params, **{RATE_PREFIX + k: r for k, r in rates.items()}}
    grads, _ = algo.episode_gradients(model, state, batch, INNER)
    ref = reference_maml_gradients(model, params, batch, steps=INNER.steps, lr=INNER.lr, task=INNER.task, rates=rates)
    for i, r in enumerate(ref):
        for k in params:
            torch.testing.assert_close(grads[k][i], r[k], rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(grads[RATE_PREFIX + k][i], r[f"rate:{k}"], rtol=1e-10, atol=1e-12)
    assert all(grads[RATE_PREFIX + k].abs().max() > 1e-6 for k in params)  # the rates do learn


def test_metasgd_with_its_rates_frozen_at_a_constant_is_maml():
    model, batch = _model(), _batch()
    params = params_of(model)
    state = ALGORITHMS["metasgd"].initial_state(params, MetaConfig(inner_lr=INNER.lr))
    assert all(torch.equal(state[RATE_PREFIX + k], torch.full_like(v, INNER.lr)) for k, v in params.items())
    metasgd, metasgd_loss = ALGORITHMS["metasgd"].episode_gradients(model, state, batch, INNER)
    maml, maml_loss = ALGORITHMS["maml"].episode_gradients(model, params, batch, INNER)
    torch.testing.assert_close(metasgd_loss, maml_loss, rtol=1e-12, atol=1e-14)
    for k in params:
        torch.testing.assert_close(metasgd[k], maml[k], rtol=1e-10, atol=1e-12)
    # ... and the adaptation at evaluation is MAML's too
    x, y = batch.x_support, batch.y_support
    starts = per_episode_copies(state, 3)
    adapted = ALGORITHMS["metasgd"].adapt(model, starts, x, y, INNER, create_graph=False)
    plain = ALGORITHMS["maml"].adapt(model, {k: starts[k] for k in params}, x, y, INNER, create_graph=False)
    assert set(adapted) == set(params)
    for k in params:
        torch.testing.assert_close(adapted[k], plain[k], rtol=1e-12, atol=1e-14)


def test_anil_matches_the_per_task_reference_with_only_the_head_adapting():
    model, batch = _model(), _batch()
    params = params_of(model)
    head = head_names(model)
    assert head == {"net.4.weight", "net.4.bias"}
    grads, _ = ALGORITHMS["anil"].episode_gradients(model, params, batch, INNER)
    ref = reference_maml_gradients(model, params, batch, steps=INNER.steps, lr=INNER.lr, task=INNER.task, only=head)
    for i, r in enumerate(ref):
        for k in params:
            torch.testing.assert_close(grads[k][i], r[k], rtol=1e-10, atol=1e-12)
    maml, _ = ALGORITHMS["maml"].episode_gradients(model, params, batch, INNER)
    assert (grads["net.0.weight"] - maml["net.0.weight"]).abs().max() > 1e-6  # not MAML: the body does not adapt


def test_anil_with_a_frozen_body_is_maml_on_the_head():
    """The body's features as data, the head as the whole model: MAML's meta-gradient of that head
    is ANIL's meta-gradient of the head."""
    model, batch = _model(), _batch()
    params = params_of(model)
    body = model.net[:4]
    head = MLP(6, []).double()  # one linear layer: net.0
    head.load_state_dict({"net.0.weight": params["net.4.weight"], "net.0.bias": params["net.4.bias"]})
    with torch.no_grad():
        features = EpisodeBatch(body(batch.x_support), batch.y_support, body(batch.x_query), batch.y_query)
    on_head, on_head_loss = ALGORITHMS["maml"].episode_gradients(head, params_of(head), features, INNER)
    anil, anil_loss = ALGORITHMS["anil"].episode_gradients(model, params, batch, INNER)
    torch.testing.assert_close(anil_loss, on_head_loss, rtol=1e-12, atol=1e-14)
    for name in ("weight", "bias"):
        torch.testing.assert_close(anil[f"net.4.{name}"], on_head[f"net.0.{name}"], rtol=1e-10, atol=1e-12)
    adapted = ALGORITHMS["anil"].adapt(model, per_episode_copies(params, 3),
                                       batch.x_support, batch.y_support, INNER, create_graph=False)
    assert all(torch.equal(adapted[k][0], params[k]) for k in params if k not in head_names(model))


def test_the_head_is_the_last_layer_with_parameters():
    assert head_names(ConvNet((1, 12, 12), width=4, n_outputs=3)) == {"head.weight", "head.bias"}


@pytest.fixture
def _task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


@pytest.mark.usefixtures("_task_identity")
@pytest.mark.parametrize("algorithm", ["metasgd", "anil"])
def test_a_federated_run_learns_and_keeps_what_the_algorithm_declares(tmp_path, algorithm):
    """Through the real ServerApp and ClientApps: the rates are aggregated like weights and saved
    with the model; ANIL trains its body too."""
    out = tmp_path / "run"
    run_server_app({"config-file": str(ROOT / "configs" / "ci.toml"), "out-dir": str(out),
                    "overrides": f"meta.algorithm='{algorithm}' federation.rounds=2"}, first_id=10)
    results = json.loads((out / "results.json").read_text())
    assert results["algorithm"] == algorithm and results["rounds_completed"] == 2
    assert all(0.0 <= m["auc"] <= 1.0 for m in results["final"].values())
    model_state = torch.load(out / "model.pt")
    if algorithm == "metasgd":
        rates = torch.load(out / "algorithm_state.pt")
        assert set(rates) == {RATE_PREFIX + k for k in model_state}
        assert any((r - 0.1).abs().max() > 1e-4 for r in rates.values())  # ci.toml: meta.inner_lr = 0.1, learned since
    else:
        assert not (out / "algorithm_state.pt").exists()


def test_the_empirical_audit_looks_for_canaries_where_a_meta_sgd_hospital_puts_them(tmp_path, monkeypatch):
    """Canary coordinates are drawn from the size of what a hospital releases: Meta-SGD's state,
    rates included, on both sides (a mismatch would score the wrong coordinates)."""
    from fedmeta.config import load_config
    from fedmeta.privacy import audit_run, canaries
    from fedmeta.local_round import train_hospital_round
    from fedmeta.data.sources import load_federation
    from fedmeta.models import build_model

    cfg = load_config(str(ROOT / "configs" / "ci.toml"),
                      ["meta.algorithm='metasgd'", "audit.canaries=10", "audit.hospital='hospital-01'"])
    sizes: dict[str, int] = {}

    def recording(where: str):
        def make(audit, n_params):
            sizes[where] = n_params
            return canaries.make_canaries(audit, n_params)
        return make

    hospital = load_federation(cfg).get("hospital-01")
    model = build_model(cfg.model, hospital.input_shape, cfg.seed)
    state = ALGORITHMS["metasgd"].initial_state(params_of(model), cfg.meta)
    monkeypatch.setattr("fedmeta.local_round.make_canaries", recording("hospital"))
    train_hospital_round(cfg, hospital, 0, model, state, plan=None, server_round=1, run_id="r",
                         ledger_path=tmp_path / "l.sqlite", device=torch.device("cpu"))
    monkeypatch.setattr(audit_run, "make_canaries", recording("audit"))
    audit_run.run_empirical_audit(cfg, tmp_path / "audit", simulate_fn=lambda c, d: d.mkdir(parents=True))
    assert sizes["audit"] == sizes["hospital"] == 2 * sum(p.numel() for p in model.parameters())
