"""Sweeps: a study's grid points enqueued once in Optuna, taken by workers until none is left.

Exactly once: a point is enqueued only if no trial holds its `run_key` (waiting, running or
complete) and no FINISHED MLflow run carries it. A worker claims a WAITING trial in one transaction
that also writes the trial's first heartbeat and the worker's owner token (system attr
`medtl:owner`), so no trial is ever RUNNING without a heartbeat. While it trains, a thread beats
every `MEDTL_HEARTBEAT_S` seconds; a trial whose heartbeat is older than `MEDTL_GRACE_S` is failed
by the next worker that looks and its point is enqueued again (`_requeue_lost`, not charged to the
point). Every later write a worker makes to its trial — put back, complete, fail — checks the owner
token in the same transaction, and the runner asks `Claim.owns` before each epoch's logging: a worker
that was frozen past the grace finds its claim gone and walks away without telling Optuna anything.

Faults that are not the point's own — MLflow or the database unreachable, a stop signal — put the
point back in the queue without spending its retry budget (`MEDTL_MAX_RETRIES` counts only the
point's own failures); storage calls are retried with bounded, logged back-off.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing as mp
import os
import random
import re
import socket
import threading
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import optuna
from mlflow.tracking import MlflowClient
from optuna.trial import FrozenTrial, TrialState

from medtl.errors import UserError
from medtl.knobs import env_number
from medtl.mlops.sweeps.study import Study, StudyError, load_study, study_attrs, study_from_attrs
from medtl.mlops.tracking import client as T
from medtl.mlops.tracking.runner import ClaimLost, run_spec
from medtl.training import schema as SC
from medtl.training.spec import Init, RunSpec

log = logging.getLogger(__name__)
# Heartbeats and stale-trial retry are marked experimental in Optuna; medtl relies on them knowingly.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

HEARTBEAT_ENV = "MEDTL_HEARTBEAT_S"
GRACE_ENV = "MEDTL_GRACE_S"
RETRIES_ENV = "MEDTL_MAX_RETRIES"
PATIENCE_ENV = "MEDTL_INFRA_PATIENCE_S"
RUN_KEY_ATTR = "run_key"
OWNER_ATTR = "medtl:owner"  # trial system attr: the token of the worker holding the claim
PINS_ATTR = "init_pins"  # study user attr: models:/name@alias → models:/name/version, fixed per study
PARENT_ATTR = "mlflow_parent_run_id"  # study user attr: the one sweep parent run of the study
MAX_LOST = 5  # a point whose worker vanished this often (killed for memory each time?) is left FAIL
MAX_BACKOFF_S = 60.0


@dataclass(frozen=True)
class Knobs:
    """The queue's timing and budgets, from the environment (see `knobs`)."""

    heartbeat_s: int = 30
    grace_s: float = 90.0
    max_retries: int = 2
    infra_patience_s: float = 1800.0


def knobs() -> Knobs:
    """`MEDTL_HEARTBEAT_S`, `MEDTL_GRACE_S`, `MEDTL_MAX_RETRIES`, `MEDTL_INFRA_PATIENCE_S`, validated.

    Raises:
        UserError: a value is not a number, the heartbeat is not a positive whole number of seconds,
            the grace is not longer than the heartbeat interval, or retries are negative.
    """
    default = Knobs()

    heartbeat = int(env_number(HEARTBEAT_ENV, default.heartbeat_s, whole=True))
    grace = env_number(GRACE_ENV, default.grace_s)
    retries = int(env_number(RETRIES_ENV, default.max_retries, whole=True))
    patience = env_number(PATIENCE_ENV, default.infra_patience_s)
    if heartbeat < 1:
        raise UserError(f"{HEARTBEAT_ENV} must be at least 1 second, got {heartbeat}")
    if grace <= heartbeat:
        raise UserError(
            f"{GRACE_ENV} ({grace:g} s) must be longer than {HEARTBEAT_ENV} ({heartbeat} s): "
            "a live worker's point would be taken over between two heartbeats"
        )
    if retries < 0:
        raise UserError(f"{RETRIES_ENV} must be 0 or more, got {retries}")
    if patience <= 0:
        raise UserError(f"{PATIENCE_ENV} must be a positive number of seconds, got {patience:g}")
    return Knobs(heartbeat, grace, retries, patience)


# --- infrastructure faults -------------------------------------------------------------------------

