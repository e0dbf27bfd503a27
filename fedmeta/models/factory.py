"""The user's own ``nn.Module``: ``[model] factory = "package.module:function"``, importable from the
working directory or ``PYTHONPATH``, called as ``function(input_shape, n_outputs, seed)``."""

from __future__ import annotations

import importlib
import os
import sys

from torch import nn

from fedmeta.config import ModelConfig
from fedmeta.errors import FedMetaError

__all__ = ["build_from_factory"]


def build_from_factory(cfg: ModelConfig, input_shape: tuple[int, ...], n_outputs: int, seed: int) -> nn.Module:
    module_name, _, function_name = cfg.factory.partition(":")
    where = f"model.factory {cfg.factory!r}"
    if os.getcwd() not in sys.path:  # "importable from the working directory", as `python -m` would
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001 - whatever the user's module raises on import, say it in one line
        raise FedMetaError(f"{where}: cannot import {module_name!r}: {type(err).__name__}: {err}") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise FedMetaError(f"{where}: {module_name!r} has no function {function_name!r}")
    try:
        model = function(tuple(input_shape), n_outputs, seed)
    except Exception as err:  # noqa: BLE001
        raise FedMetaError(f"{where}: calling it with (input_shape={tuple(input_shape)}, n_outputs={n_outputs}, "
                           f"seed={seed}) raised {type(err).__name__}: {err}") from None
    if not isinstance(model, nn.Module):
        raise FedMetaError(f"{where}: returned {type(model).__name__}, not a torch.nn.Module")
    return model
