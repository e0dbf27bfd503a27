"""Typed, validated experiment configuration, loaded from a TOML file plus ``key=value`` overrides.

One frozen object describes a whole run; it is written next to the results so every run can be
reproduced from its output directory alone.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from fedmeta.config_base import Section as _Section
from fedmeta.data_config import DataConfig, MedMNISTConfig, SyntheticConfig, SyntheticImagesConfig
from fedmeta.errors import FedMetaError
from fedmeta.learning_config import LocalConfig, MetaConfig, ModelConfig, ServerConfig, TaskConfig
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
