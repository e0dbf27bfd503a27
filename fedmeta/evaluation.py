"""Few-shot evaluation: adapt an initialisation on k shots per class of a hospital's train split,
score on its test (or validation) split (the task's metrics), averaged over several
k-shot draws."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from fedmeta.config import EvalConfig, MetaConfig
from fedmeta.data.episodes import sample_k_shot
from fedmeta.data.hospital import Hospital
from fedmeta.meta.algorithms import InnerLoop, MetaAlgorithm, get_algorithm
from fedmeta.meta.functional import Params, per_episode_copies
from fedmeta.tasks import Task

__all__ = ["Score", "score_outputs", "score_params", "evaluate_few_shot", "mean_score", "scored_splits", "scores_row",
           "NonFiniteModelError"]


class NonFiniteModelError(ValueError):
    """Parameters that give NaN/inf predictions: there is no metric to report."""


@dataclass(frozen=True)
class Score:
    """The task's metrics of one split, its primary metric's name, and the comparisons that metric
    made on the split (``Task.pairs``: how much it can tell)."""

    metrics: dict[str, float]
    primary: str
    pairs: int

    @property
    def value(self) -> float:
        return self.metrics[self.primary]

    def __getitem__(self, name: str) -> float:
        return self.metrics[name]


def score_outputs(outputs: torch.Tensor, y: np.ndarray, hospital: Hospital, task: Task) -> Score:
    """The task's metrics of a model's ``outputs`` for labels ``y`` of one of the hospital's splits."""
    predictions = task.predictions(outputs)
    if not np.isfinite(predictions).all():
        raise NonFiniteModelError(f"hospital {hospital.name}: the model's predictions are not finite "
                                  "(diverged training or adaptation)")
    return Score(task.metrics(y, predictions), task.primary, task.pairs(y))


def score_params(model: nn.Module, params: Params, hospital: Hospital, device: torch.device, task: Task,
                 split: str = "test") -> Score:
    """The task's metrics of ``params`` on the hospital's ``split``."""
    x, y = hospital.split(split)
    with torch.no_grad():
        outputs = functional_call(model, params, (torch.as_tensor(x, device=device),))
    return score_outputs(outputs, y, hospital, task)


def evaluate_few_shot(
    model: nn.Module, params: Params, hospital: Hospital, *, task: Task, eval_cfg: EvalConfig,
    meta_cfg: MetaConfig, seed: int, device: torch.device, splits: tuple[str, ...] = ("test",),
    participant: bool = False, algorithm: MetaAlgorithm | None = None,
) -> dict[str, Score]:
    """Per split, the mean score over ``eval_cfg.draws`` k-shot adaptations (``meta_cfg`` inner
    steps and lr); every split is scored with the same adapted models. A ``participant`` (a hospital
    that trained) with ``eval.adapt_on = "all"`` adapts once, on its whole train split.
    ``algorithm``: whose adaptation, on its state ``params`` (default: fine-tuning every weight)."""
    algorithm = algorithm or get_algorithm("fedavg")
    rng = np.random.default_rng([seed, 7_919])
    x = torch.as_tensor(hospital.x_train, device=device)
    y = torch.as_tensor(hospital.y_train, device=device)
    if participant and eval_cfg.adapt_on == "all":
        chosen = [np.arange(hospital.n_train)]
    else:
        chosen = [sample_k_shot(hospital.y_train, eval_cfg.shots, rng, task) for _ in range(eval_cfg.draws)]
    idx = torch.as_tensor(np.stack(chosen), device=device)
    # All draws adapt at once (one copy of the state per draw), and every split is scored with them.
    start = per_episode_copies({k: v.to(device) for k, v in params.items()}, len(chosen))
    parts = [hospital.split(split) for split in splits]
    x_all = torch.as_tensor(np.concatenate([x_split for x_split, _ in parts]), device=device)
    inner = InnerLoop(meta_cfg.inner_steps, meta_cfg.inner_lr, task)
    outputs = algorithm.draw_outputs(model, start, x[idx], y[idx], x_all, inner)
    bounds = np.cumsum([0, *(len(y_split) for _, y_split in parts)])
    return {split: mean_score([score_outputs(out[bounds[i]:bounds[i + 1]], parts[i][1], hospital, task)
                               for out in outputs])
            for i, split in enumerate(splits)}


def scored_splits(hospital: Hospital, eval_cfg: EvalConfig) -> tuple[str, ...]:
    """The reported split (``eval.split``), then validation when it is another one that exists."""
    extra = ("validation",) if eval_cfg.split != "validation" and len(hospital.y_val) else ()
    return (eval_cfg.split, *extra)


def scores_row(scores: dict[str, Score], role: str, eval_cfg: EvalConfig) -> dict[str, float | str]:
    """One hospital's row: the task's metrics on the reported split, and on validation (``val_*``,
    with ``val_pairs``)."""
    val = scores.get("validation")
    extra = {**{f"val_{k}": v for k, v in val.metrics.items()}, "val_pairs": val.pairs} if val else {}
    return {**scores[eval_cfg.split].metrics, **extra, "role": role}


def mean_score(scores: list[Score]) -> Score:
    """The mean of each metric over scores of one split (its pairs are the split's)."""
    first = scores[0]
    return Score({k: float(np.mean([s[k] for s in scores])) for k in first.metrics}, first.primary, first.pairs)
