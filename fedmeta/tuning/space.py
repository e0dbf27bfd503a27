"""Search spaces: what ``fedmeta tune`` may change, declared by each algorithm next to its definition.

A ``Param`` names a dotted config setting and its range (float or int, optionally log-scaled) or
its choices. ``only_if`` samples it only when another setting has a given value (Adam's server
rate lives on another scale than SGD's). ``model.hidden`` in a space stands for the model's width,
which its kind names (``fedmeta.models.WIDTH_SETTING``: an MLP's ``model.hidden``, every hidden
layer taking the width; a conv net's ``model.width``); a model without hidden layers or the user's
own has no width to tune. A config's ``[tune] space`` fixes a setting
(a scalar), narrows a range (``[low, high]``) or the choices (a list).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from fedmeta.config import ExperimentConfig
from fedmeta.errors import FedMetaError
from fedmeta.models import WIDTH_SETTING

__all__ = ["Param", "SearchSpace", "FEDERATED_SPACE", "LOCAL_SPACE", "resolve_space"]


@dataclass(frozen=True)
class Param:
    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: tuple[Any, ...] = ()
    only_if: tuple[str, Any] | None = None

    @property
    def name(self) -> str:
        """The Optuna parameter name (one per condition: its distribution must not change)."""
        return self.key if self.only_if is None else f"{self.key}|{self.only_if[1]}"

    def suggest(self, trial: Any) -> Any:
        if self.choices:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)  # type: ignore[arg-type]
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)  # type: ignore[arg-type]

    def narrowed(self, value: Any, where: str) -> Param:
        if self.choices:
            if not isinstance(value, list) or not value:
                raise FedMetaError(f"{where}: expected a value or a non-empty list of choices, got {value!r}")
            return replace(self, choices=tuple(value))
        if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, int | float) for v in value)
                and 0 < value[0] <= value[1]):
            raise FedMetaError(f"{where}: expected a value or [low, high] with 0 < low <= high, got {value!r}")
        return replace(self, low=value[0], high=value[1])


SearchSpace = tuple[Param, ...]

# Federated algorithms (meta-learners and FedAvg alike: for FedAvg the inner loop is its fine-tuning
# at evaluation, the outer one its local training). Rounds are not sampled: a trial runs
# federation.rounds and its best validation round becomes the tuned number of rounds.
FEDERATED_SPACE: SearchSpace = (
    Param("meta.inner_lr", 0.01, 1.0, log=True),
    Param("meta.inner_steps", 1, 10, integer=True),
    Param("meta.outer_lr", 0.03, 2.0, log=True),
    Param("meta.outer_steps", 1, 10, integer=True),
    Param("meta.meta_batch", 4, 32, log=True, integer=True),
    Param("server.optimizer", choices=("sgd", "adam")),
    Param("server.lr", 0.1, 2.0, log=True, only_if=("server.optimizer", "sgd")),
    Param("server.lr", 0.003, 0.3, log=True, only_if=("server.optimizer", "adam")),
    Param("server.weight_decay", 1e-6, 0.1, log=True),
    Param("model.hidden", choices=(32, 64, 128)),
)

# A model trained alone (the local baseline, and the pooled one before its adaptation).
LOCAL_SPACE: SearchSpace = (
    Param("local.lr", 1e-3, 0.3, log=True),
    Param("local.steps", 20, 2000, log=True, integer=True),
    Param("local.weight_decay", 1e-6, 0.3, log=True),
    Param("model.hidden", choices=(32, 64, 128)),
)


def resolve_space(space: SearchSpace, cfg: ExperimentConfig, algorithm: str,
                  others: frozenset[str] = frozenset()) -> tuple[SearchSpace, dict[str, Any]]:
    """The params to sample and the fixed settings, after ``cfg.tune.space`` (checked here). A key
    of another algorithm's space (``others``) is not this one's business: one config may narrow the
    spaces of all the algorithms a comparison tunes."""
    fixed: dict[str, Any] = {}
    params = [q for p in space for q in _for_model(p, cfg)]
    keys = {p.key for p in params}
    for key, value in cfg.tune.space.items():
        where = f"tune.space.{key}"
        if key not in keys and key in others:
            continue
        if key not in keys:
            raise FedMetaError(f"{where}: not in {algorithm}'s search space (it has {', '.join(sorted(keys))}) "
                               "nor in any other")
        if isinstance(value, list):
            params = [p.narrowed(value, where) if p.key == key else p for p in params]
        else:
            fixed[key] = value
            params = [p for p in params if p.key != key]
    sampled = {p.key for p in params} | set(fixed)
    params = [p for p in params if p.only_if is None or p.only_if[0] in sampled]
    return tuple(params), fixed


def _for_model(param: Param, cfg: ExperimentConfig) -> tuple[Param, ...]:
    """``param``, or for the width placeholder the width setting of the configured model (none for
    a linear MLP or a factory model, whose width fedmeta does not know)."""
    if param.key != "model.hidden":
        return (param,)
    if cfg.model.factory or cfg.model.kind not in WIDTH_SETTING or (cfg.model.kind == "mlp" and not cfg.model.hidden):
        return ()
    key, choices = WIDTH_SETTING[cfg.model.kind]
    return (replace(param, key=key, choices=choices),)


def suggest(space: SearchSpace, fixed: dict[str, Any], trial: Any) -> dict[str, Any]:
    """One trial's settings: the fixed ones, then each param whose condition holds."""
    values = dict(fixed)
    for p in space:
        if p.only_if is None or values.get(p.only_if[0]) == p.only_if[1]:
            values[p.key] = p.suggest(trial)
    return values
