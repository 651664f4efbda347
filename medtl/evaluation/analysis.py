"""The frozen analysis of one study: everything its report shows, computed once.

`analyse` turns a collected study into an `Analysis` — the runs counted and set aside, every
mode's comparisons, summary.csv, the selected learning rates, the results tables, the verdicts,
the arms' average ranks, the emissions correlations, the reader-study statistics and the numbers
behind every figure. `report`, `report_tables`, `report_pages`, `plots` and `ratings` only turn it
into files (tests/evaluation/test_boundaries.py reads them for statistics). `analyse_study` is the
one call for "the analysis of study X in this tracking store" (`medtl evaluate`, `medtl serve`,
model cards).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

import pandas as pd

from medtl.evaluation.collect import StudyData, collect
from medtl.evaluation.comparisons import (
    Comparisons,
    choose_learning_rates,
    chosen_frame,
    compare_arms,
)
from medtl.evaluation.diagnostics import ArmCalibration, Diagnostics, diagnose, no_diagnostics
from medtl.evaluation.figure_data import CURVE_EPOCHS, correlations, ratings_figure, study_figures
from medtl.evaluation.figures import Correlation, Figure
from medtl.evaluation.predictions import PredictionsReader, PredictionsSource
from medtl.evaluation.ranks import Ranks, study_ranks
from medtl.evaluation.reader_ratings import collect_ratings
from medtl.evaluation.reader_stats import RatingsResult, analyse_ratings
from medtl.evaluation.selection import Selection, select_runs
from medtl.evaluation.stats import MODES, check_mode
from medtl.evaluation.summaries import (
    ArmResult,
    ResultsTable,
    at_chosen,
    is_cheap,
    results_tables,
    summarize,
    usable_runs,
)
from medtl.evaluation.verdicts import Verdict, verdicts
from medtl.training import schema as S

FAILED_COLUMNS = ("run_id", "task", "arch", "arm", "lr", "seed", "status", "failure_reason")


@dataclass(frozen=True)
class RunCounts:
    """How many runs the analysis counted, and what became of them."""

    n_runs: int
    n_finished: int
    n_diverged: int
    n_failed: int
    n_unknown_task: int
    n_set_aside: int


@dataclass(frozen=True)
class Analysis:
    """One study analysed: every number its report, its files and the served API show.

    `comparisons[0]` is the main mode's (comparisons.json); a second mode, when cheap, follows.
    `summary` is summary.csv, `chosen` the selected learning rates, `results` the results tables,
    `diagnostics` calibration, confusion and subgroup results from the runs' predictions,
    `figures` exactly the figures the report shows.
    """

    study: str
    tracking_uri: str
    experiment_id: str
    generated: datetime
    selection: Selection
    comparisons: tuple[Comparisons, ...]
    counts: RunCounts
    summary: pd.DataFrame
    chosen: pd.DataFrame
    lr_selection: pd.DataFrame
    results: tuple[ResultsTable, ...]
    verdicts: tuple[Verdict, ...]
    ranks: Ranks
    emissions: tuple[Correlation, ...]
    failed: pd.DataFrame
    figures: tuple[Figure, ...]
    diagnostics: Diagnostics
    ratings: RatingsResult | None = None

    @property
    def main(self) -> Comparisons:
        """The main mode's comparisons."""
        return self.comparisons[0]

    @property
    def runs(self) -> pd.DataFrame:
        """The runs counted: one per grid point, protocols split (`Selection.runs`)."""
        return self.selection.runs

    @property
    def mode(self) -> str:
        return self.main.mode

    @property
    def exclude_diverged(self) -> bool:
        return self.main.exclude_diverged

    def verdict_for(self, task: str, arch: str, data_fraction: float = 1.0) -> Verdict | None:
        """The verdict of one cell (`arch` as the report labels it when a cell has several protocols):
        best arm, each arm's mean with its interval, the adjusted p against the best arm."""
        return next((v for v in self.verdicts if (v.task, v.arch, v.data_fraction) == (task, arch, data_fraction)), None)

    def results_for(self, task: str, arch: str, data_fraction: float = 1.0) -> tuple[ArmResult, ...]:
        """One cell's results-table rows: each arm at its selected lr, every test metric with its interval."""
        return tuple(r for t in self.results if (t.task, t.data_fraction) == (task, data_fraction)
                     for r in t.rows if r.arch == arch)

    def calibration_for(self, task: str, arch: str) -> tuple[ArmCalibration, ...]:
        """One classification cell's calibration at full data: ECE and Brier per arm with their intervals."""
        return tuple(a for a in self.diagnostics.calibration if (a.task, a.arch) == (task, arch))


