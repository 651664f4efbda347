"""Known answers: precision and recall pinned to their definitions (the study's code swapped them)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from medtl.training.metrics import classification_metrics, regression_metrics, segmentation_metrics
from medtl.training.spec import TaskType


def test_binary_precision_and_recall_follow_their_definitions():
    # 4 positives, 6 negatives; predicted positive: 3 of the positives and 2 negatives.
    targets = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    probs = np.array([0.9, 0.8, 0.7, 0.2, 0.6, 0.55, 0.1, 0.3, 0.4, 0.05])
    out = classification_metrics(targets, probs, TaskType.BINARY)
    tp, fp, fn = 3, 2, 1
    assert out["precision"] == pytest.approx(tp / (tp + fp)) == pytest.approx(0.6)  # swapped: 0.75
    assert out["recall"] == pytest.approx(tp / (tp + fn)) == pytest.approx(0.75)  # swapped: 0.6
    assert out["f1"] == pytest.approx(2 * 0.6 * 0.75 / (0.6 + 0.75))
    assert out["accuracy"] == pytest.approx(0.7)


def test_multiclass_precision_and_recall_are_macro_averages_of_their_definitions():
    targets = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 0, 1, 1, 2, 2])
    probs = np.eye(3)[predicted] * 0.8 + 0.2 / 3
    out = classification_metrics(targets, probs, TaskType.MULTICLASS)
    # per class (precision, recall): 0 → (2/2, 2/3), 1 → (1/2, 1/2), 2 → (1/2, 1/1)
    assert out["precision"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert out["recall"] == pytest.approx((2 / 3 + 0.5 + 1) / 3)
    assert out["accuracy"] == pytest.approx(4 / 6)


def test_regression_and_segmentation_known_answers():
    assert regression_metrics(np.array([10.0, 20.0]), np.array([13.0, 16.0])) == pytest.approx(
        {"mae": 3.5, "rmse": np.sqrt((9 + 16) / 2)}
    )
    targets = np.array([[[1, 1], [0, 0]]])
    probs = np.array([[[0.9, 0.2], [0.8, 0.1]]])
    # predicted {(0,0), (1,0)}, true {(0,0), (0,1)}: intersection 1, sizes 2 + 2, union 3
    assert segmentation_metrics(targets, probs) == pytest.approx({"dice": 0.5, "iou": 1 / 3})


def test_classification_metrics_carry_calibration_known_answers():
    # 100 samples in ten equal-mass bins of ten (tied confidences keep their order, so each bin of ten
    # holds the same mix). Calibrated: confidence 0.8 and 8 of every 10 positive → ECE 0;
    # Brier 0.8·0.2² + 0.2·0.8² = 0.16.
    targets = np.tile([1, 1, 1, 1, 1, 1, 1, 1, 0, 0], 10)
    calibrated = classification_metrics(targets, np.full(100, 0.8), TaskType.BINARY)
    assert calibrated["ece"] == pytest.approx(0.0) and calibrated["brier"] == pytest.approx(0.16)
    # Over-confident: 0.9 everywhere, half positive → ECE |0.5 − 0.9| = 0.4; Brier 0.5·0.01 + 0.5·0.81.
    over = classification_metrics(np.tile([1, 0], 50), np.full(100, 0.9), TaskType.BINARY)
    assert over["ece"] == pytest.approx(0.4) and over["brier"] == pytest.approx(0.41)
    # Multiclass: the top label's confidence 0.7 and right 7 times in every 10 → ECE 0.
    probs = np.tile([0.7, 0.2, 0.1], (100, 1))
    multi = classification_metrics(np.tile([0] * 7 + [1] * 3, 10), probs, TaskType.MULTICLASS)
    assert multi["ece"] == pytest.approx(0.0)
    assert multi["brier"] == pytest.approx(0.7 * (0.09 + 0.04 + 0.01) + 0.3 * (0.49 + 0.64 + 0.01))


def test_calibration_is_nan_for_a_diverged_network():
    out = classification_metrics(np.array([0, 1]), np.array([np.nan, 0.5]), TaskType.BINARY)
    assert np.isnan(out["ece"]) and np.isnan(out["brier"])


def test_multiclass_metrics_with_two_classes_give_the_binary_auc():
    """A pretraining set with two clusters is multiclass with two columns; sklearn refuses (N, 2) for AUC."""
    targets = np.array([0, 1, 1, 0, 1])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.7, 0.3], [0.6, 0.4]])
    out = classification_metrics(targets, probs, TaskType.MULTICLASS)
    assert out["auc"] == pytest.approx(skm.roc_auc_score(targets, probs[:, 1]))
    assert out["accuracy"] == pytest.approx(0.8)
