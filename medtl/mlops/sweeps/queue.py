"""The sweep's queue: a study's grid points as Optuna trials, enqueued once and claimed by one worker each.

Exactly once: a point is enqueued only if no trial holds its `run_key` (waiting, running or
complete) and no FINISHED MLflow run carries it. A worker claims a WAITING trial in one transaction
that also writes the trial's first heartbeat and the worker's owner token (system attr
`medtl:owner`), so no trial is ever RUNNING without a heartbeat. While it trains, `Claim` beats
every `MEDTL_HEARTBEAT_S` seconds; a trial whose heartbeat is older than `MEDTL_GRACE_S` is failed
by the next worker that looks and its point is enqueued again (`_requeue_lost`, not charged to the
point). Every later write a worker makes to its trial — put back, complete, fail — checks the owner
token in the same transaction, and the runner asks `Claim.owns` before each epoch's logging: a worker
that was frozen past the grace finds its claim gone and walks away without telling Optuna anything.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import optuna
from optuna.trial import FrozenTrial, TrialState

from medtl.errors import UserError
from medtl.knobs import DbPool, Knobs, db_pool, knobs
from medtl.mlops.retry import is_connection_error, one_line, retry
from medtl.mlops.sweeps.study import (
    Study,
    StudyError,
    load_study,
    lr_sources,
    study_attrs,
    study_from_attrs,
    study_name,
)
from medtl.redact import mask_url
from medtl.training.spec import RunSpec

log = logging.getLogger(__name__)
# Heartbeats and stale-trial retry are marked experimental in Optuna; medtl relies on them knowingly.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

RUN_KEY_ATTR = "run_key"
OWNER_ATTR = "medtl:owner"  # trial system attr: the token of the worker holding the claim
PINS_ATTR = "init_pins"  # study user attr: models:/name@alias → models:/name/version, fixed per study
MAX_LOST = 5  # a point whose worker vanished this often (killed for memory each time?) is left FAIL
R = TypeVar("R")


# --- storage -------------------------------------------------------------------------------------


def default_storage(tracking_uri: str) -> str:
    """Optuna's storage beside a SQLite tracking store (`optuna.db`), else in the working directory."""
    if tracking_uri.startswith("sqlite:///"):
        return f"sqlite:///{Path(tracking_uri.removeprefix('sqlite:///')).parent / 'optuna.db'}"
    return f"sqlite:///{Path.cwd() / 'optuna.db'}"


def engine_kwargs(url: str, pool: DbPool | None = None) -> dict[str, Any] | None:
    """SQLAlchemy engine settings for an Optuna storage URL: a small bounded pool on PostgreSQL.

    PostgreSQL: each process holds at most `pool.peak` connections (`MEDTL_DB_POOL_SIZE` +
    `MEDTL_DB_MAX_OVERFLOW`), tested before each use (`pool_pre_ping`: a connection the server or a
    firewall dropped while idle, optuna#5600, is replaced, not raised), recycled after
    `MEDTL_DB_POOL_RECYCLE_S`, with TCP keepalives. SQLite: a 60 s busy timeout.
    """
    if url.startswith("postgresql"):
        pool = pool or db_pool()
        return {
            "pool_pre_ping": True,
            "pool_size": pool.size,
            "max_overflow": pool.max_overflow,
            "pool_recycle": pool.recycle_s,
            # libpq keepalives (ignored on a Unix socket): a NAT or firewall keeps the idle connection open
            "connect_args": {"keepalives": 1, "keepalives_idle": 60, "keepalives_interval": 10, "keepalives_count": 5},
        }
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 60}}
    return None