def analyse(
    data: StudyData,
    mode: str = "paper",
    *,
    per_lr: bool = False,
    exclude_diverged: bool = False,
    allow_mixed_pretrained: bool = False,
    second_mode: bool | None = None,
    ratings: pd.DataFrame | None = None,
    predictions: PredictionsSource | None = None,
    on_figures: Callable[[tuple[Figure, ...]], None] | None = None,
) -> Analysis:
    """Analyse a collected study: select its runs, compare its arms, summarise, rank, judge, diagnose.

    One run per grid point counts (the latest FINISHED of each run_key), each protocol
    fingerprint is its own cell, diverged runs count at their best checkpoint unless
    `exclude_diverged` (then they leave every statistic: tests, tables, ranks, correlations).

    Args:
        data: `collect(...)` of the study.
        mode: "paper" or "recommended" (the main mode: comparisons.json, verdicts).
        per_lr: compare the arms at every learning rate too.
        exclude_diverged: leave diverged runs out.
        allow_mixed_pretrained: compare a domain arm trained from several pretrained versions.
        second_mode: add the other mode's comparisons (None: when cheap, see `summaries.is_cheap`).
        ratings: the reader-study ratings (`reader_ratings.collect_ratings`), if any.
        predictions: reads the runs' predictions (`predictions.PredictionsReader`); None: no
            calibration, confusion or subgroup results (the report says so).
        on_figures: called with each batch of figures as soon as it is known — the study's figures
            before the tests run, the reliability and ratings figures at the end (`drawing.Drawing.submit`:
            they are drawn while the rest is computed).

    Raises:
        StatsError: an unknown mode (the valid ones are listed).
        MixedPretrainedError: a domain arm from several pretrained versions, not allowed.
        RatingsError: ratings that are not scores 1-5.
    """
    check_mode(mode)
    selection = select_runs(data.runs, exclude_diverged=exclude_diverged, allow_mixed_pretrained=allow_mixed_pretrained)
    runs = selection.runs
    finished = runs["status"] == "FINISHED"
    counted = runs[~(finished & runs["diverged"])] if exclude_diverged else runs
    choices = choose_learning_rates(selection, exclude_diverged)
    chosen = chosen_frame(choices)
    used = _used_runs(counted, chosen)
    reading = _read_in_background(predictions, used)  # files parse while the tests run
    ranks = study_ranks(counted, chosen)
    emissions = correlations(counted)
    figures = study_figures(counted, data.histories, chosen, ranks, emissions[0])
    if on_figures is not None:
        on_figures(figures)
    options = {"exclude_diverged": exclude_diverged, "selection": selection, "choices": choices}
    comparisons = [compare_arms(data.runs, mode, per_lr, **options)]
    if is_cheap(runs) if second_mode is None else second_mode:
        other = next(m for m in MODES if m != mode)
        comparisons.append(compare_arms(data.runs, other, per_lr, **options))
    main = comparisons[0]
    summary = summarize(runs, exclude_diverged)
    at_lr = at_chosen(summary, chosen) if not summary.empty else summary
    counts = RunCounts(len(runs), int(finished.sum()), int((finished & runs["diverged"]).sum()),
                       int(runs["failed"].sum()), main.skipped_runs, selection.n_duplicates)
    diagnostics = _diagnose(used, at_lr, reading)
    rated = analyse_ratings(ratings) if ratings is not None and not ratings.empty else None
    late = (*diagnostics.figures, *((ratings_figure(rated),) if rated is not None else ()))
    if on_figures is not None and late:
        on_figures(late)
    return Analysis(
        study=data.study,
        tracking_uri=data.tracking_uri,
        experiment_id=data.experiment_id,
        generated=datetime.now(UTC),
        selection=selection,
        comparisons=tuple(comparisons),
        counts=counts,
        summary=summary,
        chosen=chosen,
        lr_selection=main.selection(),
        results=results_tables(summary, at_lr, main.fractions),
        verdicts=tuple(verdicts(at_lr, chosen, main)),
        ranks=ranks,
        emissions=emissions,
        failed=runs.loc[runs["failed"], list(FAILED_COLUMNS)],
        figures=(*figures, *late),
        diagnostics=diagnostics,
        ratings=rated,
    )


