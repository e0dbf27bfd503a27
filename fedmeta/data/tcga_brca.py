"""Fed-TCGA-BRCA (FLamby): breast-cancer survival of 1,088 TCGA patients from 6 regions.

Files (``data.dir``): ``brca.csv`` (``pid``, 39 clinical covariates, ``E`` event, ``T`` days) and
FLamby's ``train_test_split.csv`` (``pid``, ``fold`` train/test, ``fold2`` ``train_k``/``test_k``
with k the center). FLamby's split is kept as it is: its test rows are each hospital's test split
(the validation split is still drawn from train). Labels are ``(T, E)`` rows; the task must be
``survival``. Patients of ``brca.csv`` that FLamby's split leaves out (8) are left out here too.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from fedmeta.config import DataConfig
from fedmeta.data.csv_source import parse_cell, quote_cell, require_dir
from fedmeta.data.hospital import RawSite
from fedmeta.errors import FedMetaError
from fedmeta.tasks import Task

__all__ = ["TCGA_REGIONS", "load_tcga_brca_sites", "write_own_region"]

# FLamby's center k -> the region its TSS codes belong to (the README's table).
TCGA_REGIONS = ("northeast", "south", "west", "midwest", "europe", "canada")


def read_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise FedMetaError(f"{path}: Fed-TCGA-BRCA file not found (expected brca.csv and train_test_split.csv)")
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            return list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise FedMetaError(f"{path}: cannot read: {err}") from None


def _number(text: str, where: str) -> float:
    value = parse_cell(text, where)
    if math.isnan(value):
        raise FedMetaError(f"{where}: missing value (Fed-TCGA-BRCA has none)")
    return value


def survival_label(row: dict[str, str], where: str) -> list[float]:
    """A ``brca.csv`` row's ``[time, event]``, checked (one-line errors)."""
    time, event = _number(row["T"], f"{where}, column 'T'"), _number(row["E"], f"{where}, column 'E'")
    if time < 0:
        raise FedMetaError(f"{where}, column 'T': survival time must be >= 0, got {row['T']}")
    if event not in (0.0, 1.0):
        raise FedMetaError(f"{where}, column 'E': event must be 0 or 1, got {row['E']}")
    return [time, event]


def write_own_region(src: Path, region: str, dst: Path) -> None:
    """``dst`` gets FLamby's two files with ``region``'s patients only: what that hospital's node
    holds in a deployment (the shipped files hold every region's)."""
    if region not in TCGA_REGIONS:
        raise FedMetaError(f"--hospitals: {region!r} is not a Fed-TCGA-BRCA region ({', '.join(TCGA_REGIONS)})")
    center = str(TCGA_REGIONS.index(region))
    split_rows = [r for r in read_rows(src / "train_test_split.csv") if r.get("fold2", "").partition("_")[2] == center]
    own = {r["pid"] for r in split_rows}
    dst.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train_test_split.csv", split_rows),
                       ("brca.csv", [r for r in read_rows(src / "brca.csv") if r["pid"] in own])):
        with (dst / name).open("w", newline="", encoding="utf-8") as fh:
            header = list(read_rows(src / name)[0]) if not rows else list(rows[0])
            writer = csv.DictWriter(fh, fieldnames=header)
            writer.writeheader()
            writer.writerows(rows)


def load_tcga_brca_sites(cfg: DataConfig, task: Task) -> tuple[list[RawSite], list[str]]:
    if task.kind != "survival":
        raise FedMetaError(f"task.kind: Fed-TCGA-BRCA is a survival dataset: set task.kind = \"survival\" "
                           f"(got {task.kind!r})")
    root = require_dir(cfg)
    data_path, split_path = root / "brca.csv", root / "train_test_split.csv"
    patients = read_rows(data_path)
    if not patients or not {"pid", "E", "T"} <= set(patients[0]):
        raise FedMetaError(f"{data_path}: expected the columns pid, E and T beside the covariates")
    features = [c for c in patients[0] if c not in ("pid", "E", "T")]
    split: dict[str, tuple[int, bool]] = {}
    for ln, row in enumerate(read_rows(split_path), start=2):
        fold, _, center = row.get("fold2", "").partition("_")
        if fold not in ("train", "test") or not center.isdigit() or int(center) >= len(TCGA_REGIONS):
            raise FedMetaError(f"{split_path}: line {ln}: fold2 must be train_k or test_k with k in 0..5, "
                               f"got {quote_cell(row.get('fold2', ''))}")
        split[row["pid"]] = (int(center), fold == "test")
    per_site: dict[int, tuple[list, list, list]] = {k: ([], [], []) for k in range(len(TCGA_REGIONS))}
    for ln, row in enumerate(patients, start=2):
        if row["pid"] not in split:
            continue
        where = f"{data_path}: line {ln}"
        label = survival_label(row, where)
        center, is_test = split[row["pid"]]
        xs, ys, tests = per_site[center]
        xs.append([_number(row[c], f"{where}, column {c!r}") for c in features])
        ys.append(label)
        tests.append(is_test)
    sites = [RawSite(name=TCGA_REGIONS[k], x=np.asarray(xs, dtype=np.float64), y=np.asarray(ys, dtype=np.float32),
                     origin=str(data_path), test=np.asarray(tests, dtype=bool))
             for k, (xs, ys, tests) in per_site.items()]
    return sites, features
