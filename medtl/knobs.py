"""Numeric settings read from the environment (`MEDTL_*_S` and friends), validated in one place."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from medtl.errors import UserError


def env_number(name: str, default: float, *, whole: bool = False, value: str | None = None) -> float:
    """The number in `$name` (or `value` when given), `default` when unset or blank.

    Args:
        name: the environment variable, named in the error.
        default: the value when the variable is unset or blank.
        whole: require a whole number (returned as int).
        value: read this text instead of the environment.

    Raises:
        UserError: the text is not a (whole, finite) number.
    """
    raw = (os.environ.get(name, "") if value is None else value).strip()
    if not raw:
        return default
    try:
        number: float = int(raw) if whole else float(raw)
    except ValueError:
        raise UserError(f"{name} must be {'a whole number' if whole else 'a number'}, got {raw!r}") from None
    if not math.isfinite(number):
        raise UserError(f"{name} must be a finite number, got {raw!r}")
    return number


def env_seconds(name: str, default: float, *, value: str | None = None) -> float:
    """A non-negative number of seconds from `$name` (or `value`); see `env_number`.

    Raises:
        UserError: not a finite number of seconds >= 0.
    """
    raw = os.environ.get(name, "") if value is None else value
    try:
        seconds = env_number(name, default, value=value)
    except UserError:
        seconds = math.nan
    if math.isnan(seconds) or seconds < 0:
        raise UserError(f"{name} must be a number of seconds >= 0, got {raw!r}")
    return seconds


def env_whole(name: str, default: int, *, minimum: int = 0) -> int:
    """A whole number >= `minimum` from `$name`, `default` when unset or blank.

    Raises:
        UserError: not a whole number, or below `minimum`.
    """
    number = int(env_number(name, default, whole=True))
    if number < minimum:
        raise UserError(f"{name} must be a whole number >= {minimum}, got {number}")
    return number


# --- the one infrastructure budget ----------------------------------------------------------------

INFRA_PATIENCE_ENV = "MEDTL_INFRA_PATIENCE_S"
LEGACY_TRACKING_RETRY_ENV = "MEDTL_TRACKING_RETRY_S"  # read when the budget above is unset (older deployments)
INFRA_PATIENCE_DEFAULT_S = 1800.0


def infra_patience_s() -> float:
    """How long medtl waits out unreachable infrastructure (MLflow, the Optuna database) before giving up.

    One budget for every retry of an infrastructure call: a tracking call (then the point is re-queued,
    uncharged), a worker's claim, a put-back. `$MEDTL_INFRA_PATIENCE_S`, else the older
    `$MEDTL_TRACKING_RETRY_S`, else 1800 s.

    Raises:
        UserError: not a positive number of seconds.
    """
    name = INFRA_PATIENCE_ENV
    if not os.environ.get(name, "").strip() and os.environ.get(LEGACY_TRACKING_RETRY_ENV, "").strip():
        name = LEGACY_TRACKING_RETRY_ENV
    seconds = env_seconds(name, INFRA_PATIENCE_DEFAULT_S)
    if seconds <= 0:
        raise UserError(f"{name} must be a positive number of seconds, got {seconds:g}")
    return seconds


# --- the sweep queue ------------------------------------------------------------------------------

HEARTBEAT_ENV = "MEDTL_HEARTBEAT_S"
GRACE_ENV = "MEDTL_GRACE_S"
REQUEUES_ENV = "MEDTL_MAX_REQUEUES"
LEGACY_REQUEUES_ENV = "MEDTL_MAX_RETRIES"  # read when the name above is unset (older deployments)


@dataclass(frozen=True)
class Knobs:
    """The sweep queue's timing and budgets, from the environment (see `knobs`)."""

    heartbeat_s: int = 30
    grace_s: float = 90.0
    max_requeues: int = 2
    infra_patience_s: float = INFRA_PATIENCE_DEFAULT_S


