"""The experiment config of a Flower run, from ``context.run_config`` (``[tool.flwr.app.config]``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedmeta.config import ExperimentConfig, config_from_json, load_config

__all__ = ["config_from_run_config"]


def config_from_run_config(run_config: Mapping[str, Any]) -> ExperimentConfig:
    text = str(run_config.get("config-json", "") or "")
    if text:
        return config_from_json(text)
    overrides = str(run_config.get("overrides", "") or "").split()
    data_dir = str(run_config.get("data-dir", "") or "") or None
    return load_config(str(run_config.get("config-file", "configs/default.toml")), overrides, data_dir)
