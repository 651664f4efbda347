"""Collect a study's reader-study ratings from the tracking store (what `evaluate` and `serve` render).

The ratings of the blinded Grad-CAM reader study are artifacts `reader/ratings-<rater>.csv` of the
study's gradcam runs (written by `medtl reader-import`, see `medtl.mlops.explain.reader_study`). Finding the
gradcam runs goes through the evaluation reader (one SELECT on SQL stores), so a study without a
gradcam run costs no MLflow import; only reading the artifacts uses MLflow's client.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from medtl.evaluation.readers import reader
from medtl.training import schema as S

KEY_PATH = "reader/key.json"
"""The gradcam run's artifact mapping (image, label) to arm; never part of a packet."""
RATINGS_COLUMNS = ("image", "label", "arm", "score", "comment", "rater")
COLLECTED_COLUMNS = ("gradcam_run", "task", "arch", "sample", *RATINGS_COLUMNS)
RATINGS_ARTIFACT = re.compile(r"reader/ratings-[A-Za-z0-9_.-]+\.csv")


def empty_ratings() -> pd.DataFrame:
    """A ratings frame with no row and the collected columns (score int64)."""
    return pd.DataFrame({c: pd.Series(dtype="int64" if c == "score" else "object") for c in COLLECTED_COLUMNS})


def collect_ratings(tracking_uri: str | None, study: str) -> pd.DataFrame:
    """Every rating of the study: one row per (gradcam run, rater, image, label).

    Reads `reader/ratings-*.csv` of every gradcam run in experiment `medtl/<study>`; columns
    gradcam_run, task, arch, sample, image, label, arm, score (int), comment, rater. An unknown
    study or one without ratings gives an empty frame with these columns.

    Raises:
        UserError: if the store cannot be read.
    """
    uri = S.resolve_tracking_uri(tracking_uri)
    store = reader(uri)
    experiment = store.experiments().get(study)
    if experiment is None:
        return empty_ratings()
    run_ids = store.run_ids_tagged(experiment, S.STAGE_TAG, S.Stage.GRADCAM.value)
    if not run_ids:
        return empty_ratings()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    frames = []
    with tempfile.TemporaryDirectory() as tmp:
        for run_id in run_ids:
            files = [a.path for a in client.list_artifacts(run_id, "reader")]
            found = sorted(p for p in files if RATINGS_ARTIFACT.fullmatch(p))
            if not found:
                continue
            tags = client.get_run(run_id).data.tags
            key = read_key(client, run_id, files) or {"images": {}}
            for path in found:
                local = client.download_artifacts(run_id, path, str(Path(tmp) / run_id))
                frame = pd.read_csv(
                    local, dtype={"image": str, "label": str, "arm": str, "rater": str, "comment": str},
                    keep_default_na=False,
                )
                frame["score"] = frame["score"].astype("int64")
                frame.insert(0, "sample", [key["images"].get(i, {}).get("sample", "") for i in frame["image"]])
                frame.insert(0, "arch", tags.get(S.ARCH_TAG, ""))
                frame.insert(0, "task", tags.get(S.TASK_TAG, ""))
                frame.insert(0, "gradcam_run", run_id)
                frames.append(frame[list(COLLECTED_COLUMNS)])
    return pd.concat(frames, ignore_index=True) if frames else empty_ratings()


def read_key(client: Any, run_id: str, files: list[str] | None = None) -> dict[str, Any] | None:
    """The reader key (`reader/key.json`) of gradcam run `run_id`, or None if none was made yet.

    Args:
        client: an `mlflow.tracking.MlflowClient`.
        run_id: the gradcam run.
        files: the run's artifact paths under `reader/` when already listed.
    """
    names = set(files) if files is not None else {a.path for a in client.list_artifacts(run_id, "reader")}
    if KEY_PATH not in names:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        return json.loads(Path(client.download_artifacts(run_id, KEY_PATH, tmp)).read_text())
