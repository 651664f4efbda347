"""Bootstrap intervals against references computed by hand from the same fixed resamples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medtl.evaluation.uncertainty import (
    RESAMPLES,
    SEED,
    difference_interval,
    mean_interval,
    mean_intervals,
)


def percentile_by_hand(values: list[float], q: float) -> float:
    """The q-th percentile with linear interpolation between closest ranks (numpy's default), by hand."""
    ordered = sorted(values)
    position = q / 100 * (len(ordered) - 1)
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


def resampled_means(x: list[float], index: np.ndarray) -> list[float]:
    """The mean of each resample, one Python loop per resample."""
    return [sum(x[i] for i in row) / len(row) for row in index.tolist()]


def test_an_arm_mean_against_the_hand_computed_percentiles():
    x = [0.71, 0.73, 0.75, 0.77, 0.55]
    index = np.random.default_rng(SEED).integers(0, len(x), size=(RESAMPLES, len(x)))  # the documented resamples
    means = resampled_means(sorted(x), index)  # drawn from the sorted values
    got = mean_interval(np.array(x))
    assert mean_interval(np.array(x[::-1])) == got  # so the order the store returned the runs in does not matter
    assert got.low == pytest.approx(percentile_by_hand(means, 2.5), abs=1e-12)
    assert got.high == pytest.approx(percentile_by_hand(means, 97.5), abs=1e-12)
    assert (got.level, got.resamples, got.seed, got.note) == (0.95, RESAMPLES, SEED, None)
    assert got.low < float(np.mean(x)) < got.high


def test_a_difference_resamples_each_arm_on_its_own():
    a, b = [0.50, 0.52, 0.54, 0.56, 0.58], [0.71, 0.73, 0.75, 0.77]
    rng = np.random.default_rng(SEED)
    first = rng.integers(0, len(a), size=(RESAMPLES, len(a)))
    second = rng.integers(0, len(b), size=(RESAMPLES, len(b)))
    diffs = [ma - mb for ma, mb in zip(resampled_means(a, first), resampled_means(b, second), strict=True)]
    got = difference_interval(np.array(a), np.array(b))
    assert got.low == pytest.approx(percentile_by_hand(diffs, 2.5), abs=1e-12)
    assert got.high == pytest.approx(percentile_by_hand(diffs, 97.5), abs=1e-12)
    assert got.high < 0  # a's runs all lie below b's


def test_fewer_than_two_seeds_give_no_interval_never_zero_width():
    one = mean_interval(np.array([0.8]))
    assert one.low is None and one.high is None and not one.available
    assert one.note == "fewer than 2 seeds (n=1): no interval"
    assert mean_interval(np.array([])).note == "no run with a value"
    assert difference_interval(np.array([0.8]), np.array([0.1, 0.2])).note == "fewer than 2 seeds (n=1): no interval"
    nan_only = mean_interval(np.array([np.nan, 0.4]))  # a NaN is not a seed's value
    assert nan_only.note == "fewer than 2 seeds (n=1): no interval"
    same = mean_interval(np.array([0.5, 0.5, 0.5]))  # identical seeds: the honest interval has no width
    assert (same.low, same.high) == (0.5, 0.5)


def test_samples_of_one_size_share_resamples_and_order_is_kept():
    samples = [np.array([1.0, 2.0, 3.0]), np.array([0.5]), np.array([10.0, 20.0, 40.0])]
    together = mean_intervals(samples)
    alone = [mean_interval(s) for s in samples]
    assert [(i.low, i.high, i.note) for i in together] == [(i.low, i.high, i.note) for i in alone]
    # the same resample indices for size 3: scaling the values scales the bounds
    scaled = mean_interval(samples[0] * 10)
    assert (scaled.low, scaled.high) == pytest.approx((together[0].low * 10, together[0].high * 10))
