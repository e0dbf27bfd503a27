"""``fedmeta onboard``: a hospital that never took part adapts a finished run's model on K labelled
cases per class of its own and evaluates it on the rest, on its own machine.

Its data is read from one file in the run's source format, checked against the run's schema and
normalised with statistics of its own records (features only; no label is read for them). The
K cases per class are a seeded draw (``--seed``); every other case is evaluated. Three models are
scored on the same cases: the global model as it came (where the algorithm's model predicts
without adapting), the model adapted by the run's algorithm, and a model trained on the K cases
alone (the run's ``local`` settings). Nothing is sent anywhere: no privacy budget is spent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.func import functional_call

from fedmeta.config import ExperimentConfig, apply_overrides, config_from_json
from fedmeta.data.episodes import sample_k_shot
from fedmeta.data.hospital import NORMALISERS
from fedmeta.data.site_file import read_site_file
from fedmeta.errors import FedMetaError
from fedmeta.finished_run import FinishedRun, LearnedState, learned_state
from fedmeta.local_baseline import train_alone
from fedmeta.meta.algorithms import InnerLoop
from fedmeta.models import build_model
from fedmeta.report.attribution import MAX_ATTRIBUTED, attribute
from fedmeta.report.bootstrap import stratified_bootstrap
from fedmeta.report.privacy_section import privacy_spend
from fedmeta.tasks.calibration import brier, ece, fit_temperature, reliability_bins, scaled_probabilities
from fedmeta.tasks import Task
from fedmeta.tasks.binary import auc

__all__ = ["NewHospital", "read_new_hospital", "onboard", "split_metrics", "ADAPTATION_SETTINGS"]

# What ``--set`` may change: how the hospital adapts and trains alone, never the model it adapts.
ADAPTATION_SETTINGS = ("meta.inner_steps", "meta.inner_lr", "local.lr", "local.steps", "local.weight_decay",
                       "local.batch_size")


@dataclass(frozen=True)
class NewHospital:
    path: Path
    x: np.ndarray  # normalised with the hospital's own statistics
    y: np.ndarray
    support: np.ndarray  # rows adapted on
    evaluated: np.ndarray  # every other row
    ignored_columns: tuple[str, ...]


def adaptation_config(run: FinishedRun, overrides: list[str]) -> ExperimentConfig:
    """The run's config with ``--set`` adaptation settings applied (anything else is refused)."""
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key not in ADAPTATION_SETTINGS:
            raise FedMetaError(f"--set {key}: onboarding changes only how the hospital adapts "
                               f"({', '.join(ADAPTATION_SETTINGS)}); the model is the run's")
    return config_from_json(json.dumps(apply_overrides(run.results["config"], overrides)))


def _match_schema(x: np.ndarray, features: list[str], schema: dict[str, Any], path: Path) -> tuple[np.ndarray, tuple[str, ...]]:
    """``x`` with the run's columns in the run's order (extra columns left out), or a one-line error."""
    expected = [str(f) for f in schema.get("features", [])]
    shape = tuple(schema["input_shape"])
    if expected:
        missing = [f for f in expected if f not in features]
        if missing:
            raise FedMetaError(f"{path}: missing column(s) {', '.join(missing)} of the run's schema "
                               f"({len(expected)} features)")
        x = x[:, [features.index(f) for f in expected]]
        return x, tuple(f for f in features if f not in expected)
    if tuple(x.shape[1:]) != shape:
        raise FedMetaError(f"{path}: examples of shape {tuple(x.shape[1:])}; the run's model takes {shape}")
    return x, ()


def read_new_hospital(path: Path, run: FinishedRun, cfg: ExperimentConfig, shots: int, seed: int,
                      task: Task) -> NewHospital:
    raw, features = read_site_file(path, cfg)
    if run.schema.get("task", cfg.task.kind) != cfg.task.kind:
        raise FedMetaError(f"{run.path}: its schema's task {run.schema['task']!r} is not its config's")
    x, ignored = _match_schema(raw.x, features, run.schema, path)
    strata = task.strata(raw.y)
    counts = np.bincount(strata, minlength=task.n_strata)
    if counts.min() < shots + 1:
        worst = int(counts.argmin())
        raise FedMetaError(f"{path}: {counts[worst]} case(s) of class {worst}; --shots {shots} needs at least "
                           f"{shots + 1} of each class ({shots} to adapt on, the rest to evaluate)")
    support = np.sort(sample_k_shot(raw.y, shots, np.random.default_rng([seed, 7_919]), task))
    evaluated = np.setdiff1d(np.arange(len(raw.y)), support)
    normalise = NORMALISERS[x.ndim](x)  # the hospital's own statistics, from features only
    return NewHospital(path, normalise(x), raw.y.astype(np.float32), support, evaluated, ignored)


