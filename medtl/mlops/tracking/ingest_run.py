"""The ingest's MLflow run: its settings, the OCR engine's versions, counts per scan verdict and modality."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from medtl.mlops.tracking.client import end_run, get_or_create_experiment, log_metrics, log_params
from medtl.mlops.tracking.environment import source_tags
from medtl.training import schema as S


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()


def scan_metrics(verdicts: list[dict[str, Any]]) -> dict[str, float]:
    """MLflow metrics of the scan's verdicts: `scan_<verdict>`, `scan_<verdict>_<modality>`, `scan_refused_<reason>`.

    Kept verdicts count images; `refused` and `forgotten` count files. No text, only counts.
    """
    metrics: dict[str, float] = {}
    for row in verdicts:
        verdict, count = _slug(row["verdict"]), float(row["count"])
        for name in (f"scan_{verdict}", f"scan_{verdict}_{row['modality']}",
                     *([f"scan_{verdict}_{_slug(row['reason'])}"] if row["reason"] else [])):
            metrics[name] = metrics.get(name, 0.0) + count
    return metrics


def log_ingest_run(out: Path, summary: Any, settings: dict[str, Any], tracking_uri: str | None = None) -> str:
    """Log the ingest as an MLflow run (experiment medtl/pretrain, stage ingest); returns its id.

    Params are the run's settings and the OCR engine's versions; metrics the run's counts and the
    scan's verdicts over the whole output; artifacts `scan_verdicts.csv` and `skipped.csv` (keys and
    reasons only). The source folder is not logged: hospital exports name folders after patients.
    """
    import mlflow

    from medtl.training.archive import ocr, shards
    from medtl.training.archive.ingest import OFF_WARNING

    uri = S.resolve_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient(uri)
    experiment = get_or_create_experiment(client, S.PRETRAIN_EXPERIMENT, uri)
    tags = {S.STAGE_TAG: S.Stage.INGEST.value, S.DATA_TAG: str(out.resolve()), "medtl.burned_in": summary.scan_mode}
    if summary.scan_mode == "off":
        tags[S.NOTE_TAG] = f"WARNING: {OFF_WARNING}."
    run = client.create_run(experiment, run_name=f"ingest-{out.name}", tags={**source_tags(), **tags})
    params = {**settings, **{f"ocr_{k}": v for k, v in ocr.engine_versions().items()}}
    counts = {k: float(v) for k, v in dataclasses.asdict(summary).items() if isinstance(v, int | float)}
    try:
        log_params(client, run.info.run_id, params)
        log_metrics(client, run.info.run_id, {**counts, **scan_metrics(shards.read_verdicts(out))})
        for name in (shards.VERDICTS, shards.SKIPPED):
            if (out / name).is_file():
                client.log_artifact(run.info.run_id, str(out / name))
    except BaseException:
        end_run(client, run.info.run_id, "FAILED")
        raise
    end_run(client, run.info.run_id, "FINISHED")
    return run.info.run_id
