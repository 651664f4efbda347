"""Evaluate a study: collect its runs, compare the arms, render the report, log it as an MLflow run."""

from __future__ import annotations

import logging
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from medtl.evaluation.collect import StudyData, collect
from medtl.evaluation.plots import CURVE_EPOCHS
from medtl.evaluation.report import Analysis, analyse, is_cheap, render
from medtl.evaluation.stats import MODES, StatsError
from medtl.mlops import tracking as T

logger = logging.getLogger(__name__)
EVALUATION = "evaluation"


def evaluate_study(
    study: str,
    *,
    tracking_uri: str | None = None,
    mode: str = "paper",
    out: str | Path | None = None,
    log: bool = True,
    per_lr: bool = False,
) -> Path:
    """Collect, compare and render a study's report; optionally log the folder as an MLflow run.

    The chosen mode's comparisons go to comparisons.json; the other mode is added to the report
    as a second section when it is cheap (no arm above `report.CHEAP_ARM_SIZE` runs).

    Args:
        study: study name (experiment `medtl/<study>`).
        tracking_uri: MLflow tracking URI (default: `$MLFLOW_TRACKING_URI`, else ./mlflow.db).
        mode: "paper" or "recommended".
        out: output folder (default `reports/<study>`).
        log: log the report folder as a run tagged `medtl.stage=evaluation` in the study's
            experiment.
        per_lr: compare the arms at every learning rate too.

    Returns:
        The path of report.html.

    Raises:
        UserError: unknown study (the known ones are listed), unknown mode, unreadable store.
    """
    if mode not in MODES:
        raise StatsError(f"unknown mode {mode!r}; valid modes: {', '.join(MODES)}")
    uri = T.resolve_tracking_uri(tracking_uri)
    data = collect(study, uri, primary_only=True, max_step=CURVE_EPOCHS)
    analyses = [analyse(data.runs, mode, per_lr)]
    other = next(m for m in MODES if m != mode)
    if is_cheap(data.runs):
        analyses.append(analyse(data.runs, other, per_lr))
    folder = Path(out) if out is not None else Path("reports") / study
    from medtl.mlops.reader_study import collect_ratings

    render(data, analyses, folder, ratings=collect_ratings(uri, study))
    if log:
        log_evaluation(data, analyses[0], folder, uri)
    return folder / "report.html"


def log_evaluation(data: StudyData, analysis: Analysis, folder: Path, tracking_uri: str) -> str:
    """Log a rendered report folder as a FINISHED run (stage `evaluation`) in the study's experiment.

    Returns:
        The run id.
    """
    client = MlflowClient(tracking_uri)
    runs = data.runs
    tags = {
        T.STAGE_TAG: EVALUATION,
        T.STUDY_TAG: data.study,
        "medtl.git_commit": T.git_commit(),
        "mlflow.runName": f"evaluation {data.study} ({analysis.mode})",
    }
    run = client.create_run(data.experiment_id, tags=tags, run_name=tags["mlflow.runName"])
    run_id = run.info.run_id
    try:
        params = {"mode": analysis.mode, "per_lr": str(analysis.per_lr), "study": data.study}
        counts = {
            "n_runs": len(runs),
            "n_finished": int((runs["status"] == "FINISHED").sum()),
            "n_failed": int(runs["failed"].sum()),
            "n_diverged": int(((runs["status"] == "FINISHED") & runs["diverged"]).sum()),
            "n_comparisons": len(analysis.records()),
        }
        client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), 0, 0) for k, v in counts.items()],
            params=[Param(k, v) for k, v in params.items()],
            tags=[RunTag("medtl.report_folder", str(folder.resolve()))],
        )
        client.log_artifacts(run_id, str(folder), artifact_path="report")
    except BaseException as exc:
        T.end_run(client, run_id, "FAILED", f"{type(exc).__name__}: {exc}".splitlines()[0])
        raise
    T.end_run(client, run_id, "FINISHED")
    logger.info("logged evaluation run %s", run_id)
    return run_id