def open_storage(url: str, settings: Knobs | None = None) -> optuna.storages.BaseStorage:
    """RDB storage with heartbeats and re-queueing of stale trials; one line naming the URL if unreachable.

    SQLite is switched to write-ahead logging with a 60 s busy timeout, so several local workers
    wait for each other's short transactions instead of failing on a lock. PostgreSQL gets the
    bounded pool of `engine_kwargs`.

    Raises:
        UserError: the storage cannot be opened (the reason in one line; a server that refuses more
            connections is named as such, with the knobs that size the pool).
    """
    settings = settings or knobs()
    kwargs = engine_kwargs(url)
    try:
        storage = optuna.storages.RDBStorage(
            url,
            heartbeat_interval=settings.heartbeat_s,
            grace_period=settings.grace_s,
            heartbeat_stale_trial_callback=_requeue_lost,
            engine_kwargs=kwargs,
        )
        if url.startswith("sqlite") and ":memory:" not in url:
            with storage.engine.connect() as connection:  # persistent in the file: once is enough
                connection.exec_driver_sql("PRAGMA journal_mode=WAL")
        return storage
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        refusal = _refused_for_load(str(exc))
        if refusal:
            raise UserError(mask_url(f"the Optuna database at {url} refuses more connections ({refusal}); {_ROOM_HINT}")) from None
        raise UserError(mask_url(f"cannot open Optuna storage {url}: {reason[:200]}")) from None


_ROOM_HINT = (
    "raise the server's max_connections (POSTGRES_MAX_CONNECTIONS) or run fewer workers; "
    "each worker process holds up to MEDTL_DB_POOL_SIZE + MEDTL_DB_MAX_OVERFLOW (docs/scaling.md, Sizing and limits)"
)


def _refused_for_load(message: str) -> str | None:
    """PostgreSQL's refusal when its connection slots (server-wide, per role or per database) are used up, else None."""
    phrases = ("too many clients already", "remaining connection slots are reserved", "too many connections for")
    for line in message.splitlines():
        if any(phrase in line for phrase in phrases):
            return line.split("FATAL:", 1)[-1].strip()[:120]
    return None


def check_connection_room(storage: optuna.storages.BaseStorage, processes: int) -> None:
    """Refuse, before anything is enqueued or claimed, to start `processes` that the server cannot connect.

    PostgreSQL only: the free slots are `max_connections` less the reserved ones and those in use
    (this process's own included), and at most the role's and the database's own limits. Each new
    process needs one connection to work at all (and holds up to the pool's peak); fewer free slots
    than new processes is refused.

    Raises:
        UserError: fewer free connection slots than processes.
    """
    rdb = getattr(storage, "_backend", storage)
    engine = getattr(rdb, "engine", None)
    if engine is None or engine.dialect.name != "postgresql":
        return
    with engine.connect() as connection:
        free = connection.exec_driver_sql(_FREE_SLOTS_SQL).scalar()
    if free is not None and free < processes:
        raise UserError(
            f"the Optuna database has {max(free, 0)} free connection slot(s) for {processes} process(es) "
            f"(the sweep and its workers); {_ROOM_HINT}"
        )


# Free slots for this role in this database: the server's, the role's and the database's limits (-1: none).
_FREE_SLOTS_SQL = """
SELECT LEAST(
  current_setting('max_connections')::int - current_setting('superuser_reserved_connections')::int
    - COALESCE(NULLIF(current_setting('reserved_connections', true), '')::int, 0)
    - (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'),
  (SELECT CASE WHEN rolconnlimit < 0 THEN 2147483647
          ELSE rolconnlimit - (SELECT count(*) FROM pg_stat_activity WHERE usename = current_user) END
     FROM pg_roles WHERE rolname = current_user),
  (SELECT CASE WHEN datconnlimit < 0 THEN 2147483647
          ELSE datconnlimit - (SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()) END
     FROM pg_database WHERE datname = current_database())
)
"""


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


def join_queue(ref: str, storage: optuna.storages.BaseStorage) -> tuple[Study, optuna.Study]:
    """The study and its Optuna queue for a worker, from a study name or (as before) a study file.

    A name is looked up in `storage`; the study comes from the queue's user attributes, so no
    study file is needed on the worker's machine. A path to a study file is parsed as before, except
    one that takes learning rates `from_study`: its grid is the one the sweep resolved and published,
    so the worker joins the queue by the file's study name and reads no tracking store.

    Raises:
        UserError: no sweep of that name in the storage (the known ones listed), or a bad study file.
    """
    if _is_study_file(ref):
        if not lr_sources(ref):
            study = load_study(ref)
            return study, open_optuna_study(study, storage, publish=False)
        ref = study_name(ref)
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


