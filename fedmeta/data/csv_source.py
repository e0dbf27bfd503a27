"""Hospitals from a directory of CSV files: one file per hospital, file stem = hospital id.

Every file must have the same header. Empty cells are missing values (imputed locally); any other
cell must be a finite number. The label column must hold the task's labels (0/1 for a binary task,
0..K-1 for K classes).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from fedmeta.config import DataConfig
from fedmeta.data.hospital import RawSite
from fedmeta.errors import FedMetaError
from fedmeta.tasks import Task

__all__ = ["read_table", "load_csv_sites", "load_csv_site", "require_dir", "quote_cell", "parse_cell"]


def require_dir(cfg: DataConfig) -> Path:
    if not cfg.dir:
        raise FedMetaError(
            f"data.dir: the {cfg.source!r} source needs a data directory (set data.dir or pass --data-dir)"
        )
    path = Path(cfg.dir)
    if not path.is_dir():
        raise FedMetaError(f"{path}: data directory not found")
    return path


def quote_cell(text: str, limit: int = 40) -> str:
    """A cell as quoted in an error message: a huge cell must not make a huge message."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"


def parse_cell(text: str, where: str) -> float:
    """A cell as a float: empty is NaN (missing); anything else must be a finite number."""
    text = text.strip()
    if text == "":
        return math.nan
    try:
        value = float(text)
    except ValueError:
        raise FedMetaError(f"{where}: non-numeric value {quote_cell(text)}") from None
    if not math.isfinite(value):
        raise FedMetaError(f"{where}: non-finite value {quote_cell(text)} (leave the cell empty for a missing value)")
    return value


def _read_rows(path: Path) -> list[list[str]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:  # -sig: a spreadsheet's BOM is not a header
            reader = csv.reader(fh)
            try:
                return list(reader)
            except csv.Error as err:
                raise FedMetaError(f"{path}: line {reader.line_num}: not readable as CSV: {err}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise FedMetaError(f"{path}: cannot read: {err}") from None


def _check_header(path: Path, header: list[str], label: str) -> None:
    if label not in header:
        raise FedMetaError(f"{path}: label column {label!r} not found (columns: {', '.join(header)})")
    dupes = [h for i, h in enumerate(header) if h in header[:i]]
    if dupes:
        what = "label column" if dupes[0] == label else "column"
        raise FedMetaError(f"{path}: {what} {dupes[0]!r} appears {header.count(dupes[0])} times in the header")


def read_table(path: Path, label: str, task: Task) -> tuple[list[str], np.ndarray, np.ndarray]:
    rows = _read_rows(path)
    if not rows:
        raise FedMetaError(f"{path}: file is empty")
    header = [h.strip() for h in rows[0]]
    _check_header(path, header, label)
    li = header.index(label)
    features = [h for i, h in enumerate(header) if i != li]
    xs, ys = [], []
    for r, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise FedMetaError(f"{path}: line {r}: {len(row)} cells, expected {len(header)}")
        y = parse_cell(row[li], f"{path}: line {r}, column {label!r}")
        if math.isnan(y) or (reason := task.label_error(y)):
            reason = "missing label" if math.isnan(y) else reason
            raise FedMetaError(f"{path}: line {r}, column {label!r}: {reason}, got {quote_cell(row[li])}")
        xs.append([parse_cell(c, f"{path}: line {r}, column {header[i]!r}") for i, c in enumerate(row) if i != li])
        ys.append(y)
    if not ys:
        raise FedMetaError(f"{path}: no data rows")
    return features, np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float32)


def load_csv_sites(cfg: DataConfig, task: Task) -> tuple[list[RawSite], list[str]]:
    """Read every ``*.csv`` in ``cfg.dir``; all must share one header."""
    root = require_dir(cfg)
    files = sorted(root.glob("*.csv"))
    if len(files) < 2:
        raise FedMetaError(f"{root}: expected one CSV per hospital (at least 2), found {len(files)}")
    sites: list[RawSite] = []
    reference: tuple[Path, list[str]] | None = None
    for path in files:
        features, x, y = read_table(path, cfg.label, task)
        if reference is None:
            reference = (path, features)
        elif features != reference[1]:
            missing = sorted(set(reference[1]) - set(features))
            extra = sorted(set(features) - set(reference[1]))
            detail = f"missing {missing}" if missing else ""
            detail += ("; " if detail and extra else "") + (f"extra {extra}" if extra else "")
            raise FedMetaError(
                f"{path}: columns differ from {reference[0].name}: {detail or 'different order'}"
            )
        sites.append(RawSite(name=path.stem, x=x, y=y, origin=str(path)))
    assert reference is not None
    return sites, reference[1]


def load_csv_site(cfg: DataConfig, task: Task, hospital: str, data_dir: Path) -> tuple[RawSite, list[str]]:
    """Read one hospital's ``<data_dir>/<hospital>.csv``: what a deployed hospital node has mounted."""
    path = data_dir / f"{hospital}.csv"
    if not path.is_file():
        found = ", ".join(sorted(p.name for p in data_dir.glob("*.csv"))) or "none"
        raise FedMetaError(f"{path}: data file of hospital {hospital!r} not found (CSV files there: {found})")
    features, x, y = read_table(path, cfg.label, task)
    return RawSite(name=hospital, x=x, y=y, origin=str(path)), features
