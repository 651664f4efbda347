"""Intervals over seeds: percentile bootstrap of an arm's mean and of the difference between two arms' means.

Every interval is a 95 % percentile bootstrap over the runs (seeds) of an arm: RESAMPLES resamples
(2,000: a bound's Monte Carlo error is then a small fraction of the interval's width, and a
2,000-run study's summary.csv costs ~0.1 s) drawn from a generator seeded with SEED; the resample
indices for a sample size are the same wherever that size occurs, so a report is reproducible run
to run, and each sample is sorted first, so the order the store returned the runs in does not matter.
Bounds are numpy's default (linear) percentiles of the resampled means. An arm with fewer than 2 runs
gets no interval — `Interval.note` says why — never a zero-width one. Differences resample the two
arms independently (first `a`, then `b`, from one generator).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

LEVEL = 0.95
RESAMPLES = 2_000
SEED = 0
METHOD = "percentile bootstrap over seeds"


@dataclass(frozen=True)
class Interval:
    """A 95 % interval (`low`, `high`), or None for both with the reason in `note`."""

    low: float | None
    high: float | None
    level: float = LEVEL
    resamples: int = RESAMPLES
    seed: int = SEED
    method: str = METHOD
    note: str | None = None

    @property
    def available(self) -> bool:
        return self.low is not None and self.high is not None


def unavailable(sizes: Sequence[int]) -> str | None:
    """Why there is no interval for arms of these sizes (None when there is one)."""
    if any(n == 0 for n in sizes):
        return "no run with a value"
    small = [n for n in sizes if n < 2]
    if small:
        return f"fewer than 2 seeds (n={small[0]}): no interval"
    return None


@lru_cache(maxsize=64)
def _counts(n: int, resamples: int, seed: int) -> np.ndarray:
    """How often each of `n` values is drawn in each resample, (resamples, n), from the indices
    `np.random.default_rng(seed).integers(0, n, (resamples, n))` (row b: resample b)."""
    rng = np.random.default_rng(seed)
    return _tally(rng.integers(0, n, size=(resamples, n)), n)


def _tally(index: np.ndarray, n: int) -> np.ndarray:
    rows = np.arange(index.shape[0])[:, None] * n
    counts = np.bincount((index + rows).ravel(), minlength=index.shape[0] * n).reshape(-1, n).astype(float)
    counts.setflags(write=False)  # cached: shared by every sample of this size
    return counts


@lru_cache(maxsize=64)
def _pair_counts(n_a: int, n_b: int, resamples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The counts of `a`'s resamples, then of `b`'s, drawn one after the other from one generator."""
    rng = np.random.default_rng(seed)
    first = rng.integers(0, n_a, size=(resamples, n_a))
    second = rng.integers(0, n_b, size=(resamples, n_b))
    return _tally(first, n_a), _tally(second, n_b)


def _percentiles(means: np.ndarray, level: float) -> np.ndarray:
    """(low, high) of each row of `means` (one row a sample, one column a resample)."""
    tail = 100 * (1 - level) / 2
    return np.percentile(means, [tail, 100 - tail], axis=-1)


def mean_intervals(
    samples: Sequence[np.ndarray], *, level: float = LEVEL, resamples: int = RESAMPLES, seed: int = SEED
) -> list[Interval]:
    """The interval of each sample's mean (finite values; NaN and inf are dropped first).

    Samples of one size share their resample indices and are computed together.
    """
    clean = [np.sort(np.asarray(s, float)[np.isfinite(np.asarray(s, float))]) for s in samples]
    out: list[Interval | None] = [None] * len(clean)
    by_size: dict[int, list[int]] = {}
    for i, values in enumerate(clean):
        reason = unavailable([values.size])
        if reason:
            out[i] = Interval(None, None, level, resamples, seed, note=reason)
        else:
            by_size.setdefault(values.size, []).append(i)
    for n, members in by_size.items():
        matrix = np.stack([clean[i] for i in members])  # (k, n)
        means = matrix @ _counts(n, resamples, seed).T / n  # (k, resamples)
        low, high = _percentiles(means, level)
        for j, i in enumerate(members):
            out[i] = Interval(float(low[j]), float(high[j]), level, resamples, seed)
    return [i for i in out if i is not None]


def mean_interval(values: np.ndarray, **options: float) -> Interval:
    """The interval of one sample's mean (see `mean_intervals`)."""
    return mean_intervals([values], **options)[0]  # type: ignore[arg-type]


def difference_interval(
    a: np.ndarray, b: np.ndarray, *, level: float = LEVEL, resamples: int = RESAMPLES, seed: int = SEED
) -> Interval:
    """The interval of mean(a) − mean(b), each arm resampled on its own (finite values only)."""
    a = np.asarray(a, float)
    b = np.asarray(b, float)
    a, b = np.sort(a[np.isfinite(a)]), np.sort(b[np.isfinite(b)])
    reason = unavailable([a.size, b.size])
    if reason:
        return Interval(None, None, level, resamples, seed, note=reason)
    counts_a, counts_b = _pair_counts(a.size, b.size, resamples, seed)
    diffs = counts_a @ a / a.size - counts_b @ b / b.size
    low, high = _percentiles(diffs, level)
    return Interval(float(low), float(high), level, resamples, seed)
