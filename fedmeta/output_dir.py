"""An output directory that appears whole or not at all.

Work is written to a hidden sibling ``.NAME.partial-PID``; it is renamed to ``NAME`` when the work
succeeds and removed when it fails, so a failed run never leaves a half-written directory.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fedmeta.errors import FedMetaError

__all__ = ["staged_output_dir"]


@contextmanager
def staged_output_dir(out: Path) -> Iterator[Path]:
    out = out.resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FedMetaError(f"{out}: output directory already exists and is not empty (choose another --out)")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise FedMetaError(f"{out.parent}: cannot create output directory: {err.strerror}") from None
    if not os.access(out.parent, os.W_OK):
        raise FedMetaError(f"{out.parent}: output directory is not writable")
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        out.rmdir()
    os.replace(staging, out)
