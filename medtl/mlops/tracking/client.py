"""MLflow client helpers: retried calls, experiments (artifacts beside a SQLite store), params, metrics, tags, run ends.

Schema names (tags, experiments, the tracking-URI rule) are `medtl.training.schema`'s, imported from
there by every caller; the callbacks a run is given live beside this module, one job each
(`epoch_logger`, `emissions`, `system_metrics`, `environment`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from medtl.knobs import infra_patience_s
from medtl.mlops.retry import one_line, retry
from medtl.redact import mask_url
from medtl.training import schema as S

log = logging.getLogger(__name__)

PARAM_BATCH = 100  # MLflow's per-call limits: params
METRIC_BATCH = 1000  # and metrics
_T = TypeVar("_T")


class TrackingUnavailable(Exception):
    """The tracking server (or its database) stayed unreachable for the whole retry budget.

    An infrastructure fault, not the run's: a sweep re-queues the point without charging it.
    """


def retrying(call: Callable[[], _T], what: str, budget_s: float | None = None, max_wait_s: float = 30.0) -> _T:
    """`call()`, retried on connection errors (`medtl.mlops.retry.retry`), waits capped at `max_wait_s`.

    Raises:
        TrackingUnavailable: connection errors for longer than `budget_s` (default `infra_patience_s()`).
    """
    budget = infra_patience_s() if budget_s is None else budget_s

    def unavailable(exc: BaseException) -> TrackingUnavailable:
        return TrackingUnavailable(f"{what}: tracking store unreachable for {budget:.0f} s ({one_line(exc)})")

    return retry(call, what, budget, cap_s=max_wait_s, give_up=unavailable)


def artifact_root_for(uri: str) -> str | None:
    """For a SQLite store, a local artifact folder beside the database; else the server's default."""
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        return (db.parent / "mlartifacts").resolve().as_uri()
    return None


def finished_runs(client: MlflowClient, study_name: str, run_key: str | None = None) -> Iterator[Any]:
    """Every FINISHED fine-tuning run of the study's experiment (only `run_key`'s, when given), paged."""
    experiment = client.get_experiment_by_name(S.study_experiment(study_name))
    if experiment is None:
        return
    wanted = f"tags.`{S.STAGE_TAG}` = '{S.Stage.FINETUNE.value}' and attributes.status = 'FINISHED'"
    if run_key is not None:
        wanted += f" and tags.`{S.RUN_KEY_TAG}` = '{run_key}'"
    token = None
    while True:
        page = client.search_runs([experiment.experiment_id], filter_string=wanted, max_results=5000, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def get_or_create_experiment(client: MlflowClient, name: str, tracking_uri: str) -> str:
    """The id of experiment `name`, created (with its artifact folder beside a SQLite store) if new.

    Every medtl experiment carries `mlflow.experimentKind = custom_model_development`, so MLflow
    clients treat it as model training; an older experiment without the tag gets it here.
    """
    experiment = retrying(lambda: client.get_experiment_by_name(name), f"looking up experiment {name}")
    if experiment is not None:
        if experiment.tags.get(S.EXPERIMENT_KIND_TAG) != S.EXPERIMENT_KIND:
            try:
                client.set_experiment_tag(experiment.experiment_id, S.EXPERIMENT_KIND_TAG, S.EXPERIMENT_KIND)
            except Exception as exc:  # a label, never a reason to stop
                log.warning("could not tag experiment %s with its kind: %s", name, exc)
        return experiment.experiment_id
    root = artifact_root_for(tracking_uri)
    location = f"{root}/{name.replace('/', '_')}" if root else None
    try:
        return client.create_experiment(name, artifact_location=location, tags={S.EXPERIMENT_KIND_TAG: S.EXPERIMENT_KIND})
    except Exception:  # another worker created it first
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    """Log `params` (URL passwords masked, values cut to MLflow's 6,000 characters) in retried batches."""
    items = [Param(k, mask_url(str(v))[:6000]) for k, v in sorted(params.items())]
    for start in range(0, len(items), PARAM_BATCH):
        chunk = items[start : start + PARAM_BATCH]
        retrying(lambda chunk=chunk: client.log_batch(run_id, params=chunk), "logging params")


def log_metrics(client: MlflowClient, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    """Log `metrics` (None values skipped) at `step` in retried batches."""
    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
    for start in range(0, len(batch), METRIC_BATCH):
        chunk = batch[start : start + METRIC_BATCH]
        retrying(lambda chunk=chunk: client.log_batch(run_id, metrics=chunk), "logging metrics")


def end_run(client: MlflowClient, run_id: str, status: str, reason: str | None = None) -> None:
    """End the run with `status`; a `reason` (URL passwords masked) goes to tag `medtl.failure_reason`."""
    if reason:
        client.set_tag(run_id, S.FAILURE_TAG, mask_url(reason)[:5000])
    client.set_terminated(run_id, status=status)


def set_tags(client: MlflowClient, run_id: str, tags: dict[str, str]) -> None:
    """Set `tags` (URL passwords masked) in one call."""
    client.log_batch(run_id, tags=[RunTag(k, mask_url(str(v))) for k, v in tags.items()])
