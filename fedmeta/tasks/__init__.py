"""The tasks fedmeta learns, by ``[task] kind``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedmeta.tasks.base import Task
from fedmeta.tasks.binary import BinaryTask

if TYPE_CHECKING:
    from fedmeta.config import TaskConfig

__all__ = ["TASKS", "BinaryTask", "Task", "build_task"]

TASKS: dict[str, type[Task]] = {t.kind: t for t in (BinaryTask,)}


def build_task(cfg: TaskConfig) -> Task:
    """The configured task (``TaskConfig`` has checked its kind)."""
    return TASKS[cfg.kind].from_config(cfg)
