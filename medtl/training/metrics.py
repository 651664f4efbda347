"""Task metrics on numpy arrays: classification, regression and segmentation.

Precision and recall are computed as `(y_true, y_pred)` — the study's code swapped them.
AUC and calibration need probabilities, which is why every run keeps them per sample.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn import metrics as skm

from medtl.calibration import brier_score, expected_calibration_error
from medtl.training.spec import TaskType


def classification_metrics(targets: np.ndarray, probs: np.ndarray, task_type: TaskType) -> dict[str, float]:
    """Accuracy, precision, recall, F1 (macro for multiclass), AUC, ECE and Brier score.

    `probs` is `(N,)` positive-class probabilities for binary, `(N, C)` for multiclass.
    AUC is NaN when the targets hold a single class (it is undefined there). `ece` is the expected
    calibration error over ten equal-mass bins and `brier` the Brier score (`medtl.calibration`);
    both are NaN when a probability is not finite (a diverged network).
    """
    targets = np.asarray(targets).astype(np.int64)
    if task_type is TaskType.BINARY:
        preds = (probs >= 0.5).astype(np.int64)
        average, labels = "binary", None
    else:
        preds = probs.argmax(axis=1)
        average, labels = "macro", np.arange(probs.shape[1])
    out = {
        "accuracy": float(skm.accuracy_score(targets, preds)),
        "precision": float(skm.precision_score(targets, preds, average=average, labels=labels, zero_division=0)),
        "recall": float(skm.recall_score(targets, preds, average=average, labels=labels, zero_division=0)),
        "f1": float(skm.f1_score(targets, preds, average=average, labels=labels, zero_division=0)),
        "auc": math.nan,
        "ece": math.nan,
        "brier": math.nan,
    }
    finite = bool(np.isfinite(probs).all())
    if finite and len(targets):
        out["ece"] = expected_calibration_error(targets, probs)
        out["brier"] = brier_score(targets, probs)
    present = np.unique(targets)
    if len(present) > 1 and finite:
        if task_type is TaskType.BINARY:
            out["auc"] = float(skm.roc_auc_score(targets, probs))
        elif probs.shape[1] == 2:  # two classes: sklearn wants the second class's probability, not (N, 2)
            out["auc"] = float(skm.roc_auc_score(targets, probs[:, 1]))
        elif len(present) == probs.shape[1]:
            out["auc"] = float(skm.roc_auc_score(targets, probs, multi_class="ovr", average="macro"))
    return out


def regression_metrics(targets: np.ndarray, preds: np.ndarray) -> dict[str, float]:
    err = np.asarray(preds, np.float64) - np.asarray(targets, np.float64)
    return {"mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err**2).mean()))}


def segmentation_metrics(targets: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Dice and IoU over all pixels of the set (micro), the convention for sparse nodule masks.

    An image set without any foreground in targets and predictions scores 1 (perfect agreement).
    """
    pred = probs >= threshold
    true = np.asarray(targets) > 0
    inter = float(np.logical_and(pred, true).sum())
    total = float(pred.sum() + true.sum())
    union = float(np.logical_or(pred, true).sum())
    return {
        "dice": 1.0 if total == 0 else 2 * inter / total,
        "iou": 1.0 if union == 0 else inter / union,
    }


def per_sample_dice(targets: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    pred = (probs >= threshold).reshape(len(probs), -1)
    true = (np.asarray(targets) > 0).reshape(len(targets), -1)
    inter = np.logical_and(pred, true).sum(1)
    total = pred.sum(1) + true.sum(1)
    return np.where(total == 0, 1.0, 2 * inter / np.maximum(total, 1))
