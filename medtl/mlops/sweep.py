"""Sweeps: a study's grid points enqueued once in Optuna, taken by workers until none is left.

Exactly once: a point is enqueued only if no trial holds its `run_key` (waiting, running or
complete) and no FINISHED MLflow run carries it; workers pop WAITING trials atomically (never
`study.ask()` on an empty queue, which would invent a sampled trial). Heartbeats on RDB storage let
a dead worker's trial be failed and re-enqueued by `RetryHeartbeatStaleTrialCallback`.
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import os
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from medtl.errors import UserError
from medtl.mlops import tracking as T
from medtl.mlops.runner import experiment_name, run_spec
from medtl.mlops.study import Study, load_study
from medtl.training.spec import RunSpec

log = logging.getLogger(__name__)
# Heartbeats and stale-trial retry are marked experimental in Optuna; medtl relies on them knowingly.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

HEARTBEAT_S = int(os.environ.get("MEDTL_HEARTBEAT_S", "30"))
GRACE_S = int(os.environ.get("MEDTL_GRACE_S", "90"))
MAX_RETRIES = int(os.environ.get("MEDTL_MAX_RETRIES", "2"))
RUN_KEY_ATTR = "run_key"


def default_storage(tracking_uri: str) -> str:
    """Optuna's storage beside a SQLite tracking store (`optuna.db`), else in the working directory."""
    if tracking_uri.startswith("sqlite:///"):
        return f"sqlite:///{Path(tracking_uri.removeprefix('sqlite:///')).parent / 'optuna.db'}"
    return f"sqlite:///{Path.cwd() / 'optuna.db'}"


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """RDB storage with heartbeats and retry of stale trials; one line naming the URL if unreachable."""
    try:
        return optuna.storages.RDBStorage(
            url,
            heartbeat_interval=HEARTBEAT_S,
            grace_period=GRACE_S,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES),
            # Each worker process holds its own small pool: many workers stay well under
            # PostgreSQL's max_connections (100 by default), and dead connections are replaced.
            engine_kwargs={"pool_pre_ping": True, "pool_size": 2, "max_overflow": 2, "pool_recycle": 1800}
            if url.startswith("postgresql")
            else None,
        )
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(T.mask_url(f"cannot open Optuna storage {url}: {reason[:200]}")) from None


def optuna_study_name(study: Study) -> str:
    return f"medtl-{study.name}"


def open_optuna_study(study: Study, storage: optuna.storages.BaseStorage) -> optuna.Study:
    """Create the study once (or load it); the trial value is the best validation loss (minimised)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(
        study_name=optuna_study_name(study), storage=storage, direction="minimize", load_if_exists=True
    )


def finished_runs(client: MlflowClient, study_name: str) -> Iterator[Any]:
    """Every FINISHED fine-tuning run of the study's experiment, paged."""
    experiment = client.get_experiment_by_name(experiment_name(study_name))
    if experiment is None:
        return
    token = None
    while True:
        page = client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.`{T.STAGE_TAG}` = 'finetune' and attributes.status = 'FINISHED'",
            max_results=5000,
            page_token=token,
        )
        yield from page
        token = page.token
        if not token:
            return


def finished_run_keys(client: MlflowClient, study_name: str) -> set[str]:
    """run_keys of FINISHED fine-tuning runs in the study's experiment."""
    return {r.data.tags.get(T.RUN_KEY_TAG, "") for r in finished_runs(client, study_name)} - {""}


def enqueue_missing(specs: list[RunSpec] | tuple[RunSpec, ...], optuna_study: optuna.Study, done: set[str]) -> int:
    """Enqueue every point of `specs` not done, not queued and not running; returns how many."""
    trials = optuna_study.get_trials(deepcopy=False)
    live = {TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE}
    taken = {t.user_attrs.get(RUN_KEY_ATTR) for t in trials if t.state in live}
    failures = Counter(t.user_attrs.get(RUN_KEY_ATTR) for t in trials if t.state is TrialState.FAIL)
    added = 0
    for spec in specs:
        key = spec.run_key
        if key in done or key in taken or failures[key] > MAX_RETRIES:
            continue
        optuna_study.enqueue_trial({}, user_attrs={RUN_KEY_ATTR: key, **spec.to_params()})
        added += 1
    return added


