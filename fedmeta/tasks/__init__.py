"""The tasks fedmeta learns, by ``[task] kind``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedmeta.tasks.base import Task, metric_label, wire_name
from fedmeta.tasks.binary import BinaryTask
from fedmeta.tasks.multiclass import MulticlassTask
from fedmeta.tasks.survival import SurvivalTask

if TYPE_CHECKING:
    from fedmeta.config import TaskConfig

__all__ = ["TASKS", "BinaryTask", "MulticlassTask", "SurvivalTask", "Task", "build_task", "metric_label",
           "wire_name"]

TASKS: dict[str, type[Task]] = {t.kind: t for t in (BinaryTask, MulticlassTask, SurvivalTask)}


def build_task(cfg: TaskConfig) -> Task:
    """The configured task (``TaskConfig`` has checked its kind)."""
    return TASKS[cfg.kind].from_config(cfg)
