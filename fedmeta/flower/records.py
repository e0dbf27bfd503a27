"""Conversion between parameter dicts and Flower records, with the checks a hostile peer needs."""

from __future__ import annotations

from collections import OrderedDict

import torch
from flwr.app import ArrayRecord

from fedmeta.meta.functional import Params

__all__ = ["params_to_record", "record_to_params", "RecordError"]


class RecordError(ValueError):
    """An ArrayRecord that does not match the model (names, shapes) or holds NaN/inf."""


def params_to_record(params: Params) -> ArrayRecord:
    return ArrayRecord(OrderedDict((k, v.detach().cpu()) for k, v in params.items()))


def record_to_params(record: ArrayRecord, like: Params, device: torch.device | None = None) -> Params:
    """Parameters from ``record``, checked against the names and shapes of ``like``."""
    try:
        state = record.to_torch_state_dict()
    except Exception as err:  # a malformed record raises from deep inside Flower's array code
        raise RecordError(f"cannot decode arrays: {err}") from None
    if list(state) != list(like):
        raise RecordError(f"array names {sorted(state)} do not match the model's {sorted(like)}")
    out: Params = {}
    for name, ref in like.items():
        t = state[name]
        if tuple(t.shape) != tuple(ref.shape):
            raise RecordError(f"array {name!r} has shape {tuple(t.shape)}, the model expects {tuple(ref.shape)}")
        if not torch.isfinite(t).all():
            raise RecordError(f"array {name!r} contains NaN or inf")
        out[name] = t.to(dtype=ref.dtype, device=device or ref.device)
    return out