def knobs() -> Knobs:
    """`MEDTL_HEARTBEAT_S`, `MEDTL_GRACE_S`, `MEDTL_MAX_REQUEUES`, `MEDTL_INFRA_PATIENCE_S`, validated.

    `max_requeues` bounds the re-queues of a point after its own failure (an infrastructure fault or a
    stop re-queues it uncharged; `MEDTL_MAX_RETRIES` is read when unset); `infra_patience_s` is the one
    infrastructure budget for retries (`infra_patience_s()`).

    Raises:
        UserError: a value is not a number, the heartbeat is not a positive whole number of seconds,
            the grace is not longer than the heartbeat interval, or retries are negative.
    """
    default = Knobs()
    heartbeat = int(env_number(HEARTBEAT_ENV, default.heartbeat_s, whole=True))
    grace = env_number(GRACE_ENV, default.grace_s)
    requeues_env = REQUEUES_ENV
    if not os.environ.get(REQUEUES_ENV, "").strip() and os.environ.get(LEGACY_REQUEUES_ENV, "").strip():
        requeues_env = LEGACY_REQUEUES_ENV
    requeues = int(env_number(requeues_env, default.max_requeues, whole=True))
    if heartbeat < 1:
        raise UserError(f"{HEARTBEAT_ENV} must be at least 1 second, got {heartbeat}")
    if grace <= heartbeat:
        raise UserError(
            f"{GRACE_ENV} ({grace:g} s) must be longer than {HEARTBEAT_ENV} ({heartbeat} s): "
            "a live worker's point would be taken over between two heartbeats"
        )
    if requeues < 0:
        raise UserError(f"{requeues_env} must be 0 or more, got {requeues}")
    return Knobs(heartbeat, grace, requeues, infra_patience_s())


# --- training and logging -------------------------------------------------------------------------

TORCH_THREADS_ENV = "MEDTL_TORCH_THREADS"
UPLOAD_EVERY_ENV = "MEDTL_CHECKPOINT_UPLOAD_EVERY"


def torch_threads() -> int | None:
    """`$MEDTL_TORCH_THREADS` (intra-op threads, >= 1), or None when unset: torch's own choice."""
    if not os.environ.get(TORCH_THREADS_ENV, "").strip():
        return None
    return env_whole(TORCH_THREADS_ENV, 1, minimum=1)


def checkpoint_upload_every(default: int) -> int:
    """`$MEDTL_CHECKPOINT_UPLOAD_EVERY` (upload `last.pt` every N epochs, 0 never), else `default`."""
    return env_whole(UPLOAD_EVERY_ENV, default, minimum=0)


PROMOTION_WAIT_ENV = "MEDTL_PROMOTION_WAIT_S"
PROMOTION_WAIT_DEFAULT_S = 120.0


def promotion_wait_s() -> float:
    """`$MEDTL_PROMOTION_WAIT_S`: how long a promotion waits for another one of the same model to finish."""
    return env_seconds(PROMOTION_WAIT_ENV, PROMOTION_WAIT_DEFAULT_S)


def torchrun_world() -> tuple[int, int]:
    """(`$WORLD_SIZE`, `$LOCAL_RANK`) as torchrun sets them; (1, 0) outside torchrun."""
    return env_whole("WORLD_SIZE", 1, minimum=1), env_whole("LOCAL_RANK", 0, minimum=0)


# --- local workers --------------------------------------------------------------------------------

LOADER_WORKERS_ENV = "MEDTL_LOADER_WORKERS"


def loader_workers() -> int | None:
    """`$MEDTL_LOADER_WORKERS` (DataLoader worker processes per training process, >= 0), or None when unset.

    Set by `medtl sweep --workers auto` and `medtl worker --gpus` for each local worker, so the
    machine's cores are divided between them; unset, the runtime picks (4 on CUDA, 0 on CPU).
    """
    if not os.environ.get(LOADER_WORKERS_ENV, "").strip():
        return None
    return env_whole(LOADER_WORKERS_ENV, 0, minimum=0)


# --- the Optuna database's connection pool ---------------------------------------------------------

DB_POOL_SIZE_ENV = "MEDTL_DB_POOL_SIZE"
DB_MAX_OVERFLOW_ENV = "MEDTL_DB_MAX_OVERFLOW"
DB_POOL_RECYCLE_ENV = "MEDTL_DB_POOL_RECYCLE_S"


@dataclass(frozen=True)
class DbPool:
    """Each worker process's pool of PostgreSQL connections to the Optuna queue (see `db_pool`)."""

    size: int = 2
    max_overflow: int = 2
    recycle_s: float = 300.0

    @property
    def peak(self) -> int:
        """The most connections one process can hold: the pool plus its overflow."""
        return self.size + self.max_overflow


def db_pool() -> DbPool:
    """`MEDTL_DB_POOL_SIZE` (>= 1), `MEDTL_DB_MAX_OVERFLOW` (>= 0), `MEDTL_DB_POOL_RECYCLE_S` (> 0), validated.

    Raises:
        UserError: a value is not a whole number in range, or the recycle time is not positive.
    """
    default = DbPool()
    recycle = env_seconds(DB_POOL_RECYCLE_ENV, default.recycle_s)
    if recycle <= 0:
        raise UserError(f"{DB_POOL_RECYCLE_ENV} must be a positive number of seconds, got {recycle:g}")
    return DbPool(
        env_whole(DB_POOL_SIZE_ENV, default.size, minimum=1),
        env_whole(DB_MAX_OVERFLOW_ENV, default.max_overflow, minimum=0),
        recycle,
    )
