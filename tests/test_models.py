"""Models: the registry, and the user's own ``nn.Module`` through ``model.factory``, end to end in a
Flower simulation and refused in one line when it cannot be used."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fedmeta.cli import main
from fedmeta.meta.functional import params_of
from fedmeta.models import MLP

CI = str(Path(__file__).resolve().parents[1] / "configs" / "ci.toml")

USER_MODELS = '''
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self, d, k):
        super().__init__()
        self.a, self.n, self.b, self.k = nn.Linear(d, 12), nn.LayerNorm(12), nn.Linear(12, k), k

    def forward(self, x):
        out = self.b(torch.tanh(self.n(self.a(x))))
        return out.squeeze(-1) if self.k == 1 else out


def tiny(input_shape, n_outputs, seed):
    return Tiny(input_shape[0], n_outputs)


class Scaled(nn.Module):
    """A buffer (not a parameter): fixed at construction, saved with the model, never trained or sent."""

    def __init__(self, d):
        super().__init__()
        self.a = nn.Linear(d, 1)
        self.register_buffer("scale", torch.full((d,), 0.5))

    def forward(self, x):
        return self.a(x * self.scale).squeeze(-1)


def with_buffer(input_shape, n_outputs, seed):
    return Scaled(input_shape[0])


def text(input_shape, n_outputs, seed):
    return "a model"


def broken(input_shape, n_outputs, seed):
    raise RuntimeError("no GPU here")


def with_batchnorm(input_shape, n_outputs, seed):
    return nn.Sequential(nn.Linear(input_shape[0], 4), nn.BatchNorm1d(4), nn.Linear(4, 1), nn.Flatten(0))
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "hospital_models.py").write_text(USER_MODELS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_a_user_factory_model_trains_in_a_simulated_federation(user_module):
    out = user_module / "run"
    assert main(["simulate", CI, "--set", "model.factory=\"hospital_models:tiny\"", "--set", "federation.rounds=2",
                 "--out", str(out), "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["rounds_completed"] == 2 and len(results["final"]) == 5
    import torch

    state = torch.load(out / "model.pt")
    assert {"a.weight", "n.weight", "b.weight"} <= set(state)  # the user's module, not the MLP


@pytest.mark.parametrize("factory, message", [
    ("hospital_models:nothing", "has no function 'nothing'"),
    ("no_such_package.models:tiny", "cannot import 'no_such_package.models': ModuleNotFoundError"),
    ("hospital_models:text", "returned str, not a torch.nn.Module"),
    ("hospital_models:broken", "raised RuntimeError: no GPU here"),
    ("hospital_models:with_batchnorm", "BatchNorm1d) uses batch statistics"),
    ("hospital_models", "expected \"package.module:function\""),
])
def test_a_factory_that_cannot_be_used_is_one_line(user_module, capsys, factory, message):
    out = user_module / "run"
    assert main(["simulate", CI, "--set", f"model.factory=\"{factory}\"", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and not out.exists()


def test_an_unknown_model_kind_is_one_line(capsys):
    assert main(["simulate", CI, "--set", "model.kind=\"transformer\""]) == 2
    assert "model.kind: unknown model (expected one of mlp, convnet, resnet, or set model.factory)" in capsys.readouterr().err


@pytest.mark.parametrize("kind,shape,outputs", [("convnet", (1, 9, 9), 1), ("resnet", (2, 6, 5), 3)])
def test_image_models_pass_the_vmapped_second_order_check(kind, shape, outputs):
    """GroupNorm, pooling and residual paths: the batched meta-gradient equals the per-task loop (float64)."""
    import torch

    from fedmeta.config import ModelConfig
    from fedmeta.data.episodes import EpisodeBatch
    from fedmeta.meta.algorithms import InnerLoop
    from fedmeta.models import build_model
    from fedmeta.tasks import BinaryTask, MulticlassTask
    from maml_reference import assert_maml_matches_reference

    model = build_model(ModelConfig(kind=kind, width=4, blocks=1), shape, seed=0, n_outputs=outputs).double()
    g = torch.Generator().manual_seed(0)
    labels = (lambda n: torch.randint(0, outputs, (2, n), generator=g).double()) if outputs > 1 else \
        (lambda n: (torch.rand(2, n, generator=g) < 0.5).double())
    batch = EpisodeBatch(torch.randn(2, 4, *shape, generator=g, dtype=torch.float64), labels(4),
                         torch.randn(2, 5, *shape, generator=g, dtype=torch.float64), labels(5))
    task = MulticlassTask(outputs) if outputs > 1 else BinaryTask()
    assert_maml_matches_reference(model, batch, InnerLoop(steps=2, lr=0.1, task=task), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("kind", ["convnet", "resnet"])
def test_image_models_refuse_a_table_in_one_line(kind):
    from fedmeta.config import ModelConfig
    from fedmeta.errors import FedMetaError
    from fedmeta.models import build_model

    with pytest.raises(FedMetaError, match=rf"^model.kind = \"{kind}\" takes images \(channels, height, width\); "
                       r"this data has examples of shape \(13,\)"):
        build_model(ModelConfig(kind=kind), (13,), seed=0)


def test_a_model_with_buffers_saves_its_buffers_and_resumes(user_module):
    """The ServerApp against the real ClientApps in this process (no Ray): killed after round 1 and
    resumed, it ends with the uninterrupted run's parameters, and its model.pt holds the buffer."""
    import torch
    from flwr.supercore.task_identity import TaskIdentity

    from fedmeta.flower.server import SimulatedCrash
    from in_process_grid import run_server_app as run

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    config = {"config-file": CI, "overrides": "federation.rounds=2 model.factory='hospital_models:with_buffer'"}

    whole, cut = user_module / "whole", user_module / "cut"
    run({**config, "out-dir": str(whole)}, first_id=100)
    with pytest.raises(SimulatedCrash):
        run({**config, "out-dir": str(cut)}, first_id=200, _stop_after_round=1)
    run({**config, "resume-from": str(cut)}, first_id=300)
    a, b = torch.load(whole / "model.pt"), torch.load(cut / "model.pt")
    assert set(a) == {"a.weight", "a.bias", "scale"} and torch.equal(a["scale"], torch.full((8,), 0.5))
    assert all(torch.equal(a[k], b[k]) for k in a)  # the resumed run ends where the whole one did


@pytest.mark.parametrize("hidden, outputs", [([], 1), ([8, 4], 1), ([8], 3)])
def test_the_mlp_batched_episode_forward_is_its_vmapped_forward(hidden, outputs):
    """The engine's fast path for fedmeta's MLP gives what a vmap of ``forward`` gives, gradients too."""
    from torch.func import functional_call, vmap

    from fedmeta.meta.functional import episode_outputs, per_episode_copies

    model = MLP(5, hidden, outputs).double()
    params = per_episode_copies({k: v + 0.1 * torch.randn_like(v) for k, v in params_of(model).items()}, 3)
    x = torch.randn(3, 7, 5, dtype=torch.float64)
    fast = episode_outputs(model, params, x)
    slow = vmap(lambda p, xi: functional_call(model, p, (xi,)))(params, x)
    torch.testing.assert_close(fast, slow)
    grads = [torch.autograd.grad(out.square().sum(), list(params.values())) for out in (fast, slow)]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)

    class Shifted(MLP):  # overrides forward only: the engine must not take MLP's fast path for it
        def forward(self, x):
            return super().forward(x) + 1.0

    shifted = Shifted(5, hidden, outputs).double()
    torch.testing.assert_close(episode_outputs(shifted, params, x), slow + 1.0)
