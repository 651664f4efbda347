"""`medtl sweep`: a study's missing grid points enqueued once, run by local worker processes.

The study's domain sources are pinned once per study (`pin_init_sources`), one parent run per study
gathers the points' runs, and the sweep process watches its local workers (`sweeps.local`, one per GPU
with `--workers auto`, `sweeps.placement`): one that dies has its point put back at once and is replaced. SIGTERM and SIGINT reach every worker, which puts
its point back; the parent run ends KILLED. The queue itself is `sweeps.queue`.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from medtl.errors import UserError
from medtl.knobs import knobs
from medtl.mlops.retry import is_connection_error
from medtl.mlops.sweeps.local import DeadWorker, run_local_workers
from medtl.mlops.sweeps.placement import Placement, plan_workers
from medtl.mlops.sweeps.queue import (
    PINS_ATTR,
    RUN_KEY_ATTR,
    check_connection_room,
    default_storage,
    enqueue_missing,
    fail_stale,
    open_optuna_study,
    open_storage,
    queue_counts,
    quietly,
)
from medtl.mlops.sweeps.study import Study
from medtl.mlops.sweeps.worker import WorkerStats, install_stop_handlers, work
from medtl.mlops.tracking import client as T
from medtl.provenance import git_commit
from medtl.redact import mask_url
from medtl.training import schema as S
from medtl.training.spec import Init, RunSpec

log = logging.getLogger(__name__)

PARENT_ATTR = "mlflow_parent_run_id"  # study user attr: the one sweep parent run of the study


def finished_run_keys(client: MlflowClient, study_name: str) -> set[str]:
    """run_keys of FINISHED fine-tuning runs in the study's experiment."""
    return {r.data.tags.get(S.RUN_KEY_TAG, "") for r in T.finished_runs(client, study_name)} - {""}


def close_orphaned_runs(client: MlflowClient, study_name: str, optuna_study: optuna.Study) -> int:
    """Mark KILLED every fine-tuning run left RUNNING whose point no live trial holds; returns how many."""
    experiment = client.get_experiment_by_name(S.study_experiment(study_name))
    if experiment is None:
        return 0
    live = {
        t.user_attrs.get(RUN_KEY_ATTR)
        for t in optuna_study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
    }
    closed = 0
    for run in client.search_runs([experiment.experiment_id], filter_string="attributes.status = 'RUNNING'"):
        if run.data.tags.get(S.STAGE_TAG) == "finetune" and run.data.tags.get(S.RUN_KEY_TAG) not in live:
            T.end_run(client, run.info.run_id, "KILLED", "its worker died and the point was not retried")
            closed += 1
    return closed


def pin_init_sources(optuna_study: optuna.Study, client: MlflowClient, specs: list[RunSpec]) -> dict[str, str]:
    """Resolve each `models:/<name>@<alias>` domain source once per study and record it.

    The first sweep of a study stores `{models:/name@alias: models:/name/<version>}` in the Optuna
    study's user attrs; every later sweep and every worker reads that map, so a champion alias that
    moves mid-sweep (or between re-runs) leaves the study's domain points on the version it began with.
    """
    pins = dict(optuna_study.user_attrs.get(PINS_ATTR, {}))
    added = False
    for spec in specs:
        source = spec.init_source
        match = re.fullmatch(r"models:/([^/@]+)@([^/]+)", source)
        if spec.init is not Init.DOMAIN or not match or source in pins:
            continue
        try:
            version = client.get_model_version_by_alias(match[1], match[2])
        except Exception as exc:
            if is_connection_error(exc):
                raise
            continue  # nothing registered: the runner says which `medtl pretrain` to run
        pins[source] = f"models:/{match[1]}/{version.version}"
        added = True
    if added:
        optuna_study.set_user_attr(PINS_ATTR, pins)
    return pins


def _open_parent_run(
    client: MlflowClient, optuna_study: optuna.Study, study: Study, uri: str, storage_url: str, workers: int
) -> str:
    """The study's one sweep parent run: created by the first sweep, reopened by every re-run."""
    experiment_id = T.get_or_create_experiment(client, S.study_experiment(study.name), uri)
    known = optuna_study.user_attrs.get(PARENT_ATTR)
    if known:
        try:
            run = client.get_run(known)
            if run.info.lifecycle_stage == "active":
                client.update_run(known, status="RUNNING")
                attempts = int(run.data.tags.get(S.SWEEP_ATTEMPTS_TAG, "1")) + 1
                T.set_tags(client, known, {S.SWEEP_ATTEMPTS_TAG: str(attempts), S.GIT_COMMIT_TAG: git_commit()})
                return known
        except Exception as exc:
            if is_connection_error(exc):
                raise
    parent = client.create_run(
        experiment_id,
        run_name=f"sweep {study.name}",
        tags={
            S.STAGE_TAG: S.Stage.SWEEP.value,
            S.STUDY_TAG: study.name,
            S.OPTUNA_STUDY_TAG: optuna_study.study_name,
            S.GIT_COMMIT_TAG: git_commit(),
            S.SWEEP_ATTEMPTS_TAG: "1",
        },
    )
    parent_id = parent.info.run_id
    optuna_study.set_user_attr(PARENT_ATTR, parent_id)
    T.log_params(client, parent_id, {"study_file": str(study.path), "grid_points": len(study.specs), "optuna_storage": storage_url})
    client.log_artifact(parent_id, str(study.path))
    return parent_id