def pop_waiting(optuna_study: optuna.Study) -> optuna.Trial | None:
    """Claim one WAITING trial atomically (WAITING → RUNNING), or None when the queue is empty."""
    storage = optuna_study._storage
    study_id = optuna_study._study_id
    for frozen in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if storage.set_trial_state_values(frozen._trial_id, state=TrialState.RUNNING):
                return optuna.Trial(optuna_study, frozen._trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


class _Heartbeat:
    """Records the trial's heartbeat every HEARTBEAT_S seconds while it runs."""

    def __init__(self, storage: Any, trial_id: int) -> None:
        self.storage, self.trial_id = storage, trial_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self._stop.is_set():
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception as exc:  # a missed beat is retried; the run goes on
                log.debug("heartbeat failed: %s", exc)
            self._stop.wait(HEARTBEAT_S)

    def __enter__(self) -> _Heartbeat:
        if isinstance(self.storage, optuna.storages.RDBStorage):
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()


@dataclass
class WorkerStats:
    done: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0


def work(
    study_path: str,
    storage_url: str,
    tracking_uri: str,
    parent_run_id: str | None = None,
    max_trials: int | None = None,
    device: str = "auto",
    progress: bool = True,
) -> WorkerStats:
    """Take grid points from the queue until it is empty (or `max_trials` were taken)."""
    study = load_study(study_path)
    storage = open_storage(storage_url)
    optuna_study = open_optuna_study(study, storage)
    client = MlflowClient(tracking_uri)
    stats = WorkerStats()
    started = time.perf_counter()
    while max_trials is None or stats.done + stats.failed + stats.skipped < max_trials:
        optuna.storages.fail_stale_trials(optuna_study)
        trial = pop_waiting(optuna_study)
        if trial is None:
            break
        spec = RunSpec.from_params(trial.user_attrs)
        if spec.run_key in finished_run_keys_for(client, study.name, spec.run_key):
            optuna_study.tell(trial, state=TrialState.PRUNED)
            stats.skipped += 1
            continue
        tags = {"medtl.optuna_study": optuna_study.study_name, "medtl.optuna_trial": str(trial.number)}
        with _Heartbeat(storage, trial._trial_id):
            try:
                outcome = run_spec(
                    spec, study=study.name, tracking_uri=tracking_uri, parent_run_id=parent_run_id, tags=tags, device=device
                )
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
                trial.set_user_attr("fail_reason", T.mask_url(reason))
                optuna_study.tell(trial, state=TrialState.FAIL)
                stats.failed += 1
                log.error("point %s failed: %s", spec.run_key, T.mask_url(reason))
                _retry_if_transient(optuna_study, trial, exc)
                if progress:
                    print_progress(optuna_study, started, stats)
                continue
        value = outcome.metrics.get("best_val_loss", math.inf)
        trial.set_user_attr("mlflow_run_id", outcome.run_id)
        optuna_study.tell(trial, value if math.isfinite(value) else math.inf)
        stats.done += 1
        if progress:
            print_progress(optuna_study, started, stats)
    stats.seconds = time.perf_counter() - started
    return stats


def _retry_if_transient(optuna_study: optuna.Study, trial: optuna.Trial, exc: Exception) -> None:
    """Re-enqueue a point that raised, at most MAX_RETRIES times; bad input (UserError) is final."""
    if isinstance(exc, UserError):
        return
    attempts = int(trial.user_attrs.get("attempt", 1))
    if attempts > MAX_RETRIES:
        return
    attrs = {**trial.user_attrs, "attempt": attempts + 1}
    attrs.pop("fail_reason", None)
    optuna_study.enqueue_trial({}, user_attrs=attrs)


def close_orphaned_runs(client: MlflowClient, study_name: str, optuna_study: optuna.Study) -> int:
    """Mark KILLED every fine-tuning run left RUNNING whose point no live trial holds; returns how many."""
    experiment = client.get_experiment_by_name(experiment_name(study_name))
    if experiment is None:
        return 0
    live = {
        t.user_attrs.get(RUN_KEY_ATTR)
        for t in optuna_study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
    }
    closed = 0
    for run in client.search_runs([experiment.experiment_id], filter_string="attributes.status = 'RUNNING'"):
        if run.data.tags.get(T.STAGE_TAG) == "finetune" and run.data.tags.get(T.RUN_KEY_TAG) not in live:
            T.end_run(client, run.info.run_id, "KILLED", "its worker died and the point was not retried")
            closed += 1
    return closed


def finished_run_keys_for(client: MlflowClient, study_name: str, run_key: str) -> set[str]:
    """The one-key version of `finished_run_keys`: is this point already FINISHED in MLflow?"""
    experiment = client.get_experiment_by_name(experiment_name(study_name))
    if experiment is None:
        return set()
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{T.RUN_KEY_TAG}` = '{run_key}' and attributes.status = 'FINISHED'",
        max_results=1,
    )
    return {run_key} if runs else set()


def queue_counts(optuna_study: optuna.Study) -> Counter:
    return Counter(t.state.name for t in optuna_study.get_trials(deepcopy=False))


def print_progress(optuna_study: optuna.Study, started: float, stats: WorkerStats) -> None:
    counts = queue_counts(optuna_study)
    left = counts.get("WAITING", 0)
    finished = stats.done + stats.failed
    elapsed = time.perf_counter() - started
    eta = ""
    if finished and left:
        eta = f", ETA {_duration(elapsed / finished * left)}"
    print(
        f"[sweep] done {counts.get('COMPLETE', 0)} / running {counts.get('RUNNING', 0)} / "
        f"failed {counts.get('FAIL', 0)} / left {left}{eta}",
        flush=True,
    )


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _worker_entry(kwargs: dict[str, Any], threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s worker %(process)d: %(message)s")
    work(**kwargs)


@dataclass
class SweepResult:
    study: Study
    parent_run_id: str
    enqueued: int
    stats: WorkerStats
    counts: Counter
    held_back: int = 0


def sweep(
    study_path: str | Path,
    *,
    workers: int = 1,
    storage_url: str | None = None,
    tracking_uri: str | None = None,
    device: str = "auto",
) -> SweepResult:
    """Enqueue the study's missing points, run them with `workers` local processes, end the parent run."""
    study = load_study(study_path)
    uri = T.resolve_tracking_uri(tracking_uri)
    storage_url = storage_url or default_storage(uri)
    storage = open_storage(storage_url)
    optuna_study = open_optuna_study(study, storage)
    client = MlflowClient(uri)
    try:
        done = finished_run_keys(client, study.name)
    except Exception as exc:
        raise UserError(T.mask_url(f"cannot reach the tracking store {uri}: {str(exc).splitlines()[0][:200]}")) from None
    from medtl.mlops import prerequisites
    from medtl.mlops.commands.pretrain import pretrain

    pending = [spec for spec in study.specs if spec.run_key not in done]
    readiness = prerequisites.check(
        study, pending, client, pretrain=lambda pspec: pretrain(pspec, tracking_uri=uri, device=device)
    )
    for message in readiness.messages:
        print(f"[sweep] {message}", flush=True)
    enqueued = enqueue_missing(readiness.ready, optuna_study, done)
    experiment_id = T.get_or_create_experiment(client, experiment_name(study.name), uri)
    parent = client.create_run(
        experiment_id,
        run_name=f"sweep {study.name}",
        tags={
            T.STAGE_TAG: "sweep",
            T.STUDY_TAG: study.name,
            "medtl.optuna_study": optuna_study.study_name,
            "medtl.git_commit": T.git_commit(),
        },
    )
    parent_id = parent.info.run_id
    T.log_params(
        client,
        parent_id,
        {"study_file": str(study.path), "grid_points": len(study.specs), "workers": workers, "optuna_storage": storage_url},
    )
    client.log_artifact(parent_id, str(study.path))
    kwargs = dict(study_path=str(study.path), storage_url=storage_url, tracking_uri=uri, parent_run_id=parent_id, device=device)
    started = time.perf_counter()
    stats = WorkerStats()
    try:
        if workers <= 1:
            stats = work(**kwargs)
        else:
            ctx = mp.get_context("spawn")
            threads = max(1, (os.cpu_count() or 1) // workers)
            procs = [ctx.Process(target=_worker_entry, args=(kwargs, threads)) for _ in range(workers)]
            for proc in procs:
                proc.start()
            for proc in procs:
                proc.join()
    except BaseException as exc:
        T.end_run(client, parent_id, "KILLED", f"{type(exc).__name__}: {exc}".splitlines()[0])
        raise
    optuna.storages.fail_stale_trials(optuna_study)
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
            "duration_s": stats.seconds,
        },
    )
    T.end_run(client, parent_id, "FINISHED")
    return SweepResult(study, parent_id, enqueued, stats, counts, len(readiness.held_back))
