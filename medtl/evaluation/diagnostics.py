"""What the runs' predictions say beyond the test metrics: calibration, confusion matrices, subgroup metrics.

Computed for the runs the report's results tables show at full training data — each arm's runs at
its selected learning rate — from their `predictions/test.csv` (read once, `predictions`):

- calibration of classification runs: ECE over equal-mass bins and the Brier score, taken from the
  run's `test_ece` / `test_brier` metrics when it logged them, recomputed from its predictions
  otherwise (stores that predate them), "unknown" (and named) when it has neither; per arm the
  mean over seeds with its bootstrap interval, and the reliability curve of the arm's best run
  (the one `medtl promote` picks) with per-bin Clopper–Pearson intervals. One run's curve, not the
  seeds pooled: every seed predicts the same test images, so pooled bins would count each image
  several times and their intervals would be too narrow;
- confusion matrices of classification arms, summed over the arm's seeds;
- the primary metric per subgroup (every `subgroup_<name>` column of the predictions): per run on
  the subgroup's samples, then the arm's mean over seeds with its bootstrap interval.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from medtl.calibration import (
    DEFAULT_BINS,
    brier_score,
    expected_calibration_error,
    reliability_bins,
)
from medtl.evaluation.figure_data import safe_name
from medtl.evaluation.figures import ReliabilityFigure, ReliabilityPanel
from medtl.evaluation.predictions import Predictions
from medtl.evaluation.uncertainty import Interval, mean_intervals
from medtl.training import schema as S
from medtl.training.spec import TASKS, Task, TaskType

CALIBRATION_COLUMNS = ("run_id", "task", "arch", "arm", "lr", "seed", "ece", "brier", "source", "note")
"""calibration.csv: one row a classification run the report uses; `source` is `metrics` (the run's
own test_ece / test_brier), `predictions` (recomputed here) or `unknown` (with the reason in `note`)."""
CLASSIFICATION = (TaskType.BINARY, TaskType.MULTICLASS)
SUBGROUP_METRIC = {TaskType.BINARY: "f1", TaskType.MULTICLASS: "f1 (macro)", TaskType.REGRESSION: "mae",
                   TaskType.SEGMENTATION: "dice (mean per image)"}


@dataclass(frozen=True)
class ArmCalibration:
    """One arm's calibration at its selected lr: ECE and Brier over its seeds, its best run's curve."""

    task: str
    arch: str
    arm: str
    lr: float
    n_runs: int
    n_known: int
    ece: float | None
    ece_std: float | None
    ece_ci: Interval
    brier: float | None
    brier_std: float | None
    brier_ci: Interval
    n_from_metrics: int
    n_recomputed: int
    unknown: tuple[str, ...]
    best_run_id: str | None


@dataclass(frozen=True)
class Confusion:
    """One classification arm's confusion matrix summed over its seeds (rows: true class), and each
    class's recall from it (None for a class without test samples)."""

    task: str
    arch: str
    arm: str
    classes: tuple[str, ...]
    counts: np.ndarray
    n_runs: int
    recall: tuple[float | None, ...]


@dataclass(frozen=True)
class SubgroupResult:
    """The primary metric of one arm on one subgroup's test samples: mean over seeds with its interval."""

    task: str
    arch: str
    arm: str
    variable: str
    value: str
    metric: str
    n_samples: int
    n_runs: int
    mean: float
    ci: Interval


@dataclass(frozen=True)
class Diagnostics:
    """Calibration, confusion and subgroup results of the runs a report uses, and the reliability figures."""

    runs: pd.DataFrame
    calibration: tuple[ArmCalibration, ...]
    confusions: tuple[Confusion, ...]
    subgroups: tuple[SubgroupResult, ...]
    figures: tuple[ReliabilityFigure, ...]
    notes: tuple[str, ...] = ()
    read: bool = True

    @property
    def unknown(self) -> list[tuple[str, int]]:
        """Why runs' calibration is unknown, and how many runs for each reason (most frequent first)."""
        notes = self.runs.loc[self.runs["source"] == "unknown", "note"].str.removeprefix("calibration unknown: ")
        return [(str(why), int(n)) for why, n in notes.value_counts().items()]


