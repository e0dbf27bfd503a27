"""Whether predicted probabilities mean what they say: Brier score, expected calibration error,
the reliability diagram's bins, and temperature scaling.

Binary: the probability of class 1. Multi-class: the Brier score over all classes, and the top
label's confidence against its accuracy for the error and the diagram (Guo et al. 2017).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, log_softmax, softmax

__all__ = ["brier", "confidence_and_hit", "ece", "reliability_bins", "fit_temperature", "scaled_probabilities"]

BINS = 10  # equal-width confidence bins, as in Guo et al. 2017


def brier(y: np.ndarray, p: np.ndarray) -> float:
    """Mean squared difference of the predicted probabilities and the one-hot outcome."""
    y = np.asarray(y).astype(np.int64)
    if p.ndim == 1:
        return float(np.mean((p - y) ** 2))
    return float(np.mean(np.sum((p - np.eye(p.shape[1])[y]) ** 2, axis=1)))


def confidence_and_hit(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Binary: (p, y); multi-class: (the top label's probability, whether it is right)."""
    y = np.asarray(y).astype(np.int64)
    if p.ndim == 1:
        return p, y.astype(np.float64)
    return p.max(axis=1), (p.argmax(axis=1) == y).astype(np.float64)


def reliability_bins(y: np.ndarray, p: np.ndarray, bins: int = BINS) -> list[dict[str, float]]:
    """Per non-empty bin of confidence: its range, count, mean confidence and observed frequency."""
    conf, hit = confidence_and_hit(y, p)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    out = []
    for b in range(bins):
        mask = which == b
        if mask.any():
            out.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": int(mask.sum()),
                        "confidence": float(conf[mask].mean()), "observed": float(hit[mask].mean())})
    return out


def ece(y: np.ndarray, p: np.ndarray, bins: int = BINS) -> float:
    """Expected calibration error: the count-weighted mean |observed - confidence| over the bins."""
    rows = reliability_bins(y, p, bins)
    n = sum(r["count"] for r in rows)
    return float(sum(r["count"] * abs(r["observed"] - r["confidence"]) for r in rows) / n)


def _nll(logits: np.ndarray, y: np.ndarray, temperature: float) -> float:
    z = logits / temperature
    if z.ndim == 1:  # binary: -log sigmoid(+-z)
        return float(np.mean(np.logaddexp(0.0, -z) * y + np.logaddexp(0.0, z) * (1 - y)))
    return float(-np.mean(log_softmax(z, axis=1)[np.arange(len(y)), y]))


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature T > 0 minimising the negative log-likelihood of ``logits / T`` on ``(logits, y)``
    (searched over log T in [-5, 5])."""
    y = np.asarray(y).astype(np.int64)
    res = minimize_scalar(lambda log_t: _nll(logits, y, float(np.exp(log_t))), bounds=(-5.0, 5.0), method="bounded",
                          options={"xatol": 1e-6})
    return float(np.exp(res.x))


def scaled_probabilities(logits: np.ndarray, temperature: float) -> np.ndarray:
    z = logits / temperature
    return expit(z) if z.ndim == 1 else softmax(z, axis=1)