def lr_selection_tags(study: Study) -> dict[str, str]:
    """The parent run's record of where `from_study` learning rates came from: studies and fingerprints."""
    return {
        S.LRS_FROM_STUDY_TAG: ",".join(s.study for s in study.lr_selections),
        S.LRS_FROM_FINGERPRINT_TAG: ",".join(f for s in study.lr_selections for f in s.fingerprints),
    }


@dataclass
class SweepResult:
    study: Study
    parent_run_id: str
    enqueued: int
    stats: WorkerStats
    counts: Counter
    held_back: int = 0
    dead_workers: list[DeadWorker] = field(default_factory=list)


def sweep(
    study_path: Study | str | Path,
    *,
    workers: int | Sequence[Placement] = 1,
    storage_url: str | None = None,
    tracking_uri: str | None = None,
    device: str = "auto",
) -> SweepResult:
    """Enqueue the study's missing points, run them with local worker processes, end the parent run.

    `workers` is a count (processes sharing the machine) or one `placement.Placement` per process
    (`placement.plan_workers`: one per GPU for `--workers auto`); a single worker runs in this process.

    `study_path` is a loaded study (`lr_selection.resolve_study`) or a study file, loaded here; its
    `from_study` learning rates are read once either way, and named on the parent run.

    Raises:
        UserError: bad knobs, an unreachable storage or tracking store.
        medtl.mlops.signals.StopRequested: SIGTERM/SIGINT; the points went back to the queue and
            the parent run is KILLED with the signal's name.
    """
    settings = knobs()
    install_stop_handlers()
    if isinstance(study_path, Study):
        study = study_path
    else:
        from medtl.mlops.sweeps.lr_selection import resolve_study

        study = resolve_study(study_path, tracking_uri)
    uri = S.resolve_tracking_uri(tracking_uri)
    storage_url = storage_url or default_storage(uri)
    placements = plan_workers(workers) if isinstance(workers, int) else list(workers)
    storage = open_storage(storage_url, settings)
    # before anything is enqueued or claimed; one in-process worker uses the sweep's own connections
    check_connection_room(storage, len(placements) if len(placements) > 1 else 0)
    optuna_study = open_optuna_study(study, storage)
    client = MlflowClient(uri)
    try:
        done = finished_run_keys(client, study.name)
    except Exception as exc:
        raise UserError(mask_url(f"cannot reach the tracking store {uri}: {str(exc).splitlines()[0][:200]}")) from None
    from medtl.mlops.sweeps import prerequisites
    from medtl.mlops.tracking.pretraining import run_pretrain

    pending = [spec for spec in study.specs if spec.run_key not in done]
    readiness = prerequisites.check(
        study, pending, client, pretrain=lambda pspec: run_pretrain(pspec, tracking_uri=uri, device=device)
    )
    for message in readiness.messages:
        print(f"[sweep] {message}", flush=True)
    pins = pin_init_sources(optuna_study, client, readiness.ready)
    enqueued = enqueue_missing(readiness.ready, optuna_study, done, settings.max_requeues)
    parent_id = _open_parent_run(client, optuna_study, study, uri, storage_url, len(placements))
    for selection in study.lr_selections:
        print(f"[sweep] {selection.describe()}", flush=True)
    if study.lr_selections:
        T.set_tags(client, parent_id, lr_selection_tags(study))
    if pins:
        T.set_tags(client, parent_id, {f"{S.INIT_PIN_TAG_PREFIX}{k.removeprefix('models:/').replace('@', '.')}": v for k, v in pins.items()})
    kwargs = dict(study=study.name, storage_url=storage_url, tracking_uri=uri, parent_run_id=parent_id, device=device)
    started = time.perf_counter()
    stats = WorkerStats()
    dead: list[DeadWorker] = []
    try:
        if len(placements) <= 1:
            stats = work(**kwargs)
        else:
            for number, placement in enumerate(placements):
                print(f"[sweep] worker {number}: {placement.describe()}", flush=True)
            dead = run_local_workers(kwargs, placements, optuna_study, settings)
    except BaseException as exc:
        reason = getattr(exc, "signal_name", None)
        reason = f"stopped by {reason}" if reason else f"{type(exc).__name__}: {exc}".splitlines()[0]
        quietly(lambda: T.end_run(client, parent_id, "KILLED", mask_url(reason)), "ending the parent run", 30,
                "it stays RUNNING until the next sweep of this study reopens and ends it")
        raise
    fail_stale(optuna_study, settings)
    close_orphaned_runs(client, study.name, optuna_study)
    counts = queue_counts(optuna_study)
    stats.seconds = time.perf_counter() - started
    T.log_metrics(
        client,
        parent_id,
        {
            "points_done": counts.get("COMPLETE", 0),
            "points_failed": counts.get("FAIL", 0),
            "points_left": counts.get("WAITING", 0),
            "workers_died": len(dead),
            "duration_s": stats.seconds,
        },
    )
    if dead:
        T.end_run(client, parent_id, "FAILED", f"{len(dead)} worker(s) died: " + ", ".join(f"pid {d.pid} exit {d.exitcode}" for d in dead))
    else:
        T.end_run(client, parent_id, "FINISHED")
    return SweepResult(study, parent_id, enqueued, stats, counts, len(readiness.held_back), dead)
