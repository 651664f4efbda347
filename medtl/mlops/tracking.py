"""MLflow tracking: the store's location, the schema's names, and the callbacks the loop is given."""

from __future__ import annotations

import logging
import math
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from medtl.redact import mask_url
from medtl.training.loop import Callback, FitState

log = logging.getLogger(__name__)

DEFAULT_DB = "mlflow.db"
STAGE_TAG = "medtl.stage"
RUN_KEY_TAG = "medtl.run_key"
STUDY_TAG = "medtl.study"
GROUP_TAG = "medtl.group"
FAILURE_TAG = "medtl.failure_reason"
PARENT_TAG = "mlflow.parentRunId"
_BATCH = 100  # MLflow's per-call limit for params


def resolve_tracking_uri(uri: str | None = None) -> str:
    """`uri`, else `$MLFLOW_TRACKING_URI`, else `sqlite:///<cwd>/mlflow.db` (absolute path)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{Path.cwd() / DEFAULT_DB}"


def artifact_root_for(uri: str) -> str | None:
    """For a SQLite store, a local artifact folder beside the database; else the server's default."""
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        return (db.parent / "mlartifacts").resolve().as_uri()
    return None


def get_or_create_experiment(client: MlflowClient, name: str, tracking_uri: str) -> str:
    """The id of experiment `name`, created (with its artifact folder beside a SQLite store) if new."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    root = artifact_root_for(tracking_uri)
    location = f"{root}/{name.replace('/', '_')}" if root else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # another worker created it first
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    items = [Param(k, mask_url(str(v))[:6000]) for k, v in sorted(params.items())]
    for start in range(0, len(items), _BATCH):
        client.log_batch(run_id, params=items[start : start + _BATCH])


def log_metrics(client: MlflowClient, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
    for start in range(0, len(batch), 1000):
        client.log_batch(run_id, metrics=batch[start : start + 1000])


def git_commit() -> str:
    """The medtl source's git commit: `$MEDTL_GIT_COMMIT` (set in the image), the checkout's, or `unknown`."""
    if os.environ.get("MEDTL_GIT_COMMIT"):
        return os.environ["MEDTL_GIT_COMMIT"]
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class EpochLogger:
    """`Checkpointer.on_saved` hook: logs each epoch once its `last.pt` is on disk.

    Every history entry after `logged_up_to` goes out in one `log_batch` (step = epoch), so a resumed
    run fills any gap the dead process left and never repeats a step. With `upload_every` > 0 the
    checkpoints are also uploaded every that many epochs, so another machine can resume the run.
    """

    def __init__(
        self, client: MlflowClient, run_id: str, checkpoint_dir: Path, logged_up_to: int = 0, upload_every: int = 0
    ) -> None:
        self.client = client
        self.run_id = run_id
        self.checkpoint_dir = Path(checkpoint_dir)
        self.logged_up_to = logged_up_to
        self.upload_every = upload_every

    def __call__(self, epoch: int, history: list[dict[str, float]], improved: bool) -> None:
        now = int(time.time() * 1000)
        batch = [
            Metric(key, float(value), now, int(entry["epoch"]))
            for entry in history
            if entry["epoch"] > self.logged_up_to
            for key, value in entry.items()
            if key != "epoch"
        ]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)
        self.logged_up_to = max(self.logged_up_to, epoch)
        if self.upload_every and epoch % self.upload_every == 0:
            self.client.log_artifact(self.run_id, str(self.checkpoint_dir / "last.pt"), "checkpoints")
            if improved:
                self.client.log_artifact(self.run_id, str(self.checkpoint_dir / "best.pt"), "checkpoints")


def upload_every_default(uri: str) -> int:
    """Mid-run checkpoint uploads: every epoch to a remote server (resume on another machine), never
    to the local default store (the work folder on this machine is enough). `$MEDTL_CHECKPOINT_UPLOAD_EVERY`."""
    configured = os.environ.get("MEDTL_CHECKPOINT_UPLOAD_EVERY")
    if configured is not None:
        return max(0, int(configured))
    return 1 if uri.startswith(("http://", "https://")) else 0


class EmissionsCallback(Callback):
    """codecarbon's offline tracker around the fit: energy and CO2-equivalent, no network.

    The country (ISO 3166 alpha-3) sets the grid's carbon intensity: `$MEDTL_COUNTRY_ISO_CODE`,
    default `HRV` (Croatia, where the study ran) so demo figures compare with the paper's.
    """

    def __init__(self, country_iso_code: str | None = None) -> None:
        self.country = country_iso_code or os.environ.get("MEDTL_COUNTRY_ISO_CODE", "HRV")
        self.tracker: Any = None
        self.emissions_kg = math.nan
        self.energy_kwh = math.nan

    def on_fit_start(self, state: FitState) -> None:
        try:
            from codecarbon import OfflineEmissionsTracker

            logging.getLogger("codecarbon").setLevel(logging.ERROR)
            self.tracker = OfflineEmissionsTracker(
                country_iso_code=self.country,
                save_to_file=False,
                log_level="error",
                tracking_mode="process",
                measure_power_secs=15,
            )
            self.tracker.start()
        except Exception as exc:  # emissions are a measurement, never a reason to lose a run
            log.warning("codecarbon could not start (%s); emissions not measured", exc)
            self.tracker = None

    def on_fit_end(self, state: FitState) -> None:
        if self.tracker is None:
            return
        try:
            emissions = self.tracker.stop()
            self.emissions_kg = float(emissions or 0.0)
            data = getattr(self.tracker, "final_emissions_data", None)
            self.energy_kwh = float(getattr(data, "energy_consumed", math.nan))
        except Exception as exc:
            log.warning("codecarbon could not stop cleanly (%s)", exc)
        self.tracker = None


def end_run(client: MlflowClient, run_id: str, status: str, reason: str | None = None) -> None:
    if reason:
        client.set_tag(run_id, FAILURE_TAG, mask_url(reason)[:5000])
    client.set_terminated(run_id, status=status)


def set_tags(client: MlflowClient, run_id: str, tags: dict[str, str]) -> None:
    client.log_batch(run_id, tags=[RunTag(k, mask_url(str(v))) for k, v in tags.items()])
