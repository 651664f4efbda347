"""Retrying calls to MLflow and the Optuna storage: one back-off loop, one test of what is worth retrying.

An error is the infrastructure's (`is_connection_error`) when it, or anything in its cause chain,
says the tracking server or a database could not be reached; every other error is the caller's and
is never retried. The back-off (`Backoff`) is exponential from 1 s, jittered to half to one and a
half times each step so that many workers cut off together do not return together, and capped.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from medtl.redact import mask_url

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 60.0  # the longest wait between two tries, unless a caller caps it lower
R = TypeVar("R")

_LIBRARIES = ("sqlalchemy", "psycopg", "requests", "urllib3", "sqlite3")
_NAMES = re.compile(r"Connection|Timeout|OperationalError|InterfaceError|Disconnection|ProtocolError")
_TEXT = re.compile(
    r"API request to .* failed with (timeout )?exception|max retries exceeded|connection refused|"
    r"connection (was )?(closed|reset|lost|aborted)|connection is closed|connection timed out|read timed out|"
    r"server closed the connection|remote end closed connection|could not connect|"
    r"failed to establish a new connection|name or service not known|temporary failure in name resolution|"
    r"database is locked|the database system is (shutting down|starting up)|terminating connection|"
    r"502 bad gateway|503 service unavailable|504 gateway",
    re.IGNORECASE,
)


def causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, then each error it wraps (`__cause__`, else `__context__`), each once even in a cycle."""
    seen: set[int] = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def is_connection_error(exc: BaseException) -> bool:
    """Whether `exc` (or an error it wraps) means MLflow or a database is unreachable, not wrong input."""
    for error in causes(exc):
        if isinstance(error, ConnectionError | TimeoutError):
            return True
        kind, module = type(error).__name__, type(error).__module__ or ""
        if module.startswith("optuna") and kind == "StorageInternalError":  # a failed commit on the storage
            return True
        if module.split(".")[0] in _LIBRARIES and _NAMES.search(kind):
            return True
        if _TEXT.search(str(error)[:4000]):
            return True
    return False


def one_line(exc: BaseException) -> str:
    """`Type: message`, its first line only, at most 300 characters, any password masked: for a log line."""
    return mask_url(f"{type(exc).__name__}: {exc}".splitlines()[0][:300])


class Backoff:
    """Waits of 1 s, 2 s, 4 s ... up to `cap_s` (default `MAX_BACKOFF_S`), each jittered to 0.5-1.5 times."""

    def __init__(self, cap_s: float | None = None) -> None:
        self.cap_s = MAX_BACKOFF_S if cap_s is None else cap_s
        self.step = 1.0

    def next(self) -> float:
        """The next wait, in seconds; the step after it doubles."""
        wait = min(self.step * (0.5 + random.random()), self.cap_s)
        self.step = min(self.step * 2, self.cap_s)
        return wait

    def reset(self) -> None:
        """Back to the first step, after a call went through."""
        self.step = 1.0


def retry(
    call: Callable[[], R],
    what: str,
    patience_s: float,
    *,
    classify: Callable[[BaseException], bool] = is_connection_error,
    cap_s: float | None = None,
    give_up: Callable[[BaseException], Exception] | None = None,
) -> R:
    """`call()`, tried again after each error `classify` accepts, with `Backoff`, for `patience_s` seconds.

    Every retry is logged as a warning naming `what` and the error. Other errors propagate at once.

    Raises:
        Exception: the last error once the patience is spent, or `give_up(error)` (chained to it)
            when `give_up` is given; any error `classify` refuses, at once.
    """
    deadline = time.monotonic() + patience_s
    backoff = Backoff(cap_s)
    while True:
        try:
            return call()
        except Exception as exc:
            if not classify(exc):
                raise
            left = deadline - time.monotonic()
            if left <= 0:
                if give_up is None:
                    raise
                raise give_up(exc) from exc
            pause = min(backoff.next(), left)
            log.warning("%s failed (%s); retrying in %.1f s", what, one_line(exc), pause)
            time.sleep(pause)