def _used_runs(counted: pd.DataFrame, chosen: pd.DataFrame) -> pd.DataFrame:
    """The runs whose predictions the report uses: each arm's counted runs at its selected lr at full data."""
    ok = usable_runs(counted)
    return at_chosen(ok[ok["data_fraction"] == 1.0], chosen)


def _read_in_background(predictions: PredictionsSource | None, used: pd.DataFrame) -> Future | None:
    """Start reading the runs' predictions on a thread (pyarrow parses without the GIL); None: not read."""
    if predictions is None or used.empty:
        return None
    pool = ThreadPoolExecutor(1, thread_name_prefix="medtl-predictions")
    try:
        return pool.submit(predictions, used)
    finally:
        pool.shutdown(wait=False)


def _diagnose(used: pd.DataFrame, at_lr: pd.DataFrame, reading: Future | None) -> Diagnostics:
    """Diagnostics of the used runs from what the reading found (the best runs' curves from the summary)."""
    if reading is None:
        why = "no run at full training data" if used.empty else "predictions not read"
        return no_diagnostics(f"{why}: no calibration, confusion or subgroup results")
    best = at_lr[(at_lr["data_fraction"] == 1.0) & at_lr["best_run_id"].notna()] if len(at_lr) else at_lr
    best_runs = {(str(t), str(a), str(g)): str(r) for t, a, g, r in
                 best[["task", "arch", "arm", "best_run_id"]].drop_duplicates().itertuples(index=False, name=None)}
    return diagnose(used, best_runs, reading.result())


def analyse_study(
    study: str,
    tracking_uri: str | None = None,
    mode: str = "paper",
    *,
    per_lr: bool = False,
    exclude_diverged: bool = False,
    allow_mixed_pretrained: bool = False,
    second_mode: bool | None = None,
    ratings: bool = True,
    predictions: bool = True,
    on_figures: Callable[[tuple[Figure, ...]], None] | None = None,
) -> Analysis:
    """The frozen analysis of one study in a tracking store: collect it, then `analyse` it.

    What `medtl evaluate` renders and logs, what `medtl serve` answers with, and what a model card
    quotes (a cell's arm means with their intervals, its verdict).

    Args:
        study: the study name (experiment `medtl/<study>`).
        tracking_uri: MLflow tracking URI (default: `$MLFLOW_TRACKING_URI`, else ./mlflow.db).
        mode: "paper" or "recommended".
        per_lr: compare the arms at every learning rate too.
        exclude_diverged: leave diverged runs out.
        allow_mixed_pretrained: compare a domain arm trained from several pretrained versions.
        second_mode: add the other mode (None: when cheap).
        ratings: read the reader-study ratings (artifacts of the study's gradcam runs).
        predictions: read the runs' `predictions/test.csv` (calibration, confusion, subgroups).
        on_figures: see `analyse`.

    Raises:
        UnknownStudyError: the study is not in the store (the known ones are listed).
        UserError: see `analyse`; an unreadable store.
    """
    check_mode(mode)
    uri = S.resolve_tracking_uri(tracking_uri)
    data = collect(study, uri, primary_only=True, max_step=CURVE_EPOCHS)
    return analyse(
        data, mode, per_lr=per_lr, exclude_diverged=exclude_diverged, allow_mixed_pretrained=allow_mixed_pretrained,
        second_mode=second_mode, ratings=collect_ratings(uri, study) if ratings else None,
        predictions=PredictionsReader(uri) if predictions else None, on_figures=on_figures,
    )
