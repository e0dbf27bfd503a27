"""Typed, validated experiment configuration, loaded from a TOML file plus ``key=value`` overrides.

One frozen object describes a whole run; it is written next to the results so every run can be
reproduced from its output directory alone.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from fedmeta.config_base import Section as _Section
from fedmeta.config_base import registered as _registered
from fedmeta.data_config import DataConfig, MedMNISTConfig, SyntheticConfig, SyntheticImagesConfig
from fedmeta.errors import FedMetaError
from fedmeta.privacy_config import HospitalPrivacyConfig, PrivacyConfig

__all__ = [
    "DataConfig",
    "SyntheticConfig",
    "SyntheticImagesConfig",
    "MedMNISTConfig",
    "ModelConfig",
    "TaskConfig",
    "MetaConfig",
    "FederationConfig",
    "ServerConfig",
    "EvalConfig",
    "LocalConfig",
    "HospitalPrivacyConfig",
    "PrivacyConfig",
    "AuditConfig",
    "TuneConfig",
    "ExperimentConfig",
    "load_config",
    "apply_overrides",
    "config_from_json",
    "with_settings",
    "config_toml",
]


class TaskConfig(_Section):
    """What is learned from the labels (``fedmeta.tasks``): its loss, metrics and k-shot strata."""

    kind: str = "binary"
    classes: int = Field(0, ge=0, description="multiclass: the number of classes K (labels 0..K-1)")

    @field_validator("kind")
    @classmethod
    def _known(cls, kind: str) -> str:
        return _registered(kind, "fedmeta.tasks", "TASKS", "task")

    @model_validator(mode="after")
    def _classes(self) -> "TaskConfig":
        if self.kind == "multiclass" and self.classes < 2:
            raise ValueError("classes: a multiclass task needs task.classes >= 2 (labels 0..classes-1)")
        if self.kind == "binary" and self.classes not in (0, 2):
            raise ValueError("classes: a binary task has 2 classes (set task.kind = \"multiclass\" for more)")
        return self


class ModelConfig(_Section):
    """The model (``fedmeta.models``): ``kind`` from the registry (``mlp`` for tables, ``hidden = []``
    being logistic regression; ``convnet`` and ``resnet`` for images), or ``factory =
    "package.module:function"``, the user's own ``nn.Module``."""

    kind: str = "mlp"
    hidden: list[int] = Field(default_factory=lambda: [64, 64], description="mlp: hidden layer sizes")
    width: int = Field(32, ge=2, description="convnet: channels of each block; resnet: of the first stage")
    blocks: int = Field(2, ge=1, description="resnet: basic blocks per stage")
    factory: str = Field("", description="\"package.module:function\" called as function(input_shape, n_outputs, "
                         "seed); setting it selects it")

    @field_validator("kind")
    @classmethod
    def _known(cls, kind: str) -> str:
        return _registered(kind, "fedmeta.models", "MODELS", "model", ", or set model.factory")

    @field_validator("factory")
    @classmethod
    def _importable_path(cls, factory: str) -> str:
        module, sep, function = factory.partition(":")
        if factory and not (sep and module and function.isidentifier()
                            and all(p.isidentifier() for p in module.split("."))):
            raise ValueError("expected \"package.module:function\"")
        return factory

    @model_validator(mode="after")
    def _positive(self) -> "ModelConfig":
        if any(h <= 0 for h in self.hidden):
            raise ValueError("hidden sizes must be positive")
        return self


class MetaConfig(_Section):
    """Local meta-training on one hospital: episodes, inner loop and local outer steps."""

    algorithm: str = "maml"
    inner_steps: int = Field(5, ge=1)
    inner_lr: float = Field(0.3, gt=0)
    shots: int = Field(5, ge=1, description="support examples per class in an episode")
    query: int = Field(20, ge=1, description="query examples per episode")
    meta_batch: int = Field(8, ge=1, description="episodes per outer step")
    outer_steps: int = Field(5, ge=1, description="local outer steps per round")
    outer_lr: float = Field(0.5, gt=0, description="local outer learning rate")
    episode_chunk: int = Field(0, ge=0, description="episodes differentiated together (memory: a conv net's "
                               "second-order graph is large); 0 = automatic")
    embedding: int = Field(64, ge=1, description="metric-based learners (protonet): the size of the embedding "
                           "the model outputs")
    ditto_lambda: float = Field(0.1, ge=0, description="ditto: pull lambda of each hospital's personal model "
                                "towards the global one")
    prox_mu: float = Field(0.01, ge=0, description="fedprox: weight mu of the proximal term "
                           "mu/2 * ||theta - theta_global||^2 in each hospital's local objective")