# --- enqueue once --------------------------------------------------------------------------------


def charged_failures(trials: list[FrozenTrial]) -> Counter:
    """FAIL trials per run_key that were the point's own failures (a lost worker is not one)."""
    return Counter(t.user_attrs.get(RUN_KEY_ATTR) for t in trials if t.state is TrialState.FAIL and "fail_reason" in t.user_attrs)


def enqueue_missing(
    specs: list[RunSpec] | tuple[RunSpec, ...], optuna_study: optuna.Study, done: set[str], max_requeues: int | None = None
) -> int:
    """Enqueue every point of `specs` not done, not queued and not running; returns how many."""
    max_requeues = knobs().max_requeues if max_requeues is None else max_requeues
    trials = optuna_study.get_trials(deepcopy=False)
    live = {TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE}
    taken = {t.user_attrs.get(RUN_KEY_ATTR) for t in trials if t.state in live}
    failures = charged_failures(trials)
    added = 0
    for spec in specs:
        key = spec.run_key
        if key in done or key in taken or failures[key] > max_requeues:
            continue
        optuna_study.enqueue_trial({}, user_attrs={RUN_KEY_ATTR: key, **spec.to_params()})
        added += 1
    return added


def requeue_failed(optuna_study: optuna.Study, trial: FrozenTrial, max_requeues: int) -> None:
    """Re-enqueue a point that failed on its own, at most `max_requeues` times."""
    attempts = int(trial.user_attrs.get("attempt", 1))
    if attempts > max_requeues:
        return
    drop = ("fail_reason", "mlflow_run_id", "requeued", "requeue_reason")
    attrs = {k: v for k, v in trial.user_attrs.items() if k not in drop}
    optuna_study.enqueue_trial({}, user_attrs={**attrs, "attempt": attempts + 1})


def queue_counts(optuna_study: optuna.Study) -> Counter:
    return Counter(t.state.name for t in optuna_study.get_trials(deepcopy=False))


# --- claims --------------------------------------------------------------------------------------


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


def worker_token() -> str:
    """host:pid:random — unique per worker process, and tells the sweep which local child held what."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


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


def reclaim(optuna_study: optuna.Study, pid: int) -> int:
    """Put back the trials a dead local worker (`pid` on this host) held; returns how many."""
    prefix = f"{socket.gethostname()}:{pid}:"
    running = optuna_study._storage.get_all_trials(optuna_study._study_id, deepcopy=False, states=(TrialState.RUNNING,))
    back = 0
    for trial in running:
        token = trial.system_attrs.get(OWNER_ATTR) or ""
        if token.startswith(prefix) and put_back(optuna_study, trial._trial_id, token, f"worker {pid} died"):
            back += 1
    return back


def quietly(fn: Callable[[], R], what: str, patience_s: float, fallback: str) -> R | None:
    """`fn()`, retried for `patience_s`; None, logged with what happens instead (`fallback`), if it still fails."""
    try:
        return retry(fn, what, patience_s)
    except Exception as exc:
        log.warning("%s failed (%s); %s", what, one_line(exc), fallback)
        return None


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
                log.warning("heartbeat of trial %d failed: %s", self.trial_id, one_line(exc))

    def owns(self) -> bool:
        """Is the trial still RUNNING and held by this worker?"""
        if self.lost:
            return False
        try:
            state, owner = trial_owner(self.optuna_study, self.trial_id)
        except Exception as exc:
            safe = self.settings.grace_s - self.settings.heartbeat_s
            if is_connection_error(exc) and time.monotonic() - self.last_ok < safe:
                log.warning("cannot check the claim on trial %d (%s); the last heartbeat is recent", self.trial_id, one_line(exc))
                return True
            log.warning("cannot check the claim on trial %d (%s); assuming it lost", self.trial_id, one_line(exc))
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


# --- lost workers --------------------------------------------------------------------------------


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
    retry(lambda: optuna.storages.fail_stale_trials(optuna_study), "failing stale trials", settings.infra_patience_s)
    retry(lambda: _fail_heartbeatless(optuna_study, settings), "failing trials without heartbeat", settings.infra_patience_s)


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