_INFRA_NAMES = re.compile(r"Connection|Timeout|OperationalError|InterfaceError|Disconnection|ProtocolError")
_INFRA_TEXT = re.compile(
    r"API request to .* failed with (timeout )?exception|database is locked|Max retries exceeded|"
    r"Connection refused|connection (was )?(closed|reset|lost)|server closed the connection|"
    r"could not connect|the database system is (shutting down|starting up)|terminating connection",
    re.IGNORECASE,
)


def is_infra_error(exc: BaseException) -> bool:
    """True when `exc` (or anything in its cause chain) says MLflow or the database was unreachable."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ConnectionError | TimeoutError | optuna.exceptions.StorageInternalError):
            return True
        module = type(current).__module__ or ""
        if module.split(".")[0] in ("sqlalchemy", "psycopg", "requests", "urllib3", "sqlite3") and _INFRA_NAMES.search(
            type(current).__name__
        ):
            return True
        if _INFRA_TEXT.search(str(current)[:2000]):
            return True
        current = current.__cause__ or current.__context__
    return False


def _reason(exc: BaseException) -> str:
    return T.mask_url(f"{type(exc).__name__}: {exc}".splitlines()[0][:300])


R = TypeVar("R")


def with_retry(what: str, fn: Callable[[], R], patience_s: float) -> R:
    """`fn()`, retried on infrastructure errors with jittered exponential back-off for `patience_s`."""
    deadline = time.monotonic() + patience_s
    delay = 1.0
    while True:
        try:
            return fn()
        except Exception as exc:
            if not is_infra_error(exc) or time.monotonic() + delay > deadline:
                raise
            wait = delay * (0.5 + random.random())
            log.warning("%s failed (%s); retrying in %.1f s", what, _reason(exc), wait)
            time.sleep(wait)
            delay = min(delay * 2, MAX_BACKOFF_S)


# --- storage -------------------------------------------------------------------------------------


def default_storage(tracking_uri: str) -> str:
    """Optuna's storage beside a SQLite tracking store (`optuna.db`), else in the working directory."""
    if tracking_uri.startswith("sqlite:///"):
        return f"sqlite:///{Path(tracking_uri.removeprefix('sqlite:///')).parent / 'optuna.db'}"
    return f"sqlite:///{Path.cwd() / 'optuna.db'}"


def open_storage(url: str, settings: Knobs | None = None) -> optuna.storages.BaseStorage:
    """RDB storage with heartbeats and re-queueing of stale trials; one line naming the URL if unreachable.

    SQLite is switched to write-ahead logging with a 60 s busy timeout, so several local workers
    wait for each other's short transactions instead of failing on a lock.
    """
    settings = settings or knobs()
    if url.startswith("postgresql"):
        # Each worker process holds its own small pool: many workers stay well under
        # PostgreSQL's max_connections (100 by default), and dead connections are replaced.
        engine_kwargs: dict[str, Any] | None = {"pool_pre_ping": True, "pool_size": 2, "max_overflow": 2, "pool_recycle": 1800}
    elif url.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": 60}}
    else:
        engine_kwargs = None
    try:
        storage = optuna.storages.RDBStorage(
            url,
            heartbeat_interval=settings.heartbeat_s,
            grace_period=settings.grace_s,
            heartbeat_stale_trial_callback=_requeue_lost,
            engine_kwargs=engine_kwargs,
        )
        if url.startswith("sqlite") and ":memory:" not in url:
            with storage.engine.connect() as connection:  # persistent in the file: once is enough
                connection.exec_driver_sql("PRAGMA journal_mode=WAL")
        return storage
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(T.mask_url(f"cannot open Optuna storage {url}: {reason[:200]}")) from None


def optuna_study_name(study: Study | str) -> str:
    """The Optuna study (the queue) of a medtl study, or of a study name: `medtl-<name>`."""
    return f"medtl-{study if isinstance(study, str) else study.name}"


