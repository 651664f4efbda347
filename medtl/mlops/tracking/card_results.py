"""What a fine-tuned model card takes from the study's evaluation: the cell's verdict and each arm's intervals.

`study_results` is the one place the model card calls `medtl.evaluation` (collect → selection →
analysis → verdicts); the intervals are percentile bootstraps over seeds (`gate.seed_interval`) of each
arm's test metrics at its selected learning rate. Results are cached per study and store state, so
promoting several cells of one study evaluates it once.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

from medtl.errors import UserError
from medtl.mlops.tracking.gate import SeedInterval, seed_interval

log = logging.getLogger(__name__)
_CACHE: dict[tuple[Any, ...], Any] = {}


@dataclass(frozen=True)
class CellResults:
    """One cell's answer: the verdict line, each arm's selected lr and test-metric intervals over seeds."""

    verdict: str
    best_arm: str | None = None
    significant: bool | None = None
    lrs: dict[str, float] = field(default_factory=dict)
    intervals: dict[str, dict[str, SeedInterval]] = field(default_factory=dict)


def _analysed(study: str, tracking_uri: str) -> tuple[Any, Any, list[Any]]:
    """(selection, analysis, verdicts) of a study in paper mode, cached until the study's runs change."""
    from medtl.evaluation.analysis import analyse, summarize
    from medtl.evaluation.collect import collect, fingerprint
    from medtl.evaluation.selection import select_runs
    from medtl.evaluation.verdicts import verdicts

    key = (study, tracking_uri, fingerprint(study, tracking_uri))
    if key not in _CACHE:
        data = collect(study, tracking_uri, primary_only=True, max_step=1)
        selection = select_runs(data.runs, allow_mixed_pretrained=True)
        analysis = analyse(data.runs, "paper", selection=selection)
        _CACHE.clear()
        _CACHE[key] = (selection, analysis, verdicts(summarize(selection.runs), analysis))
    return _CACHE[key]


def study_results(
    study: str, tracking_uri: str, *, task: str, fingerprint: str, fraction: float, metrics: list[str]
) -> CellResults:
    """The verdict and per-arm intervals of the cell (task, fingerprint, fraction) of `study`.

    Args:
        study: the study name.
        tracking_uri: the MLflow store.
        task: the cell's task.
        fingerprint: the cell's protocol fingerprint (a split cell's arch label is found through it).
        fraction: the training-data fraction.
        metrics: the test metrics to give intervals for (`test_f1`, `test_ece`, ...).

    Returns:
        CellResults; when the study cannot be evaluated, a verdict saying why and no intervals.
    """
    from medtl.evaluation.analysis import chosen_lrs

    try:
        selection, analysis, found = _analysed(study, tracking_uri)
    except UserError as exc:
        return CellResults(f"unavailable: {exc}")
    except Exception as exc:  # a card says what it could not compute rather than block a promotion
        log.warning("the evaluation of study %s failed while writing a model card: %r", study, exc)
        return CellResults(f"unavailable: the study's evaluation failed ({exc.__class__.__name__}: {exc})")
    runs = selection.runs
    cell = runs[(runs["task"] == task) & (runs["fingerprint"] == fingerprint) & (runs["data_fraction"] == fraction)]
    if cell.empty:
        return CellResults("unavailable: the study's evaluation holds no run of this cell")
    arch = str(cell["arch"].iloc[0])
    verdict = next((v for v in found if v.task == task and v.arch == arch and v.data_fraction == fraction), None)
    chosen = chosen_lrs(analysis)
    chosen = chosen[(chosen["task"] == task) & (chosen["arch"] == arch) & (chosen["data_fraction"] == fraction)]
    lrs = {str(g): float(lr) for g, lr in zip(chosen["group"], chosen["lr"], strict=True)}
    usable = cell[(cell["status"] == "FINISHED")]
    intervals: dict[str, dict[str, SeedInterval]] = {}
    for arm, lr in lrs.items():
        rows = usable[(usable["group"] == arm) & (usable["lr"].astype(float).sub(lr).abs() < 1e-12 * max(1.0, abs(lr)))]
        intervals[arm] = {m: seed_interval(_values(rows, m)) for m in metrics}
    if verdict is None:
        return CellResults("unavailable: no comparison of this cell (one arm only?)", lrs=lrs, intervals=intervals)
    return CellResults(verdict.text, verdict.best, verdict.significant, lrs, intervals)


def _values(rows: Any, metric: str) -> list[float]:
    if metric not in rows.columns:
        return []
    return [float(v) for v in rows[metric].astype(float) if math.isfinite(v)]