class FederationConfig(_Section):
    """Rounds, sampling, fault tolerance and the resources Ray gives each simulated hospital.

    A round completes with the hospitals that replied within ``reply_timeout_s`` if at least
    ``min_train_nodes`` of them sent a usable update; otherwise the global model is left unchanged.
    """

    rounds: int = Field(20, ge=1)
    fraction_train: float = Field(1.0, gt=0, le=1)
    min_train_nodes: int = Field(1, ge=1)
    client_cpus: float = Field(1.0, gt=0)
    client_gpus: float = Field(0.0, ge=0)
    reply_timeout_s: float = Field(600.0, gt=0, description="a round goes on without hospitals that have not "
                                   "replied within this time")
    connect_timeout_s: float = Field(600.0, gt=0, description="how long the server waits for the hospitals to "
                                     "connect and identify themselves at the start")


class ServerConfig(_Section):
    """The server meta-optimizer applied to the aggregated meta-update."""

    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(1.0, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0, description="L2 penalty added to the meta-update (the global model's)")


class EvalConfig(_Section):
    """Few-shot evaluation: adapt on ``shots`` per class from train, score on test (and validation).

    ``keep = "best"`` keeps the model of the evaluated round with the best validation AUC, and stops
    after ``patience`` evaluations without improvement (0: never); it needs a validation split.
    """

    shots: int = Field(5, ge=1)
    draws: int = Field(10, ge=1)
    every: int = Field(1, ge=1, description="evaluate every N rounds (and always the last)")
    split: Literal["test", "validation"] = Field("test", description="the split scores are reported on; "
                                                 "\"validation\" in tuning trials, which never read a test split")
    adapt_on: Literal["shots", "all"] = Field("shots", description="how a participating hospital adapts: on k "
                                              "shots per class, as a new one would, or on its whole train split, "
                                              "as a hospital that took part would (held-out ones: k shots)")
    keep: Literal["last", "best"] = Field("last", description="the model a run ends with: its last round's, or "
                                          "its best round's on validation")
    patience: int = Field(0, ge=0, description="with keep = best: stop after this many evaluations without a "
                          "better validation AUC (0: never)")


class LocalConfig(_Section):
    """The ``local`` baseline: each hospital trains alone on its own data."""

    steps: int = Field(300, ge=1)
    lr: float = Field(0.01, gt=0)
    batch_size: int = Field(32, ge=1)
    weight_decay: float = Field(0.0, ge=0, description="L2 penalty (Adam's weight_decay)")
    lr_schedule: Literal["constant", "cosine"] = Field("constant", description="Adam's rate over the steps: "
                                                       "constant, or cosine decay to 0")


class AuditConfig(_Section):
    """Canaries for the one-run empirical privacy audit (``fedmeta audit --empirical``).

    ``canaries`` gradient canaries, drawn from the audit seed, join ``hospital``'s training as
    records would, each with probability 1/2. 0 = no audit (the normal case).
    """

    canaries: int = Field(0, ge=0)
    hospital: str = ""
    seed: int = Field(0, ge=0)


class TuneConfig(_Section):
    """``fedmeta tune``: narrow or fix the algorithm's search space (``fedmeta.tuning.spaces``).

    ``space`` maps a dotted setting to a fixed value, a ``[low, high]`` range inside the declared one,
    or a list of choices. In the unseen-hospital modes, ``validation_hospitals`` training hospitals
    stand in for the unseen one during tuning.
    """

    space: dict[str, Any] = Field(default_factory=dict)
    validation_hospitals: int = Field(1, ge=1)
    validation_draws: int = Field(1, ge=1, description="each trial is repeated on this many validation splits (and "
                                  "stand-in hospitals) and scored by their mean: a small split is a noisy judge")
    refit: bool = Field(True, description="best.toml trains on the whole train split (no validation part), as a "
                        "plain script refits its chosen model")
    warmup_rounds: int = Field(5, ge=0, description="rounds before the pruner may stop a trial")