def open_optuna_study(
    study: Study, storage: optuna.storages.BaseStorage, *, publish: bool = True
) -> optuna.Study:
    """Create the study once (or load it); the trial value is the best validation loss (minimised).

    With `publish`, the study's name and grid are written to the Optuna study's user attributes
    (`medtl.mlops.sweeps.study.study_attrs`), so a worker given only the name rebuilds it (`join_queue`).
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna_study = optuna.create_study(
        study_name=optuna_study_name(study), storage=storage, direction="minimize", load_if_exists=True
    )
    if publish:
        known = optuna_study.user_attrs
        for key, value in study_attrs(study).items():
            if known.get(key) != value:  # rewritten only when the grid or the file changed
                optuna_study.set_user_attr(key, value)
    return optuna_study


def _is_study_file(ref: str) -> bool:
    return ref.endswith((".yaml", ".yml")) or Path(ref).is_file()


def join_queue(
    ref: str, storage: optuna.storages.BaseStorage, tracking_uri: str | None = None
) -> tuple[Study, optuna.Study]:
    """The study and its Optuna queue for a worker, from a study name or (as before) a study file.

    A name is looked up in `storage`; the study comes from the queue's user attributes, so no
    study file is needed on the worker's machine. A path to a study file is parsed as before.

    Raises:
        UserError: no sweep of that name in the storage (the known ones listed), or a bad study file.
    """
    if _is_study_file(ref):
        study = load_study(ref, tracking_uri=tracking_uri)
        return study, open_optuna_study(study, storage, publish=False)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    queue_name = optuna_study_name(ref)
    names = set(optuna.get_all_study_names(storage))
    if queue_name not in names:
        known = sorted(n.removeprefix("medtl-") for n in names if n.startswith("medtl-"))
        raise StudyError(
            f"no sweep named {ref!r} in this Optuna storage; known: {', '.join(known) or 'none (start one with medtl sweep)'}"
        )
    optuna_study = optuna.load_study(study_name=queue_name, storage=storage)
    return study_from_attrs(optuna_study.user_attrs), optuna_study


def _rdb(optuna_study: optuna.Study) -> optuna.storages.RDBStorage:
    storage = optuna_study._storage
    return getattr(storage, "_backend", storage)


class _Session:
    """One transaction on the RDB storage: committed on success, rolled back on any error."""

    def __init__(self, rdb: optuna.storages.RDBStorage) -> None:
        self.rdb = rdb

    def __enter__(self) -> Any:
        self.session = self.rdb.scoped_session()
        return self.session

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        try:
            if exc_type is None:
                self.session.commit()
            else:
                self.session.rollback()
        finally:
            self.session.close()


def _set_user_attr(session: Any, trial_id: int, key: str, value: Any) -> None:
    from optuna.storages._rdb import models

    row = session.query(models.TrialUserAttributeModel).filter_by(trial_id=trial_id, key=key).one_or_none()
    if row is None:
        session.add(models.TrialUserAttributeModel(trial_id=trial_id, key=key, value_json=json.dumps(value)))
    else:
        row.value_json = json.dumps(value)


def claim_next(optuna_study: optuna.Study, owner: str) -> int | None:
    """Claim one WAITING trial (→ RUNNING) with its first heartbeat and `owner`, in one transaction.

    Returns the trial id, or None when no trial is waiting. Another worker claiming the same trial
    at the same moment gets no row from the conditional UPDATE and moves on to the next one.
    """
    import sqlalchemy
    from optuna.storages._rdb import models

    rdb = _rdb(optuna_study)
    with _Session(rdb) as session:
        candidates = [
            row[0]
            for row in session.query(models.TrialModel.trial_id)
            .filter(models.TrialModel.study_id == optuna_study._study_id, models.TrialModel.state == TrialState.WAITING)
            .order_by(models.TrialModel.number)
            .limit(64)
        ]
        for trial_id in candidates:
            taken = session.execute(
                sqlalchemy.update(models.TrialModel)
                .where(models.TrialModel.trial_id == trial_id, models.TrialModel.state == TrialState.WAITING)
                .values(state=TrialState.RUNNING, _datetime_start_utc=datetime.now(UTC).replace(tzinfo=None))
                .execution_options(synchronize_session=False)
            )
            if taken.rowcount != 1:
                continue
            now = session.execute(sqlalchemy.func.now()).scalar()
            session.query(models.TrialHeartbeatModel).filter_by(trial_id=trial_id).delete()
            session.add(models.TrialHeartbeatModel(trial_id=trial_id, heartbeat=now))
            session.query(models.TrialSystemAttributeModel).filter_by(trial_id=trial_id, key=OWNER_ATTR).delete()
            session.add(models.TrialSystemAttributeModel(trial_id=trial_id, key=OWNER_ATTR, value_json=json.dumps(owner)))
            return trial_id
    return None


def _locked_if_owned(session: Any, trial_id: int, owner: str | None) -> Any:
    """The trial's row, locked, if it is RUNNING and held by `owner` (None: by anyone); else None."""
    from optuna.storages._rdb import models

    trial = session.query(models.TrialModel).filter_by(trial_id=trial_id).with_for_update().one_or_none()
    if trial is None or trial.state != TrialState.RUNNING:
        return None
    if owner is not None:
        attr = session.query(models.TrialSystemAttributeModel).filter_by(trial_id=trial_id, key=OWNER_ATTR).one_or_none()
        if attr is None or json.loads(attr.value_json) != owner:
            return None
    return trial


