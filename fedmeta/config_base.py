"""The base of every config section: frozen, unknown keys refused; and the registry check a
section's ``kind`` runs (the registries are imported late: they import torch)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["Section", "registered"]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="constants")


def registered(kind: str, module: str, registry: str, what: str, hint: str = "") -> str:
    """``kind`` if the registry ``module.registry`` holds it (imported late: the registries import
    torch, and a config is checked before anything heavy)."""
    import importlib

    names = getattr(importlib.import_module(module), registry)
    if kind not in names:
        raise ValueError(f"unknown {what} (expected one of {', '.join(names)}{hint})")
    return kind
