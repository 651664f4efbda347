"""Evaluate a study: analyse it once (`evaluation.analysis`), render the report from that, log it as an MLflow run.

Imports neither torch nor (until the report is logged) MLflow: `medtl evaluate` spends its time on
the study, not on loading libraries it does not use. The figures' drawing process starts first, so
that loading matplotlib overlaps loading pandas and reading the store, and the figures are drawn
while the statistics are computed; the analysis and the report modules are imported after it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from medtl.evaluation.drawing import Drawing
from medtl.provenance import git_commit
from medtl.redact import mask_url
from medtl.training import schema as S

if TYPE_CHECKING:
    from medtl.evaluation.analysis import Analysis
    from medtl.evaluation.verdicts import Verdict

logger = logging.getLogger(__name__)
EVALUATION = S.Stage.EVALUATION.value


@dataclass(frozen=True)
class Evaluation:
    """What `medtl evaluate` produced: the report's path, its verdicts and what it set aside."""

    report: Path
    verdicts: tuple[Verdict, ...]
    n_set_aside: int
    exclude_diverged: bool
    notes: tuple[str, ...] = ()

    def headline(self) -> list[str]:
        """The lines `medtl evaluate` ends on: one per (task, arch), what was set aside, the report."""
        lines = [v.text for v in self.verdicts] or ["no comparisons: the study has no run of a known task"]
        policy = "excluded (--exclude-diverged)" if self.exclude_diverged else "counted at their best checkpoint"
        lines.append(f"one run per grid point ({self.n_set_aside} duplicate run(s) set aside); diverged runs {policy}")
        lines += list(self.notes)
        lines.append(f"report: {self.report.resolve()}")
        return lines


def evaluate(
    study: str,
    *,
    tracking_uri: str | None = None,
    mode: str = "paper",
    out: str | Path | None = None,
    log: bool = True,
    per_lr: bool = False,
    exclude_diverged: bool = False,
    allow_mixed_pretrained: bool = False,
    ui_url: str | None = None,
) -> Evaluation:
    """Analyse a study once, render its report from that analysis; optionally log the folder as an MLflow run.

    One run per grid point counts (the latest FINISHED of each run_key), each protocol
    fingerprint is its own cell, diverged runs count at their best checkpoint unless
    `exclude_diverged`. The chosen mode's comparisons go to comparisons.json; the other mode is
    added to the report as a second section when it is cheap (no arm above
    `summaries.CHEAP_ARM_SIZE` runs).

    Args:
        study: study name (experiment `medtl/<study>`).
        tracking_uri: MLflow tracking URI (default: `$MLFLOW_TRACKING_URI`, else ./mlflow.db).
        mode: "paper" or "recommended".
        out: output folder (default `reports/<study>`).
        log: log the report folder as a run tagged `medtl.stage=evaluation` in the study's
            experiment.
        per_lr: compare the arms at every learning rate too.
        exclude_diverged: leave diverged runs out of selection and tests (said in the output).
        allow_mixed_pretrained: compare a domain arm trained from several pretrained versions.
        ui_url: the MLflow UI's address; run ids in the report link there (None: no links).

    Returns:
        Evaluation: report path, verdicts, runs set aside.

    Raises:
        UserError: unknown study (the known ones are listed), unknown mode, unreadable store,
            a domain arm from several pretrained versions (unless allowed).
    """
    uri = S.resolve_tracking_uri(tracking_uri)
    folder = Path(out) if out is not None else Path("reports") / study
    with Drawing() as drawing:
        from medtl.evaluation.analysis import analyse_study
        from medtl.evaluation.report import render

        analysis = analyse_study(study, uri, mode, per_lr=per_lr, exclude_diverged=exclude_diverged,
                                 allow_mixed_pretrained=allow_mixed_pretrained, on_figures=drawing.submit)
        render(analysis, folder, ui_url=ui_url, drawing=drawing)
    if log:
        log_evaluation(analysis, folder, uri)
    return Evaluation(folder / "report.html", analysis.verdicts, analysis.counts.n_set_aside, exclude_diverged,
                      analysis.selection.notes)


def log_evaluation(analysis: Analysis, folder: Path, tracking_uri: str) -> str:
    """Log a rendered report folder as a FINISHED run (stage `evaluation`) in the study's experiment.

    Returns:
        The run id.
    """
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    tags = {
        S.STAGE_TAG: EVALUATION,
        S.STUDY_TAG: analysis.study,
        S.GIT_COMMIT_TAG: git_commit(),
        "mlflow.runName": f"evaluation {analysis.study} ({analysis.mode})",
    }
    run = client.create_run(analysis.experiment_id, tags=tags, run_name=tags["mlflow.runName"])
    run_id = run.info.run_id
    try:
        params = {"mode": analysis.mode, "per_lr": str(analysis.main.per_lr), "study": analysis.study,
                  "exclude_diverged": str(analysis.exclude_diverged)}
        c = analysis.counts
        counts = {
            "n_runs": c.n_runs,
            "n_set_aside": c.n_set_aside,
            "n_finished": c.n_finished,
            "n_failed": c.n_failed,
            "n_diverged": c.n_diverged,
            "n_comparisons": len(analysis.main.records()),
        }
        client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), 0, 0) for k, v in counts.items()],
            params=[Param(k, v) for k, v in params.items()],
            tags=[RunTag(S.REPORT_FOLDER_TAG, str(folder.resolve()))],
        )
        client.log_artifacts(run_id, str(folder), artifact_path="report")
    except BaseException as exc:
        client.set_tag(run_id, S.FAILURE_TAG, mask_url(f"{type(exc).__name__}: {exc}".splitlines()[0])[:5000])
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")
    logger.info("logged evaluation run %s", run_id)
    return run_id
