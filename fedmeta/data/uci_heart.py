"""UCI Heart Disease: four hospitals, one ``processed.<site>.data`` file each.

Target: heart disease present (``num > 0``) for a binary task, its severity ``num`` (0-4) for a
5-class one. '?' is missing; ``chol == 0`` means not measured. Features: the numeric columns,
one-hot ``cp``/``restecg``/``slope``/``thal`` and one missing-indicator per column that can be missing,
so all four sites share one schema.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fedmeta.config import DataConfig
from fedmeta.data.csv_source import quote_cell, require_dir
from fedmeta.data.hospital import RawSite
from fedmeta.errors import FedMetaError
from fedmeta.tasks import Task

__all__ = ["read_uci_file", "UCI_SITES", "load_uci_heart_sites", "load_uci_heart_site"]

UCI_SITES = {
    "cleveland": "processed.cleveland.data",
    "hungarian": "processed.hungarian.data",
    "switzerland": "processed.switzerland.data",
    "va": "processed.va.data",
}
_COLUMNS = ["age", "sex", "cp", "trestbps", "chol", "fbs", "restecg", "thalach", "exang",
            "oldpeak", "slope", "ca", "thal", "num"]
_NUMERIC = ["age", "sex", "trestbps", "chol", "fbs", "thalach", "exang", "oldpeak", "ca"]
_CATEGORIES = {"cp": [1, 2, 3, 4], "restecg": [0, 1, 2], "slope": [1, 2, 3], "thal": [3, 6, 7]}
_MAY_BE_MISSING = ["trestbps", "chol", "fbs", "restecg", "thalach", "exang", "oldpeak", "slope", "ca", "thal"]


def feature_names() -> list[str]:
    names = list(_NUMERIC)
    for col, cats in _CATEGORIES.items():
        names += [f"{col}={c}" for c in cats]
    names += [f"{col}_missing" for col in _MAY_BE_MISSING]
    return names


def _labeller(task: Task) -> Callable[[float], float]:
    """``num`` -> the task's label: presence for a binary task, severity for a 5-class one."""
    if task.kind == "binary":
        return lambda num: float(num > 0)
    if task.n_strata == 5:
        return float
    raise FedMetaError(f"task: UCI Heart Disease has a binary label (num > 0) or 5 severity classes (num 0-4); "
                       f"a {task.kind} task with {task.n_strata} classes is neither")


def read_uci_file(path: Path, name: str, task: Task) -> RawSite:
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # -sig: tolerate a BOM
    except (OSError, UnicodeDecodeError) as err:
        raise FedMetaError(f"{path}: cannot read: {err}") from None
    label = _labeller(task)
    rows_x, rows_y = [], []
    for ln, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        cells = line.strip().split(",")
        if len(cells) != len(_COLUMNS):
            raise FedMetaError(f"{path}: line {ln}: {len(cells)} values, expected {len(_COLUMNS)}")
        rec: dict[str, float] = {}
        for col, cell in zip(_COLUMNS, cells):
            if cell.strip() == "?":
                rec[col] = math.nan
                continue
            try:
                rec[col] = float(cell)
            except ValueError:
                raise FedMetaError(f"{path}: line {ln}, column {col!r}: non-numeric value {quote_cell(cell)}") from None
        if math.isnan(rec["num"]):
            raise FedMetaError(f"{path}: line {ln}: missing label 'num'")
        if rec["chol"] == 0.0:
            rec["chol"] = math.nan
        x = [rec[c] for c in _NUMERIC]
        for col, cats in _CATEGORIES.items():
            x += [float(rec[col] == c) for c in cats]  # NaN compares False: all-zero one-hot
        x += [float(math.isnan(rec[c])) for c in _MAY_BE_MISSING]
        rows_x.append(x)
        if rec["num"] not in (0.0, 1.0, 2.0, 3.0, 4.0):
            raise FedMetaError(f"{path}: line {ln}: label 'num' must be 0-4, got {rec['num']:g}")
        rows_y.append(label(rec["num"]))
    if not rows_y:
        raise FedMetaError(f"{path}: no data rows")
    return RawSite(name=name, x=np.asarray(rows_x, dtype=np.float64),
                   y=np.asarray(rows_y, dtype=np.float32), origin=str(path))


def load_uci_heart_sites(cfg: DataConfig, task: Task) -> tuple[list[RawSite], list[str]]:
    root = require_dir(cfg)
    sites = []
    for name, fname in UCI_SITES.items():
        path = root / fname
        if not path.is_file():
            raise FedMetaError(f"{path}: UCI Heart Disease file not found (expected the four processed.*.data files)")
        sites.append(read_uci_file(path, name, task))
    return sites, feature_names()


def load_uci_heart_site(hospital: str, data_dir: Path, task: Task) -> tuple[RawSite, list[str]]:
    """Read one hospital's ``processed.<site>.data`` from ``data_dir``."""
    if hospital not in UCI_SITES:
        raise FedMetaError(f"node config hospital: unknown UCI Heart Disease hospital {hospital!r} "
                           f"(expected one of {', '.join(UCI_SITES)})")
    path = data_dir / UCI_SITES[hospital]
    if not path.is_file():
        raise FedMetaError(f"{path}: data file of hospital {hospital!r} not found")
    return read_uci_file(path, hospital, task), feature_names()
