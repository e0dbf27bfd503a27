"""A hospital's data, split and preprocessed with statistics of its own train split only.

Each site is split, stratified, into test and train, and (``validation_fraction`` > 0) its train
part again into train and validation: model selection reads validation, the final evaluation test.

Nothing computed from one hospital's data (medians, means, scales) is used for another: this is
what a site does locally before it joins a federation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn.impute import SimpleImputer
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from fedmeta.errors import FedMetaError
from fedmeta.tasks import Task

__all__ = ["RawSite", "Hospital", "Federation", "preprocess_site"]


@dataclass(frozen=True)
class RawSite:
    """One hospital's data as read: a table ``(n, features)`` (NaN = missing) or images ``(n, C, H, W)``,
    and the task's labels."""

    name: str
    x: np.ndarray
    y: np.ndarray
    origin: str  # file or generator, for error messages
    test: np.ndarray | None = None  # the rows of a test split the source defines (FLamby's), else drawn


@dataclass(frozen=True)
class Hospital:
    """One hospital after its local split and preprocessing (float32; labels as the task's classes)."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    x_val: np.ndarray  # (0, features) without a validation split
    y_val: np.ndarray

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)`` of the ``"test"`` or ``"validation"`` split."""
        return (self.x_test, self.y_test) if name == "test" else (self.x_val, self.y_val)

    @property
    def n_train(self) -> int:
        return int(self.y_train.shape[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x_train.shape[1:])


@dataclass(frozen=True)
class Federation:
    """The named hospitals of one experiment, in a fixed order (partition id = index)."""

    hospitals: tuple[Hospital, ...]
    feature_names: tuple[str, ...]

    @property
    def names(self) -> list[str]:
        return [h.name for h in self.hospitals]

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One example's shape: ``(features,)`` for a table, ``(channels, height, width)`` for images."""
        return tuple(int(d) for d in self.hospitals[0].x_train.shape[1:])

    def get(self, name: str) -> Hospital:
        for h in self.hospitals:
            if h.name == name:
                return h
        raise KeyError(name)


def _stratified(site: RawSite, rows: np.ndarray, strata: np.ndarray, fraction: float, seed: int,
                what: str) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` split into (kept, split off), stratified by ``strata`` (one per row)."""
    try:
        kept, off = train_test_split(rows, test_size=fraction, stratify=strata, random_state=seed)
    except ValueError as err:
        raise FedMetaError(f"{site.origin}: hospital {site.name!r}: cannot split off its {what}: {err}") from None
    return kept, off


def _tabular(x_train: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Median imputation and standardisation per feature, fitted on the train split."""
    imputer = SimpleImputer(strategy="median", keep_empty_features=True).fit(x_train)
    scaler = StandardScaler().fit(imputer.transform(x_train))

    def transform(x: np.ndarray) -> np.ndarray:
        # A feature missing in the whole train split becomes constant 0 after imputation + scaling.
        out = scaler.transform(imputer.transform(x)) if len(x) else np.zeros((0, x_train.shape[1]))
        return np.nan_to_num(out, nan=0.0).astype(np.float32)

    return transform


def _images(x_train: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Intensity normalisation per channel (mean and std of the train split's pixels): a scanner's
    gain and offset are the site's own and are removed with its own statistics."""
    mean = x_train.mean(axis=(0, 2, 3), keepdims=True)
    std = x_train.std(axis=(0, 2, 3), keepdims=True)
    std = np.where(std > 0, std, 1.0)
    return lambda x: ((x - mean) / std).astype(np.float32)


# Examples' rank -> the normalisation fitted on a site's train split: (n, features) or (n, C, H, W).
NORMALISERS: dict[int, Callable[[np.ndarray], Callable[[np.ndarray], np.ndarray]]] = {2: _tabular, 4: _images}


def validation_state(seed: int, draw: int) -> int:
    """The random state of validation draw ``draw``: draw 0 is the split every run uses; tuning
    repeats a trial on further draws (``tune.validation_draws``) to average out a small split."""
    return seed + 1 if draw == 0 else int(np.random.SeedSequence([seed, draw, 1_000_003]).generate_state(1)[0])


def preprocess_site(site: RawSite, test_fraction: float, seed: int, validation_fraction: float = 0.0,
                    validation_draw: int = 0, *, task: Task) -> Hospital:
    """Train/test split (drawn, stratified by the task's strata, unless the source defines it) and
    train/validation split, then the normalisation (``NORMALISERS``) fitted on what remains for
    training. The test split depends on the seed only."""
    strata = task.strata(site.y)
    classes, counts = np.unique(strata, return_counts=True)
    if len(classes) < 2:
        raise FedMetaError(
            f"{site.origin}: hospital {site.name!r} has a single class ({int(classes[0])}) in its "
            f"labels: its {task.primary} and its episodes need more than one"
        )
    if counts.min() < 2:
        raise FedMetaError(
            f"{site.origin}: hospital {site.name!r} has only {counts.min()} example(s) of class "
            f"{int(classes[counts.argmin()])}: cannot split it into train and test"
        )
    rows = np.arange(len(strata))
    if site.test is None:
        train, test = _stratified(site, rows, strata, test_fraction, seed, "test split")
    else:
        train, test = rows[~site.test], rows[site.test]
    val = train[:0]
    if validation_fraction > 0:
        train, val = _stratified(site, train, strata[train], validation_fraction,
                                 validation_state(seed, validation_draw), "validation split")
    transform = NORMALISERS[site.x.ndim](site.x[train])
    return Hospital(
        name=site.name,
        x_train=transform(site.x[train]),
        y_train=site.y[train].astype(np.float32),
        x_test=transform(site.x[test]),
        y_test=site.y[test].astype(np.float32),
        x_val=transform(site.x[val]),
        y_val=site.y[val].astype(np.float32),
    )
