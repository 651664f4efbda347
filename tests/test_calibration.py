"""Calibration against known answers: a calibrated predictor, an over-confident one, hand-computed bins."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest

from medtl.calibration import (
    brier_score,
    calibration_pairs,
    clopper_pearson,
    expected_calibration_error,
    reliability_bins,
)


def test_a_perfectly_calibrated_binary_predictor_has_zero_ece():
    # In each confidence level exactly that fraction is positive: 10 samples at 0.2 (2 positive), 10 at 0.7 (7).
    probs = np.array([0.2] * 10 + [0.7] * 10)
    targets = np.array([1, 1] + [0] * 8 + [1] * 7 + [0] * 3)
    assert expected_calibration_error(targets, probs, n_bins=2) == pytest.approx(0.0, abs=1e-12)
    assert brier_score(targets, probs) == pytest.approx((2 * 0.8**2 + 8 * 0.2**2 + 7 * 0.3**2 + 3 * 0.7**2) / 20)


def test_an_over_confident_predictor_by_hand():
    # Says 0.9 but is right half the time; says 0.6 and is right 60 %: ECE = 0.5·0.4 + 0.5·0 = 0.2.
    probs = np.array([0.9] * 10 + [0.6] * 10)
    targets = np.array([1] * 5 + [0] * 5 + [1] * 6 + [0] * 4)
    assert expected_calibration_error(targets, probs, n_bins=2) == pytest.approx(0.2)
    bins = reliability_bins(targets, probs, n_bins=2)
    assert [(b.n, b.confidence, b.observed) for b in bins] == [(10, pytest.approx(0.6), 0.6), (10, pytest.approx(0.9), 0.5)]


def test_multiclass_uses_the_top_label_and_the_one_hot_brier():
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8], [0.6, 0.3, 0.1]])
    targets = np.array([0, 2, 2, 1])
    confidence, outcome = calibration_pairs(targets, probs)
    assert confidence.tolist() == [0.8, 0.5, 0.8, 0.6] and outcome.tolist() == [1, 0, 1, 0]
    # one bin: |mean(outcome) - mean(confidence)| = |0.5 - 0.675|
    assert expected_calibration_error(targets, probs, n_bins=1) == pytest.approx(0.175)
    expected = np.mean([0.04 + 0.01 + 0.01, 0.04 + 0.25 + 0.49, 0.01 + 0.01 + 0.04, 0.36 + 0.49 + 0.01])
    assert brier_score(targets, probs) == pytest.approx(expected)


def test_equal_mass_bins_hold_equal_counts_and_cover_every_sample():
    rng = np.random.default_rng(0)
    probs = rng.random(103)
    targets = (rng.random(103) < probs).astype(int)
    bins = reliability_bins(targets, probs, n_bins=10)
    assert [b.n for b in bins] == [11, 11, 11] + [10] * 7
    assert all(b.lower <= b.confidence <= b.upper for b in bins)
    assert all(b.observed_low <= b.observed <= b.observed_high for b in bins)
    assert len(reliability_bins(targets[:4], probs[:4], n_bins=10)) == 4  # fewer samples than bins


@pytest.mark.parametrize(("k", "n"), [(0, 10), (3, 10), (10, 10), (17, 40)])
def test_clopper_pearson_matches_scipy_exact_interval(k, n):
    low, high = clopper_pearson(k, n)
    reference = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    assert (low, high) == (pytest.approx(reference.low), pytest.approx(reference.high))


def test_degenerate_inputs():
    assert math.isnan(expected_calibration_error(np.array([], int), np.array([])))
    assert math.isnan(brier_score(np.array([], int), np.array([])))
    assert all(math.isnan(v) for v in clopper_pearson(0, 0))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        calibration_pairs(np.array([0, 1]), np.array([0.2, 1.3]))
    with pytest.raises(ValueError, match="2 probabilities for 3 targets"):
        calibration_pairs(np.array([0, 1, 1]), np.array([0.2, 0.3]))