def trial_owner(optuna_study: optuna.Study, trial_id: int) -> tuple[TrialState, str | None]:
    """(state, owner token) of a trial, read from the database (never from a cache)."""
    from optuna.storages._rdb import models

    with _Session(_rdb(optuna_study)) as session:
        state = session.query(models.TrialModel.state).filter_by(trial_id=trial_id).scalar()
        attr = session.query(models.TrialSystemAttributeModel.value_json).filter_by(trial_id=trial_id, key=OWNER_ATTR).scalar()
    return state, json.loads(attr) if attr else None


def put_back(optuna_study: optuna.Study, trial_id: int, owner: str | None, reason: str) -> bool:
    """RUNNING → WAITING if `owner` still holds the trial; its retry budget is untouched.

    Returns False (and changes nothing) when the claim was lost. `owner=None` puts back whatever
    worker holds it (the sweep does that for a local worker it saw die).
    """
    from optuna.storages._rdb import models

    with _Session(_rdb(optuna_study)) as session:
        trial = _locked_if_owned(session, trial_id, owner)
        if trial is None:
            return False
        trial.state = TrialState.WAITING
        trial.datetime_start = None
        session.query(models.TrialHeartbeatModel).filter_by(trial_id=trial_id).delete()
        session.query(models.TrialSystemAttributeModel).filter_by(trial_id=trial_id, key=OWNER_ATTR).delete()
        requeued = session.query(models.TrialUserAttributeModel.value_json).filter_by(trial_id=trial_id, key="requeued").scalar()
        _set_user_attr(session, trial_id, "requeued", (json.loads(requeued) if requeued else 0) + 1)
        _set_user_attr(session, trial_id, "requeue_reason", reason[:300])
    return True


def finish(
    optuna_study: optuna.Study,
    trial_id: int,
    owner: str,
    state: TrialState,
    value: float | None = None,
    attrs: dict[str, Any] | None = None,
) -> bool:
    """Complete or fail the trial if `owner` still holds it (one transaction); False if it does not."""
    from optuna.storages._rdb import models

    with _Session(_rdb(optuna_study)) as session:
        trial = _locked_if_owned(session, trial_id, owner)
        if trial is None:
            return False
        for key, item in (attrs or {}).items():
            _set_user_attr(session, trial_id, key, item)
        if value is not None:
            stored, kind = models.TrialValueModel.value_to_stored_repr(value)
            session.add(models.TrialValueModel(trial_id=trial_id, objective=0, value=stored, value_type=kind))
        trial.state = state
        trial.datetime_complete = datetime.now()
    return True


def _requeue_lost(optuna_study: optuna.Study, trial: FrozenTrial) -> None:
    """Optuna's stale-trial callback: the worker stopped beating; enqueue the point again, uncharged."""
    lost = int(trial.user_attrs.get("lost", 0)) + 1
    key = trial.user_attrs.get(RUN_KEY_ATTR)
    if lost > MAX_LOST:
        log.error("point %s lost its worker %d times; left FAIL (run the sweep again to retry it)", key, lost)
        return
    attrs = {k: v for k, v in trial.user_attrs.items() if k not in ("fail_reason", "requeue_reason")}
    optuna_study.enqueue_trial({}, user_attrs={**attrs, "lost": lost})
    log.warning("trial %d (point %s): its worker stopped beating; the point is back in the queue", trial.number, key)


def fail_stale(optuna_study: optuna.Study, settings: Knobs) -> None:
    """Fail trials whose worker stopped beating and re-enqueue their points (`_requeue_lost`).

    Also those RUNNING with no heartbeat at all for longer than the grace: claimed by an older medtl
    that wrote the first heartbeat separately, and never retried by Optuna's own check.
    """
    with_retry("failing stale trials", lambda: optuna.storages.fail_stale_trials(optuna_study), settings.infra_patience_s)
    with_retry("failing trials without heartbeat", lambda: _fail_heartbeatless(optuna_study, settings), settings.infra_patience_s)


