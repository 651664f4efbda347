"""A sweep worker: claim a point from the queue, train it (`runner.run_spec`), report how it ended.

Faults that are not the point's own — MLflow or the database unreachable, a stop signal — put the
point back in the queue without spending its re-queue budget (`MEDTL_MAX_REQUEUES` counts only the
point's own failures); storage calls are retried with bounded, logged back-off (`medtl.mlops.retry`).
"""

from __future__ import annotations

import logging
import math
import os
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import optuna
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from medtl.errors import UserError
from medtl.knobs import INFRA_PATIENCE_ENV, Knobs, knobs
from medtl.mlops.retry import Backoff, causes, is_connection_error, one_line, retry
from medtl.mlops.sweeps.placement import Placement
from medtl.mlops.sweeps.queue import (
    OWNER_ATTR,
    PINS_ATTR,
    Claim,
    check_connection_room,
    claim_next,
    fail_stale,
    finish,
    join_queue,
    open_storage,
    put_back,
    queue_counts,
    quietly,
    reclaim,
    requeue_failed,
    worker_token,
)
from medtl.mlops.sweeps.study import Study
from medtl.mlops.tracking import client as T
from medtl.mlops.tracking.runner import ClaimLost, run_spec
from medtl.training import schema as S
from medtl.training.spec import RunSpec

if TYPE_CHECKING:
    from medtl.mlops.signals import StopRequested
    from medtl.mlops.sweeps.local import DeadWorker

log = logging.getLogger(__name__)


@dataclass
class WorkerStats:
    done: int = 0
    failed: int = 0
    skipped: int = 0
    requeued: int = 0  # put back for an infrastructure fault or a stop signal, uncharged
    lost: int = 0  # claims taken over while this worker was frozen or cut off
    seconds: float = 0.0
    claim_s: list[float] = field(default_factory=list)  # each successful claim's round trip to the database

    def claim_summary(self) -> str:
        """`median X ms, p95 Y ms over N claims` (how long taking a point from the queue took)."""
        if not self.claim_s:
            return "none made"
        ordered = sorted(self.claim_s)
        p95 = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]
        return f"median {statistics.median(ordered) * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms over {len(ordered)} claims"


class InfrastructureDown(RuntimeError):
    """MLflow or the database stayed unreachable for longer than `MEDTL_INFRA_PATIENCE_S`."""


def install_stop_handlers() -> None:
    from medtl.mlops import signals

    if threading.current_thread() is threading.main_thread():
        signals.install_stop_handlers()


def work(
    study: str,
    storage_url: str,
    tracking_uri: str,
    parent_run_id: str | None = None,
    max_trials: int | None = None,
    device: str = "auto",
    progress: bool = True,
) -> WorkerStats:
    """Take grid points from the queue until none is waiting or running (or `max_trials` were taken).

    `study` is the study's name (its grid travels in the queue) or, as before, its study file.

    SIGTERM and SIGINT put the current point back (uncharged) and raise `signals.StopRequested`.

    Raises:
        InfrastructureDown: MLflow or the database stayed unreachable past the patience.
        medtl.mlops.signals.StopRequested: a stop signal arrived.
    """
    settings = knobs()
    install_stop_handlers()
    storage = open_storage(storage_url, settings)
    queued, optuna_study = join_queue(study, storage)
    client = MlflowClient(tracking_uri)
    owner = worker_token()
    pins = dict(optuna_study.user_attrs.get(PINS_ATTR, {}))
    stats = WorkerStats()
    started = time.perf_counter()
    infra_since: float | None = None  # start of the current run of infrastructure failures
    backoff = Backoff()
    try:
        while max_trials is None or stats.done + stats.failed + stats.skipped < max_trials:
            fail_stale(optuna_study, settings)
            asked = time.perf_counter()
            trial_id = retry(lambda: claim_next(optuna_study, owner), "claiming a point", settings.infra_patience_s)
            if trial_id is not None:
                stats.claim_s.append(time.perf_counter() - asked)
                log.info("claimed trial %d in %.1f ms", trial_id, stats.claim_s[-1] * 1000)
            if trial_id is None:
                if _others_running(optuna_study, owner, settings):
                    time.sleep(settings.heartbeat_s)  # a worker may still die: stay to take its point over
                    continue
                break
            with Claim(optuna_study, trial_id, owner, settings) as claim:
                outcome = _run_claimed(optuna_study, claim, queued, client, tracking_uri, parent_run_id, device, pins, settings)
            if outcome == "infra":
                stats.requeued += 1
                infra_since = infra_since or time.monotonic()
                if time.monotonic() - infra_since > settings.infra_patience_s:
                    raise InfrastructureDown(
                        f"MLflow or the Optuna storage unreachable for over {settings.infra_patience_s:.0f} s "
                        f"({INFRA_PATIENCE_ENV}); the points are still queued"
                    )
                wait = backoff.next()
                log.warning("waiting %.1f s before the next point (infrastructure fault)", wait)
                time.sleep(wait)
                continue
            infra_since = None
            backoff.reset()
            if outcome == "lost":
                stats.lost += 1
            else:
                setattr(stats, outcome, getattr(stats, outcome) + 1)
            if progress and outcome in ("done", "failed"):
                print_progress(optuna_study, started, stats)
    except BaseException as exc:
        stop = stop_in_chain(exc)
        if stop is None:
            raise
        # A stop that landed inside a database call: the library may have turned it into its own error.
        quietly(lambda: reclaim(optuna_study, os.getpid()), "putting this worker's point back", 15,
                "it returns to the queue after the grace")
        raise stop from None
    stats.seconds = time.perf_counter() - started
    return stats