def no_diagnostics(reason: str) -> Diagnostics:
    """Diagnostics of a report that read no predictions (the reason goes into the notes)."""
    return Diagnostics(pd.DataFrame(columns=list(CALIBRATION_COLUMNS)), (), (), (), (), (reason,), read=False)


# ---------------------------------------------------------------- metrics on one run's predictions


def _f1(targets: np.ndarray, predicted: np.ndarray, label: int) -> float:
    tp = float(np.sum((predicted == label) & (targets == label)))
    wrong = float(np.sum((predicted == label) != (targets == label)))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + wrong)


def primary_value(p: Predictions, rows: np.ndarray) -> float:
    """The task's primary metric on the samples `rows` (a boolean mask): F1 as `training/metrics`
    computes it (binary: the positive class; multiclass: macro over every class, 0 where undefined),
    MAE, or the mean per-image Dice."""
    if p.task_type is TaskType.BINARY:
        return _f1(p.targets[rows], p.predictions[rows], 1)
    if p.task_type is TaskType.MULTICLASS:
        return float(np.mean([_f1(p.targets[rows], p.predictions[rows], c) for c in range(len(p.classes))]))
    if p.task_type is TaskType.REGRESSION:
        return float(np.mean(np.abs(p.predictions[rows] - p.targets[rows])))
    return float(np.mean(p.dice[rows])) if p.dice is not None else float("nan")


def confusion_counts(p: Predictions) -> np.ndarray:
    """(C, C) counts: row the true class, column the predicted one."""
    k = len(p.classes)
    return np.bincount(p.targets * k + p.predictions, minlength=k * k).reshape(k, k)


# ---------------------------------------------------------------- a study's diagnostics


def diagnose(
    used: pd.DataFrame, best_runs: Mapping[tuple[str, str, str], str], found: Mapping[str, Predictions | str]
) -> Diagnostics:
    """Diagnostics of the runs a report uses.

    Args:
        used: the runs (run_id, task, arch, arm, lr, seed, and test_ece / test_brier when logged):
            each arm's counted runs at its selected lr at full training data.
        best_runs: (task, arch, arm) → the arm's best run at that lr (the reliability curve's run).
        found: each run's predictions or why there are none (`predictions.PredictionsReader`).
    """
    rows, calibration, confusions, subgroups, figures, notes = [], [], [], [], [], []
    for (task, arch), cell in used.groupby(["task", "arch"], sort=True):
        info = TASKS[Task(task)]
        arms = S.arm_order(cell["arm"].unique())
        panels = []
        for arm in arms:
            runs = cell[cell["arm"] == arm]
            preds = {r: found.get(r, "not read") for r in runs["run_id"]}
            ready = {r: p for r, p in preds.items() if isinstance(p, Predictions)}
            if info.type in CLASSIFICATION:
                per_run = [_run_calibration(row, preds[row["run_id"]]) for row in runs.to_dict("records")]
                rows += per_run
                best = best_runs.get((task, arch, arm))
                calibration.append(_arm_calibration(task, arch, arm, runs, per_run, best))
                panels.append(_panel(arm, best, preds.get(best) if best else "no best run"))
                if ready:
                    first = next(iter(ready.values()))
                    counts = np.sum([confusion_counts(p) for p in ready.values()], axis=0)
                    totals = counts.sum(axis=1)
                    recall = tuple(float(counts[i, i] / t) if t else None for i, t in enumerate(totals))
                    confusions.append(Confusion(task, arch, arm, first.classes, counts, len(ready), recall))
            subgroups += _subgroups(task, arch, arm, info.type, list(ready.values()))
        if panels and all(p.note for p in panels):
            notes.append(f"{task} / {arch}: no reliability diagram, no arm's best run has predictions.")
        elif panels:
            figures.append(ReliabilityFigure(
                f"{safe_name('reliability', task, arch)}.png", str(task), str(arch),
                f"{task} {arch}: reliability of each arm's best run",
                "p(positive)" if info.type is TaskType.BINARY else "top-class confidence",
                "observed frequency", tuple(panels),
            ))
    if not subgroups:
        notes.append("no subgroup column (subgroup_<name>) in the predictions read: no per-subgroup table")
    runs_frame = pd.DataFrame(rows, columns=list(CALIBRATION_COLUMNS))
    return Diagnostics(runs_frame, tuple(calibration), tuple(confusions), tuple(subgroups), tuple(figures), tuple(notes))


