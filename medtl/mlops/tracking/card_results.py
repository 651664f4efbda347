"""What a fine-tuned model card takes from the study's evaluation: the cell's verdict and each arm's intervals.

`study_results` is the one place the model card calls `medtl.evaluation`: the study's frozen `Analysis`
(`analyse_study`, paper mode, the same numbers `medtl evaluate` reports), from which it quotes the cell's
verdict, each arm's selected learning rate and every test metric's mean with its 95 % interval over seeds
(calibration from the analysis's diagnostics). Analyses are cached per study and store state, so
promoting several cells of one study evaluates it once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from medtl.errors import UserError
from medtl.mlops.tracking.gate import SeedInterval, from_interval

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


def _analysed(study: str, tracking_uri: str) -> Any:
    """The study's frozen Analysis in paper mode, cached until the study's runs change."""
    from medtl.evaluation.analysis import analyse_study
    from medtl.evaluation.collect import fingerprint

    key = (study, tracking_uri, fingerprint(study, tracking_uri))
    if key not in _CACHE:
        analysis = analyse_study(study, tracking_uri, "paper", allow_mixed_pretrained=True, second_mode=False,
                                 ratings=False)
        _CACHE.clear()
        _CACHE[key] = analysis
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
    try:
        analysis = _analysed(study, tracking_uri)
    except UserError as exc:
        return CellResults(f"unavailable: {exc}")
    except Exception as exc:  # a card says what it could not compute rather than block a promotion
        log.warning("the evaluation of study %s failed while writing a model card: %r", study, exc)
        return CellResults(f"unavailable: the study's evaluation failed ({exc.__class__.__name__}: {exc})")
    runs = analysis.runs
    cell = runs[(runs["task"] == task) & (runs["fingerprint"] == fingerprint) & (runs["data_fraction"] == fraction)]
    if cell.empty:
        return CellResults("unavailable: the study's evaluation holds no run of this cell")
    arch = str(cell["arch"].iloc[0])
    rows = analysis.results_for(task, arch, fraction)
    lrs = {row.arm: float(row.lr) for row in rows}
    intervals: dict[str, dict[str, SeedInterval]] = {
        row.arm: {m.metric: from_interval(m.n, m.mean, m.ci) for m in row.metrics if m.metric in metrics} for row in rows
    }
    if fraction == 1.0:
        for arm in analysis.calibration_for(task, arch):
            for name, mean, ci in (("test_ece", arm.ece, arm.ece_ci), ("test_brier", arm.brier, arm.brier_ci)):
                if name in metrics and mean is not None:
                    intervals.setdefault(arm.arm, {})[name] = from_interval(arm.n_known, mean, ci)
    verdict = analysis.verdict_for(task, arch, fraction)
    if verdict is None:
        return CellResults("unavailable: no comparison of this cell (one arm only?)", lrs=lrs, intervals=intervals)
    return CellResults(verdict.text, verdict.best, verdict.significant, lrs, intervals)