def stop_in_chain(exc: BaseException) -> StopRequested | None:
    """The stop signal behind `exc`: itself, or one a library turned into its own error while cleaning up.

    SQLAlchemy's pool, interrupted by the signal's exception in the middle of a call, resets the connection
    and raises that reset's error instead, with the stop only in the exception chain.
    """
    from medtl.mlops.signals import StopRequested

    return next((error for error in causes(exc) if isinstance(error, StopRequested)), None)


def work_on_gpus(
    study: str,
    storage_url: str,
    tracking_uri: str,
    placements: Sequence[Placement],
    *,
    max_trials: int | None = None,
    device: str = "auto",
) -> list[DeadWorker]:
    """`medtl worker --gpus`: one `work` process per placement (its own GPU and share of the cores).

    The server's free connection slots are checked first; a dead process's point goes back at once.

    Raises:
        UserError: the study is not in the storage, or the database has fewer free connection slots
            than processes (nothing claimed).
        medtl.mlops.signals.StopRequested: a stop signal, forwarded to every process.
    """
    from medtl.mlops.sweeps.local import run_local_workers

    settings = knobs()
    install_stop_handlers()
    storage = open_storage(storage_url, settings)
    check_connection_room(storage, len(placements))
    _, optuna_study = join_queue(study, storage)
    for number, placement in enumerate(placements):
        print(f"[worker] process {number}: {placement.describe()}", flush=True)
    kwargs = dict(study=study, storage_url=storage_url, tracking_uri=tracking_uri, max_trials=max_trials, device=device)
    return run_local_workers(kwargs, placements, optuna_study, settings, who="worker")


def _others_running(optuna_study: optuna.Study, owner: str, settings: Knobs) -> bool:
    running = retry(
        lambda: optuna_study._storage.get_all_trials(optuna_study._study_id, deepcopy=False, states=(TrialState.RUNNING,)),
        "listing running points",
        settings.infra_patience_s,
    )
    return any(t.system_attrs.get(OWNER_ATTR) != owner for t in running)


def _run_claimed(
    optuna_study: optuna.Study,
    claim: Claim,
    study: Study,
    client: MlflowClient,
    tracking_uri: str,
    parent_run_id: str | None,
    device: str,
    pins: dict[str, str],
    settings: Knobs,
) -> str:
    """Run one claimed trial; returns done, failed, skipped, infra (put back) or lost."""

    patience = settings.infra_patience_s
    trial_id, owner = claim.trial_id, claim.owner
    try:
        frozen = optuna_study._storage.get_trial(trial_id)
        spec = RunSpec.from_params(frozen.user_attrs)
        if spec.run_key in finished_run_keys_for(client, study.name, spec.run_key):
            return "skipped" if finish(optuna_study, trial_id, owner, TrialState.PRUNED) else "lost"
        tags = {S.OPTUNA_STUDY_TAG: optuna_study.study_name, S.OPTUNA_TRIAL_TAG: str(frozen.number)}
        outcome = run_spec(
            spec,
            study=study.name,
            tracking_uri=tracking_uri,
            parent_run_id=parent_run_id,
            tags=tags,
            device=device,
            init_pin=pins.get(spec.init_source),
            owns_claim=claim.owns,
        )
    except BaseException as exc:
        stop = stop_in_chain(exc)  # a stop, or one a library wrapped in its own error: never the point's fault
        if stop is not None:
            why = f"worker stopped by {stop.signal_name}"
            back = quietly(lambda: put_back(optuna_study, trial_id, owner, why), "putting a point back", 15,
                           "it returns to the queue after the grace")
            where = "back in the queue" if back else "not put back now (it returns after the grace)"
            log.warning("stopped by %s; trial %d %s", stop.signal_name, trial_id, where)
            raise stop from None
        if not isinstance(exc, Exception):
            raise
        if isinstance(exc, ClaimLost) or not claim.owns():
            log.warning("trial %d was taken over by another worker (%s); leaving it to that worker", trial_id, one_line(exc))
            return "lost"
        reason = one_line(exc)
        if is_connection_error(exc):
            back = retry(lambda: put_back(optuna_study, trial_id, owner, reason), "putting a point back", patience)
            log.warning("trial %d: infrastructure fault, point back in the queue uncharged: %s", trial_id, reason)
            return "infra" if back else "lost"
        log.error("trial %d failed: %s", trial_id, reason)
        failed = retry(
            lambda: finish(optuna_study, trial_id, owner, TrialState.FAIL, attrs={"fail_reason": reason}),
            "failing a trial",
            patience,
        )
        if not failed:
            return "lost"
        if not isinstance(exc, UserError):
            requeue_failed(optuna_study, optuna_study._storage.get_trial(trial_id), settings.max_requeues)
        return "failed"
    value = outcome.metrics.get("best_val_loss", math.inf)
    value = value if math.isfinite(value) else math.inf
    attrs = {"mlflow_run_id": outcome.run_id}
    if retry(lambda: finish(optuna_study, trial_id, owner, TrialState.COMPLETE, value, attrs), "completing a trial", patience):
        return "done"
    log.warning("trial %d was taken over before it could be completed; its run is FINISHED in MLflow", trial_id)
    return "lost"


def finished_run_keys_for(client: MlflowClient, study_name: str, run_key: str) -> set[str]:
    """The one-key version of `sweep.finished_run_keys`: is this point already FINISHED in MLflow?"""
    return {run_key} if next(T.finished_runs(client, study_name, run_key), None) is not None else set()


def print_progress(optuna_study: optuna.Study, started: float, stats: WorkerStats) -> None:
    try:
        counts = queue_counts(optuna_study)
    except Exception as exc:  # progress is a courtesy; never fail a point over it
        log.warning("no progress line: %s", one_line(exc))
        return
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