def _run_calibration(row: dict, preds: Predictions | str) -> dict:
    out = {k: row.get(k) for k in ("run_id", "task", "arch", "arm", "lr", "seed")}
    ece, brier = _finite(row.get("test_ece")), _finite(row.get("test_brier"))
    if ece is not None and brier is not None:
        return {**out, "ece": ece, "brier": brier, "source": "metrics", "note": None}
    if isinstance(preds, Predictions) and preds.probs is not None and len(preds):
        return {**out, "ece": expected_calibration_error(preds.targets, preds.probs, DEFAULT_BINS),
                "brier": brier_score(preds.targets, preds.probs), "source": "predictions", "note": None}
    reason = preds if isinstance(preds, str) else "no test samples in its predictions"
    return {**out, "ece": None, "brier": None, "source": "unknown", "note": f"calibration unknown: {reason}"}


def _finite(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def _arm_calibration(task: str, arch: str, arm: str, runs: pd.DataFrame, per_run: list[dict], best: str | None) -> ArmCalibration:
    known = [r for r in per_run if r["source"] != "unknown"]
    ece = np.array([r["ece"] for r in known], float)
    brier = np.array([r["brier"] for r in known], float)
    ece_ci, brier_ci = mean_intervals([ece, brier])
    std = lambda v: float(np.std(v, ddof=1)) if v.size > 1 else None  # noqa: E731
    unknown = tuple(str(r["run_id"]) for r in per_run if r["source"] == "unknown")
    return ArmCalibration(
        task, arch, arm, float(runs["lr"].iloc[0]), len(per_run), len(known),
        float(ece.mean()) if ece.size else None, std(ece), ece_ci,
        float(brier.mean()) if brier.size else None, std(brier), brier_ci,
        sum(r["source"] == "metrics" for r in known), sum(r["source"] == "predictions" for r in known), unknown, best,
    )


def _panel(arm: str, run_id: str | None, preds: Predictions | str | None) -> ReliabilityPanel:
    empty = np.empty(0)
    label = f"{arm}" + (f" (run {run_id[:8]})" if run_id else "")
    if not isinstance(preds, Predictions) or preds.probs is None or not len(preds):
        why = preds if isinstance(preds, str) else "no predictions"
        return ReliabilityPanel(arm, label, empty, empty, empty, empty, empty, note=f"calibration unknown: {why}")
    bins = reliability_bins(preds.targets, preds.probs, DEFAULT_BINS)
    pick = lambda name: np.array([getattr(b, name) for b in bins], float)  # noqa: E731
    ece = expected_calibration_error(preds.targets, preds.probs, DEFAULT_BINS)
    return ReliabilityPanel(arm, f"{label}, ECE {ece:.3f}", pick("confidence"), pick("observed"), pick("observed_low"),
                            pick("observed_high"), pick("n"))


def _subgroups(task: str, arch: str, arm: str, task_type: TaskType, ready: list[Predictions]) -> list[SubgroupResult]:
    variables = sorted({v for p in ready for v in p.subgroups})
    out = []
    metric = SUBGROUP_METRIC[task_type]
    for variable in variables:
        with_it = [p for p in ready if variable in p.subgroups]
        values = sorted({str(v) for p in with_it for v in p.subgroups[variable]})
        samples, sizes = [], []
        for value in values:
            per_run = [primary_value(p, p.subgroups[variable] == value) for p in with_it
                       if np.any(p.subgroups[variable] == value)]
            samples.append(np.array(per_run, float))
            sizes.append(int(np.sum(with_it[0].subgroups[variable] == value)))
        for value, sample, size, ci in zip(values, samples, sizes, mean_intervals(samples), strict=True):
            out.append(SubgroupResult(task, arch, arm, variable, value, metric, size, int(sample.size),
                                      float(np.nanmean(sample)) if sample.size else float("nan"), ci))
    return out