def _fail_heartbeatless(optuna_study: optuna.Study, settings: Knobs) -> None:
    from optuna.storages._rdb import models

    rdb = _rdb(optuna_study)
    cutoff = datetime.now(UTC).replace(tzinfo=None) - timedelta(seconds=settings.grace_s)
    with _Session(rdb) as session:
        trial = models.TrialModel
        ids = [
            row[0]
            for row in session.query(trial.trial_id).filter(
                trial.study_id == optuna_study._study_id,
                trial.state == TrialState.RUNNING,
                ~trial.heartbeats.any(),
                trial._datetime_start_utc < cutoff,
            )
        ]
    for trial_id in ids:
        try:
            if rdb.set_trial_state_values(trial_id, state=TrialState.FAIL):
                _requeue_lost(optuna_study, rdb.get_trial(trial_id))
        except optuna.exceptions.UpdateFinishedTrialError:
            continue


# --- the queue -----------------------------------------------------------------------------------


def finished_runs(client: MlflowClient, study_name: str) -> Iterator[Any]:
    """Every FINISHED fine-tuning run of the study's experiment, paged."""
    experiment = client.get_experiment_by_name(SC.study_experiment(study_name))
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


def charged_failures(trials: list[FrozenTrial]) -> Counter:
    """FAIL trials per run_key that were the point's own failures (a lost worker is not one)."""
    return Counter(t.user_attrs.get(RUN_KEY_ATTR) for t in trials if t.state is TrialState.FAIL and "fail_reason" in t.user_attrs)


def enqueue_missing(
    specs: list[RunSpec] | tuple[RunSpec, ...], optuna_study: optuna.Study, done: set[str], max_retries: int | None = None
) -> int:
    """Enqueue every point of `specs` not done, not queued and not running; returns how many."""
    max_retries = knobs().max_retries if max_retries is None else max_retries
    trials = optuna_study.get_trials(deepcopy=False)
    live = {TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE}
    taken = {t.user_attrs.get(RUN_KEY_ATTR) for t in trials if t.state in live}
    failures = charged_failures(trials)
    added = 0
    for spec in specs:
        key = spec.run_key
        if key in done or key in taken or failures[key] > max_retries:
            continue
        optuna_study.enqueue_trial({}, user_attrs={RUN_KEY_ATTR: key, **spec.to_params()})
        added += 1
    return added


def pop_waiting(optuna_study: optuna.Study) -> optuna.Trial | None:
    """Claim one WAITING trial for an anonymous owner (tests, tools); workers use `claim_next`."""
    trial_id = claim_next(optuna_study, owner=f"anonymous:{uuid.uuid4().hex[:8]}")
    return None if trial_id is None else optuna.Trial(optuna_study, trial_id)


class Claim:
    """A worker's hold on one trial: the heartbeat thread and the ownership check.

    `owns()` is what the runner calls before each epoch's logging: True while the trial is RUNNING
    under this worker's token. When the database cannot be asked, it answers from the last
    heartbeat that went through: still True while no other worker can have seen the trial stale.
    """

    def __init__(self, optuna_study: optuna.Study, trial_id: int, owner: str, settings: Knobs) -> None:
        self.optuna_study, self.trial_id, self.owner, self.settings = optuna_study, trial_id, owner, settings
        self.last_ok = time.monotonic()  # the claim itself wrote the first heartbeat
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{trial_id}", daemon=True)

    def _beat(self) -> None:
        rdb = _rdb(self.optuna_study)
        while not self._stop.wait(self.settings.heartbeat_s):
            try:
                rdb.record_heartbeat(self.trial_id)
                self.last_ok = time.monotonic()
            except Exception as exc:  # the run goes on; the claim check decides when it is lost
                log.warning("heartbeat of trial %d failed: %s", self.trial_id, _reason(exc))

    def owns(self) -> bool:
        """Is the trial still RUNNING and held by this worker?"""
        if self.lost:
            return False
        try:
            state, owner = trial_owner(self.optuna_study, self.trial_id)
        except Exception as exc:
            safe = self.settings.grace_s - self.settings.heartbeat_s
            if is_infra_error(exc) and time.monotonic() - self.last_ok < safe:
                log.warning("cannot check the claim on trial %d (%s); the last heartbeat is recent", self.trial_id, _reason(exc))
                return True
            log.warning("cannot check the claim on trial %d (%s); assuming it lost", self.trial_id, _reason(exc))
            self.lost = True
            return False
        self.lost = not (state == TrialState.RUNNING and owner == self.owner)
        return not self.lost

    def __enter__(self) -> Claim:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@dataclass
