"""Calibration of classification probabilities: ECE over equal-mass bins, Brier score, reliability bins.

Pure numpy/scipy, so the training recipe (metrics at the end of a run) and evaluation (recomputed from
`predictions/test.csv` for stores that predate those metrics) compute the same numbers from one place.

Conventions. Binary: `probs` is `(N,)`, the positive class's probability; the reliability curve compares
it with the observed frequency of the positive class. Multiclass: `probs` is `(N, C)`; the curve compares
the top-label confidence with how often the top label is right. Bins hold equal numbers of samples
(equal-mass), which keeps every bin's estimate usable when confidences crowd near 0 or 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "DEFAULT_BINS",
    "ReliabilityBin",
    "brier_score",
    "calibration_pairs",
    "clopper_pearson",
    "expected_calibration_error",
    "reliability_bins",
]

DEFAULT_BINS = 10


@dataclass(frozen=True)
class ReliabilityBin:
    """One equal-mass bin: its confidence range, size, mean confidence, observed rate and its 95 % interval."""

    lower: float
    upper: float
    n: int
    confidence: float
    observed: float
    observed_low: float
    observed_high: float


def calibration_pairs(targets: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, outcome) per sample: binary p(positive) vs y == 1; multiclass max p vs argmax == y.

    Raises:
        ValueError: shapes that do not match, or probabilities outside [0, 1].
    """
    targets = np.asarray(targets).astype(np.int64).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim == 2 and probs.shape[1] == 1:
        probs = probs[:, 0]
    if probs.shape[0] != targets.shape[0]:
        raise ValueError(f"{probs.shape[0]} probabilities for {targets.shape[0]} targets")
    if probs.size and (np.nanmin(probs) < 0 or np.nanmax(probs) > 1):
        raise ValueError("probabilities must lie in [0, 1]")
    if probs.ndim == 1:
        return probs, (targets == 1).astype(np.float64)
    return probs.max(axis=1), (probs.argmax(axis=1) == targets).astype(np.float64)


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper–Pearson) interval of a binomial proportion k/n; (nan, nan) when n is 0."""
    from scipy.stats import beta

    if n <= 0:
        return float("nan"), float("nan")
    alpha = 1.0 - level
    low = 0.0 if k <= 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    high = 1.0 if k >= n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return low, high


def _equal_mass(confidence: np.ndarray, n_bins: int) -> list[np.ndarray]:
    order = np.argsort(confidence, kind="stable")
    return [chunk for chunk in np.array_split(order, min(n_bins, len(order))) if len(chunk)]


def reliability_bins(
    targets: np.ndarray, probs: np.ndarray, n_bins: int = DEFAULT_BINS, level: float = 0.95
) -> list[ReliabilityBin]:
    """The reliability curve in `n_bins` equal-mass bins (fewer when there are fewer samples)."""
    confidence, outcome = calibration_pairs(targets, probs)
    bins = []
    for idx in _equal_mass(confidence, n_bins):
        k, n = int(outcome[idx].sum()), len(idx)
        low, high = clopper_pearson(k, n, level)
        bins.append(ReliabilityBin(
            lower=float(confidence[idx].min()), upper=float(confidence[idx].max()), n=n,
            confidence=float(confidence[idx].mean()), observed=k / n, observed_low=low, observed_high=high,
        ))
    return bins


def expected_calibration_error(targets: np.ndarray, probs: np.ndarray, n_bins: int = DEFAULT_BINS) -> float:
    """Σ_b (n_b / N) · |observed_b − confidence_b| over equal-mass bins; NaN without samples."""
    confidence, outcome = calibration_pairs(targets, probs)
    if not len(confidence):
        return float("nan")
    total = 0.0
    for idx in _equal_mass(confidence, n_bins):
        total += len(idx) * abs(float(outcome[idx].mean()) - float(confidence[idx].mean()))
    return total / len(confidence)


def brier_score(targets: np.ndarray, probs: np.ndarray) -> float:
    """Mean squared error of the probabilities against the one-hot truth (binary: (p − y)²); NaN when empty."""
    targets = np.asarray(targets).astype(np.int64).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim == 2 and probs.shape[1] == 1:
        probs = probs[:, 0]
    if not len(targets):
        return float("nan")
    if probs.ndim == 1:
        return float(np.mean((probs - (targets == 1)) ** 2))
    onehot = np.zeros_like(probs)
    onehot[np.arange(len(targets)), targets] = 1.0
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))