def split_metrics(task: Task, y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """The task's metrics, and for probabilities the Brier score, calibration error and per-class rates."""
    out = dict(task.metrics(y, p))
    if task.kind == "survival":
        return out
    yi = np.asarray(y).astype(np.int64)
    if "brier" not in out:  # the binary task reports both itself
        out |= {"brier": brier(yi, p), "ece": ece(yi, p)}
    if p.ndim == 1:
        chosen = p >= 0.5
        return out | {"sensitivity": float(chosen[yi == 1].mean()), "specificity": float((~chosen[yi == 0]).mean())}
    top = p.argmax(axis=1)
    for c in range(p.shape[1]):
        if 0 < np.sum(yi == c) < len(yi):
            out[f"auc_class_{c}"] = auc(yi == c, p[:, c])
        if np.any(yi == c):
            out[f"recall_class_{c}"] = float(np.mean(top[yi == c] == c))
    return out


def _outputs(forward, x: np.ndarray) -> torch.Tensor:  # noqa: ANN001 - a model as a function
    with torch.no_grad():
        return forward(torch.as_tensor(x)).detach()


def _forwards(learned: LearnedState, site: NewHospital, cfg: ExperimentConfig, seed: int) -> dict[str, Any]:
    """Each compared model as a function of the inputs."""
    model, state, algorithm, task = learned.model, learned.state, learned.algorithm, learned.task
    xs, ys = torch.as_tensor(site.x[site.support]), torch.as_tensor(site.y[site.support])
    out: dict[str, Any] = {}
    if algorithm.predicts_unadapted:
        weights = algorithm.model_params(state)
        out["global"] = lambda x: functional_call(model, weights, (x,))
    out["adapted"] = algorithm.adapted_forward(model, state, xs, ys, InnerLoop(cfg.meta.inner_steps, cfg.meta.inner_lr, task))
    alone = build_model(cfg.model, tuple(site.x.shape[1:]), cfg.seed, task.n_outputs)
    params = train_alone(alone, site.x[site.support], site.y[site.support], cfg, np.random.default_rng([seed, 3]))
    out["local only"] = lambda x: functional_call(alone, params, (x,))
    return out


def onboard(run: FinishedRun, path: Path, *, shots: int, seed: int, overrides: list[str], temperature: bool,
            resamples: int) -> dict[str, Any]:
    """Everything ``report.json`` holds; ``_figures`` carries the arrays the page draws."""
    cfg = adaptation_config(run, overrides)
    learned = learned_state(run, cfg)
    task = learned.task
    if temperature and task.kind == "survival":
        raise FedMetaError("--temperature: a survival model's risk scores are not probabilities to calibrate")
    site = read_new_hospital(path, run, cfg, shots, seed, task)
    forwards = _forwards(learned, site, cfg, seed)
    x_eval, y_eval = site.x[site.evaluated], site.y[site.evaluated]
    predictions = {name: task.predictions(_outputs(f, x_eval)) for name, f in forwards.items()}
    fitted = None
    if temperature:
        support_logits = _outputs(forwards["adapted"], site.x[site.support]).numpy().astype(np.float64)
        fitted = fit_temperature(support_logits, site.y[site.support])
        logits = _outputs(forwards["adapted"], x_eval).numpy().astype(np.float64)
        predictions["adapted, temperature-scaled"] = scaled_probabilities(logits, fitted)
    strata = task.strata(y_eval)
    models = {name: stratified_bootstrap(lambda rows, p=p: split_metrics(task, y_eval[rows], p[rows]), strata,
                                         resamples=resamples, seed=seed) for name, p in predictions.items()}
    # Paired: both models scored on each resample of the same cases (the same resamples as above).
    pairs = [(a, b) for a, b in (("adapted", "global"), ("adapted", "local only")) if b in predictions]
    primary = task.primary
    differences = stratified_bootstrap(
        lambda rows: {f"{a} − {b}": task.metrics(y_eval[rows], predictions[a][rows])[primary]
                      - task.metrics(y_eval[rows], predictions[b][rows])[primary] for a, b in pairs},
        strata, resamples=resamples, seed=seed)
    order = np.random.default_rng([seed, 11]).permutation(len(y_eval))[:MAX_ATTRIBUTED]
    attributions = {name: attribute(forwards[name], x_eval[order], y_eval[order])
                    for name in ("global", "adapted") if name in forwards}
    method = attributions["adapted"][0]
    counts = np.bincount(task.strata(site.y), minlength=task.n_strata)
    return {
        "run": {"dir": str(run.path), "algorithm": cfg.meta.algorithm, "seed": run.cfg.seed,
                "kept_round": run.results.get("kept_round"), "selection": run.results.get("selection"),
                "data_note": run.results.get("data_note", ""), "task": task.kind, "primary": task.primary},
        "hospital": {"file": str(path), "cases": int(len(site.y)), "per_class": [int(c) for c in counts],
                     "adapted_on": int(len(site.support)), "evaluated": int(len(site.evaluated)),
                     "ignored_columns": list(site.ignored_columns),
                     "normalisation": "statistics of this hospital's own cases (features only)"},
        "settings": {"shots": shots, "seed": seed, "inner_steps": cfg.meta.inner_steps, "inner_lr": cfg.meta.inner_lr,
                     "local": cfg.local.model_dump(), "bootstrap_resamples": resamples, "temperature_scaling": temperature,
                     "overrides": overrides},
        "support_rows": [int(i) for i in site.support],
        "models": models,
        "differences": differences,  # in the primary metric, paired by case
        "temperature": fitted,
        "calibration": {name: reliability_bins(y_eval, p) for name, p in predictions.items()}
        if task.kind != "survival" else {},
        "attribution": {"method": method, "patients": int(len(order)),
                        **({"features": [{"feature": f, **{m: float(a[1][i]) for m, a in attributions.items()}}
                                         for i, f in enumerate(run.schema.get("features", []))]}
                           if method == "integrated gradients" else {})},
        "privacy": privacy_spend(run),
        "data_left_site": False,
        "_figures": {"maps": {m: a[1] for m, a in attributions.items()} if method == "saliency" else {}},
    }