class WorkerStats:
    done: int = 0
    failed: int = 0
    skipped: int = 0
    requeued: int = 0  # put back for an infrastructure fault or a stop signal, uncharged
    lost: int = 0  # claims taken over while this worker was frozen or cut off
    seconds: float = 0.0


class InfrastructureDown(RuntimeError):
    """MLflow or the database stayed unreachable for longer than `MEDTL_INFRA_PATIENCE_S`."""


def worker_token() -> str:
    """host:pid:random — unique per worker process, and tells the sweep which local child held what."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _install_stop_handlers() -> None:
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
    _install_stop_handlers()
    storage = open_storage(storage_url, settings)
    queued, optuna_study = join_queue(study, storage, tracking_uri)
    client = MlflowClient(tracking_uri)
    owner = worker_token()
    pins = dict(optuna_study.user_attrs.get(PINS_ATTR, {}))
    stats = WorkerStats()
    started = time.perf_counter()
    infra_since: float | None = None  # start of the current run of infrastructure failures
    backoff = 1.0
    while max_trials is None or stats.done + stats.failed + stats.skipped < max_trials:
        fail_stale(optuna_study, settings)
        trial_id = with_retry("claiming a point", lambda: claim_next(optuna_study, owner), settings.infra_patience_s)
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
                    f"({PATIENCE_ENV}); the points are still queued"
                )
            wait = backoff * (0.5 + random.random())
            log.warning("waiting %.1f s before the next point (infrastructure fault)", wait)
            time.sleep(wait)
            backoff = min(backoff * 2, MAX_BACKOFF_S)
            continue
        infra_since, backoff = None, 1.0
        if outcome == "lost":
            stats.lost += 1
        else:
            setattr(stats, outcome, getattr(stats, outcome) + 1)
        if progress and outcome in ("done", "failed"):
            print_progress(optuna_study, started, stats)
    stats.seconds = time.perf_counter() - started
    return stats


def _others_running(optuna_study: optuna.Study, owner: str, settings: Knobs) -> bool:
    running = with_retry(
        "listing running points",
        lambda: optuna_study._storage.get_all_trials(optuna_study._study_id, deepcopy=False, states=(TrialState.RUNNING,)),
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
    from medtl.mlops.signals import StopRequested

    patience = settings.infra_patience_s
    trial_id, owner = claim.trial_id, claim.owner
    try:
        frozen = optuna_study._storage.get_trial(trial_id)
        spec = RunSpec.from_params(frozen.user_attrs)
        if spec.run_key in finished_run_keys_for(client, study.name, spec.run_key):
            return "skipped" if finish(optuna_study, trial_id, owner, TrialState.PRUNED) else "lost"
        tags = {SC.OPTUNA_STUDY_TAG: optuna_study.study_name, SC.OPTUNA_TRIAL_TAG: str(frozen.number)}
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
    except StopRequested as stop:
        why = f"worker stopped by {stop.signal_name}"
        back = _quietly(lambda: put_back(optuna_study, trial_id, owner, why), 15)
        where = "back in the queue" if back else "not put back now (it returns after the grace)"
        log.warning("stopped by %s; trial %d %s", stop.signal_name, trial_id, where)
        raise
    except Exception as exc:
        if isinstance(exc, ClaimLost) or not claim.owns():
            log.warning("trial %d was taken over by another worker (%s); leaving it to that worker", trial_id, _reason(exc))
            return "lost"
        reason = _reason(exc)
        if is_infra_error(exc):
            back = with_retry("putting a point back", lambda: put_back(optuna_study, trial_id, owner, reason), patience)
            log.warning("trial %d: infrastructure fault, point back in the queue uncharged: %s", trial_id, reason)
            return "infra" if back else "lost"
        log.error("trial %d failed: %s", trial_id, reason)
        failed = with_retry(
            "failing a trial",
            lambda: finish(optuna_study, trial_id, owner, TrialState.FAIL, attrs={"fail_reason": reason}),
            patience,
        )
        if not failed:
            return "lost"
        if not isinstance(exc, UserError):
            _retry_point(optuna_study, optuna_study._storage.get_trial(trial_id), settings.max_retries)
        return "failed"
    value = outcome.metrics.get("best_val_loss", math.inf)
    value = value if math.isfinite(value) else math.inf
    attrs = {"mlflow_run_id": outcome.run_id}
    if with_retry("completing a trial", lambda: finish(optuna_study, trial_id, owner, TrialState.COMPLETE, value, attrs), patience):
        return "done"
    log.warning("trial %d was taken over before it could be completed; its run is FINISHED in MLflow", trial_id)
    return "lost"


def _quietly(fn: Callable[[], R], patience_s: float) -> R | None:
    try:
        return with_retry("putting a point back", fn, patience_s)
    except Exception as exc:  # the heartbeat goes stale instead and the point is re-queued then
        log.warning("could not put the point back (%s); it returns to the queue after the grace", _reason(exc))
        return None


def _retry_point(optuna_study: optuna.Study, trial: FrozenTrial, max_retries: int) -> None:
    """Re-enqueue a point that failed on its own, at most `max_retries` times."""
    attempts = int(trial.user_attrs.get("attempt", 1))
    if attempts > max_retries:
        return
    drop = ("fail_reason", "mlflow_run_id", "requeued", "requeue_reason")
    attrs = {k: v for k, v in trial.user_attrs.items() if k not in drop}
    optuna_study.enqueue_trial({}, user_attrs={**attrs, "attempt": attempts + 1})


def close_orphaned_runs(client: MlflowClient, study_name: str, optuna_study: optuna.Study) -> int:
    """Mark KILLED every fine-tuning run left RUNNING whose point no live trial holds; returns how many."""
    experiment = client.get_experiment_by_name(SC.study_experiment(study_name))
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
    experiment = client.get_experiment_by_name(SC.study_experiment(study_name))
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
    try:
        counts = queue_counts(optuna_study)
    except Exception as exc:  # progress is a courtesy; never fail a point over it
        log.warning("no progress line: %s", _reason(exc))
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


# --- the sweep process ---------------------------------------------------------------------------


def _worker_entry(kwargs: dict[str, Any], threads: int) -> None:
    """A local worker process: exits 0 when the queue is empty, 128+signal when stopped, 1 on a fault."""
    import sys

    import torch

    from medtl.mlops.signals import StopRequested

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s worker %(process)d: %(message)s")
    try:
        work(**kwargs)
    except StopRequested as stop:
        sys.exit(128 + stop.signum)
    except (UserError, InfrastructureDown) as exc:
        log.error("%s", T.mask_url(str(exc)))
        sys.exit(2 if isinstance(exc, UserError) else 1)


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
            if is_infra_error(exc):
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
    experiment_id = T.get_or_create_experiment(client, SC.study_experiment(study.name), uri)
    known = optuna_study.user_attrs.get(PARENT_ATTR)
    if known:
        try:
            run = client.get_run(known)
            if run.info.lifecycle_stage == "active":
                client.update_run(known, status="RUNNING")
                attempts = int(run.data.tags.get(SC.SWEEP_ATTEMPTS_TAG, "1")) + 1
                T.set_tags(client, known, {SC.SWEEP_ATTEMPTS_TAG: str(attempts), SC.GIT_COMMIT_TAG: T.git_commit()})
                return known
        except Exception as exc:
            if is_infra_error(exc):
                raise
    parent = client.create_run(
        experiment_id,
        run_name=f"sweep {study.name}",
        tags={
            T.STAGE_TAG: SC.Stage.SWEEP.value,
            T.STUDY_TAG: study.name,
            SC.OPTUNA_STUDY_TAG: optuna_study.study_name,
            SC.GIT_COMMIT_TAG: T.git_commit(),
            SC.SWEEP_ATTEMPTS_TAG: "1",
        },
    )
    parent_id = parent.info.run_id
    optuna_study.set_user_attr(PARENT_ATTR, parent_id)
    T.log_params(client, parent_id, {"study_file": str(study.path), "grid_points": len(study.specs), "optuna_storage": storage_url})
    client.log_artifact(parent_id, str(study.path))
    return parent_id


@dataclass
class DeadWorker:
    pid: int
    exitcode: int


@dataclass
class SweepResult:
    study: Study
    parent_run_id: str
    enqueued: int
    stats: WorkerStats
    counts: Counter
    held_back: int = 0
    dead_workers: list[DeadWorker] = field(default_factory=list)


def _reclaim(optuna_study: optuna.Study, pid: int) -> int:
    """Put back the trials a dead local worker (`pid` on this host) held; returns how many."""
    prefix = f"{socket.gethostname()}:{pid}:"
    running = optuna_study._storage.get_all_trials(optuna_study._study_id, deepcopy=False, states=(TrialState.RUNNING,))
    back = 0
    for trial in running:
        token = trial.system_attrs.get(OWNER_ATTR) or ""
        if token.startswith(prefix) and put_back(optuna_study, trial._trial_id, token, f"worker {pid} died"):
            back += 1
    return back


def _run_local_workers(
    kwargs: dict[str, Any], workers: int, optuna_study: optuna.Study, settings: Knobs
) -> list[DeadWorker]:
    """Run `workers` processes; a dead one's point goes back at once and a replacement starts."""
    from medtl.mlops.signals import StopRequested

    ctx = mp.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // workers)
    procs = [ctx.Process(target=_worker_entry, args=(kwargs, threads)) for _ in range(workers)]
    for proc in procs:
        proc.start()
    dead: list[DeadWorker] = []
    replacements = workers
    try:
        while procs:
            for proc in list(procs):
                proc.join(timeout=0.5)
                if proc.exitcode is None:
                    continue
                procs.remove(proc)
                if proc.exitcode == 0:
                    continue
                dead.append(DeadWorker(proc.pid, proc.exitcode))
                back = with_retry("re-queueing a dead worker's point", lambda p=proc: _reclaim(optuna_study, p.pid), settings.infra_patience_s)
                print(f"[sweep] worker {proc.pid} died (exit code {proc.exitcode}); {back} point(s) back in the queue", flush=True)
                if replacements > 0 and proc.exitcode != 2:
                    replacements -= 1
                    fresh = ctx.Process(target=_worker_entry, args=(kwargs, threads))
                    fresh.start()
                    procs.append(fresh)
    except StopRequested as stop:
        for proc in procs:
            if proc.is_alive():
                os.kill(proc.pid, stop.signum)  # each puts its point back and closes its run
        deadline = time.monotonic() + _stop_wait_s()
        for proc in procs:
            proc.join(timeout=max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join()
                _quietly(lambda p=proc: _reclaim(optuna_study, p.pid), 15)
        raise
    return dead


def _stop_wait_s() -> float:
    from medtl.mlops.signals import stop_grace_s

    return stop_grace_s() + 60.0


def sweep(
    study_path: str | Path,
    *,
    workers: int = 1,
    storage_url: str | None = None,
    tracking_uri: str | None = None,
    device: str = "auto",
) -> SweepResult:
    """Enqueue the study's missing points, run them with `workers` local processes, end the parent run.

    Raises:
        UserError: bad knobs, an unreachable storage or tracking store.
        medtl.mlops.signals.StopRequested: SIGTERM/SIGINT; the points went back to the queue and
            the parent run is KILLED with the signal's name.
    """
    settings = knobs()
    _install_stop_handlers()
    study = load_study(study_path, tracking_uri=tracking_uri)
    uri = T.resolve_tracking_uri(tracking_uri)
    storage_url = storage_url or default_storage(uri)
    storage = open_storage(storage_url, settings)
    optuna_study = open_optuna_study(study, storage)
    client = MlflowClient(uri)
    try:
        done = finished_run_keys(client, study.name)
    except Exception as exc:
        raise UserError(T.mask_url(f"cannot reach the tracking store {uri}: {str(exc).splitlines()[0][:200]}")) from None
    from medtl.mlops.sweeps import prerequisites
    from medtl.mlops.tracking.pretraining import run_pretrain

    pending = [spec for spec in study.specs if spec.run_key not in done]
    readiness = prerequisites.check(
        study, pending, client, pretrain=lambda pspec: run_pretrain(pspec, tracking_uri=uri, device=device)
    )
    for message in readiness.messages:
        print(f"[sweep] {message}", flush=True)
    pins = pin_init_sources(optuna_study, client, readiness.ready)
    enqueued = enqueue_missing(readiness.ready, optuna_study, done, settings.max_retries)
    parent_id = _open_parent_run(client, optuna_study, study, uri, storage_url, workers)
    if pins:
        T.set_tags(client, parent_id, {f"{SC.INIT_PIN_TAG_PREFIX}{k.removeprefix('models:/').replace('@', '.')}": v for k, v in pins.items()})
    kwargs = dict(study=study.name, storage_url=storage_url, tracking_uri=uri, parent_run_id=parent_id, device=device)
    started = time.perf_counter()
    stats = WorkerStats()
    dead: list[DeadWorker] = []
    try:
        if workers <= 1:
            stats = work(**kwargs)
        else:
            dead = _run_local_workers(kwargs, workers, optuna_study, settings)
    except BaseException as exc:
        reason = getattr(exc, "signal_name", None)
        reason = f"stopped by {reason}" if reason else f"{type(exc).__name__}: {exc}".splitlines()[0]
        _quietly(lambda: T.end_run(client, parent_id, "KILLED", T.mask_url(reason)), 30)
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
