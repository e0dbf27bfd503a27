"""A finished run's directory read back: its results, resolved config and data schema, and the
state it learned (``model.pt``, and ``algorithm_state.pt`` for what the algorithm learns besides
the weights), rebuilt on the model the config describes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedmeta.config import ExperimentConfig, config_from_json
from fedmeta.errors import FedMetaError
from fedmeta.meta.algorithms import MetaAlgorithm, get_algorithm
from fedmeta.meta.functional import Params, params_of
from fedmeta.models import build_model
from fedmeta.tasks import Task, build_task

__all__ = ["FinishedRun", "read_run", "LearnedState", "learned_state"]


@dataclass(frozen=True)
class FinishedRun:
    path: Path
    results: dict[str, Any]
    cfg: ExperimentConfig

    @property
    def schema(self) -> dict[str, Any]:
        """What the hospitals' data looked like: task, input shape, a table's feature names."""
        schema = self.results.get("schema") or {}
        if not schema.get("input_shape"):
            raise FedMetaError(f"{self.path / 'results.json'}: the run recorded no data schema (a run of an "
                               "older fedmeta): run it again to onboard hospitals with it")
        return schema


def read_run(run_dir: Path) -> FinishedRun:
    """``run_dir``'s results and resolved config (one-line errors for anything else)."""
    results_path = run_dir / "results.json"
    if not run_dir.is_dir():
        raise FedMetaError(f"{run_dir}: run directory not found")
    if not results_path.is_file():
        hint = (" (the run has not finished: resume it first)" if (run_dir / "checkpoint.pt").is_file() else
                " (a comparison: its runs are under runs/<algorithm>/seed<N>)" if (run_dir / "plan.json").is_file()
                else "")
        raise FedMetaError(f"{run_dir}: not a finished fedmeta run: no results.json{hint}")
    try:
        results = json.loads(results_path.read_text(encoding="utf-8"))
        cfg = config_from_json(json.dumps(results["config"]))
    except FedMetaError as err:
        raise FedMetaError(f"{results_path}: its config is not one this fedmeta reads: {err}") from None
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        raise FedMetaError(f"{results_path}: not a readable fedmeta results file: {err}") from None
    return FinishedRun(run_dir, results, cfg)


@dataclass(frozen=True)
class LearnedState:
    model: nn.Module
    state: Params  # the algorithm's whole learned state (weights, and e.g. Meta-SGD's rates)
    algorithm: MetaAlgorithm
    task: Task


def _load(path: Path) -> dict[str, torch.Tensor]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file
        raise FedMetaError(f"{path}: not a readable tensor file: {err}") from None


def learned_state(run: FinishedRun, cfg: ExperimentConfig | None = None) -> LearnedState:
    """The run's model with its kept weights and the algorithm's state around them (``cfg``: the
    run's config with adaptation settings changed; its model is the run's)."""
    cfg = cfg or run.cfg
    if not (run.path / "model.pt").is_file():
        raise FedMetaError(f"{run.path}: no model.pt (a run of the local or pooled baseline has no global model)")
    algorithm, task = get_algorithm(cfg.meta.algorithm), build_task(cfg.task)
    model = build_model(cfg.model, tuple(run.schema["input_shape"]), cfg.seed, algorithm.model_outputs(task, cfg.meta))
    weights = _load(run.path / "model.pt")
    extra = _load(run.path / "algorithm_state.pt") if (run.path / "algorithm_state.pt").is_file() else {}
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise FedMetaError(f"{run.path / 'model.pt'}: does not fit the run's model: {str(err).splitlines()[0]}") from None
    template = algorithm.initial_state(params_of(model), cfg.meta)
    state = {**params_of(model), **extra}
    if set(state) != set(template) or any(state[k].shape != template[k].shape for k in template):
        raise FedMetaError(f"{run.path}: model.pt and algorithm_state.pt do not hold {cfg.meta.algorithm}'s state")
    model.eval()
    return LearnedState(model, {k: state[k] for k in template}, algorithm, task)