class ExperimentConfig(_Section):
    """A whole run."""

    seed: int = Field(0, ge=0)
    data: DataConfig = Field(default_factory=DataConfig)
    task: TaskConfig = Field(default_factory=TaskConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    meta: MetaConfig = Field(default_factory=MetaConfig)
    federation: FederationConfig = Field(default_factory=FederationConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    local: LocalConfig = Field(default_factory=LocalConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)

    @model_validator(mode="after")
    def _selection_needs_validation(self) -> "ExperimentConfig":
        if self.eval.split == "validation" and self.data.validation_fraction == 0:
            raise ValueError("eval.split = \"validation\" needs a validation split: set data.validation_fraction > 0")
        if self.eval.keep == "best" and self.data.validation_fraction == 0:
            raise ValueError("eval.keep = \"best\" selects on validation: set data.validation_fraction > 0")
        if self.eval.keep == "best" and (self.data.held_out or self.data.leave_one_out):
            raise ValueError("eval.keep = \"best\" would select on the unseen hospitals' own data: with held-out "
                             "hospitals, choose the rounds with `fedmeta tune` (it validates on training hospitals)")
        return self

    @model_validator(mode="after")
    def _record_dp_needs_a_per_record_loss(self) -> "ExperimentConfig":
        if self.task.kind == "survival" and self.privacy.mode == "record":
            raise ValueError("privacy.mode = \"record\": Cox's partial likelihood couples the records of a risk set, "
                             "so per-record clipping does not bound one patient's influence; use privacy.mode = "
                             "\"client\" (hospital-level DP) or \"none\" (docs/privacy.md)")
        return self

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)


def _format_validation_error(source: str, err: ValidationError) -> str:
    first = err.errors()[0]
    field = ".".join(str(p) for p in first["loc"])
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    value = first.get("input")
    shown = "" if first["type"] in ("extra_forbidden", "missing") or isinstance(value, dict) else f" (got {value!r})"
    return f"{source}: {field + ': ' if field else ''}{msg}{shown}"


def _validate(raw: dict[str, Any], source: str) -> ExperimentConfig:
    try:
        cfg = ExperimentConfig.model_validate(raw)
    except ValidationError as err:
        raise FedMetaError(_format_validation_error(source, err)) from None
    _check_names(cfg, source)
    return cfg


def _check_names(cfg: ExperimentConfig, source: str) -> None:
    # Imported here: the registries import torch-heavy modules that the config must not need.
    from fedmeta.data.sources import SOURCES
    from fedmeta.meta.algorithms import ALGORITHMS

    if cfg.data.source not in SOURCES:
        raise FedMetaError(
            f"{source}: data.source: unknown data source {cfg.data.source!r} "
            f"(expected one of {', '.join(sorted(SOURCES))})"
        )
    if cfg.meta.algorithm not in ALGORITHMS:
        raise FedMetaError(
            f"{source}: meta.algorithm: unknown algorithm {cfg.meta.algorithm!r} "
            f"(expected one of {', '.join(sorted(ALGORITHMS))})"
        )
    if cfg.task.kind not in ALGORITHMS[cfg.meta.algorithm].tasks:
        raise FedMetaError(f"{source}: meta.algorithm: {cfg.meta.algorithm!r} does not learn a {cfg.task.kind!r} task "
                           f"(it learns {', '.join(ALGORITHMS[cfg.meta.algorithm].tasks)})")


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str], source: str = "--set") -> dict[str, Any]:
    """Return a copy of ``raw`` with dotted ``key=value`` overrides applied (values parsed as TOML)."""
    out = json.loads(json.dumps(raw))
    for item in overrides:
        if "=" not in item:
            raise FedMetaError(f"{source}: {item!r} is not of the form key=value")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise FedMetaError(f"{source}: {key}: {p} is not a section")
        node[parts[-1]] = _parse_value(text.strip())
    return out


def load_config(
    path: str | Path, overrides: list[str] | None = None, data_dir: str | None = None
) -> ExperimentConfig:
    """Read a TOML config, apply overrides and ``--data-dir``, and validate it."""
    path = Path(path)
    if not path.is_file():
        raise FedMetaError(f"{path}: config file not found")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise FedMetaError(f"{path}: cannot read config: {err}") from None
    except tomllib.TOMLDecodeError as err:
        raise FedMetaError(f"{path}: invalid TOML: {err}") from None
    raw = apply_overrides(raw, overrides or [])
    if data_dir is not None:
        raw.setdefault("data", {})["dir"] = str(Path(data_dir).resolve())
    elif raw.get("data", {}).get("dir"):
        raw["data"]["dir"] = str(Path(raw["data"]["dir"]).resolve())
    return _validate(raw, str(path))


def with_settings(cfg: ExperimentConfig, values: dict[str, Any], source: str) -> ExperimentConfig:
    """``cfg`` with dotted settings replaced, validated again. ``model.hidden`` may be given a width:
    every hidden layer gets it."""
    raw = json.loads(cfg.to_json())
    for key, value in values.items():
        if key == "model.hidden" and isinstance(value, int):
            value = [value] * len(cfg.model.hidden)
        *parents, leaf = key.split(".")
        node = raw
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return _validate(raw, source)


def config_toml(cfg: ExperimentConfig) -> str:
    """The config as TOML that ``load_config`` reads back to the same config."""
    import tomli_w

    return tomli_w.dumps(json.loads(cfg.model_dump_json(exclude_none=True)))


def same_config(stored: str, cfg: ExperimentConfig) -> bool:
    """Whether ``stored`` (an earlier ``to_json``) is ``cfg``, read with this version's config: a key
    added since takes its default on both sides. Unreadable means different."""
    try:
        return config_from_json(stored).to_json() == cfg.to_json()
    except (FedMetaError, ValueError, TypeError):
        return False


def config_from_json(text: str) -> ExperimentConfig:
    """Rebuild a config that was resolved and serialised by ``ExperimentConfig.to_json``."""
    return _validate(json.loads(text), "resolved config")
