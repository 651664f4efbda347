"""SIGTERM and SIGINT as one stop request, honoured at the training loop's epoch boundary.

`install_stop_handlers()` turns both signals (what SLURM pre-emption, `docker stop`, systemd, `kill`
and Ctrl-C send) into a request. While a fit runs, the loop (through `StopCheck`, a callback) finishes
the current epoch if that fits in the grace period and abandons it otherwise; either way the last
written checkpoint is kept and `StopRequested` is raised for the runner, which ends the MLflow run
KILLED with the signal's name. Outside a fit the request raises `StopRequested` at once, as Ctrl-C
raises `KeyboardInterrupt`. A second signal during the grace period stops at once.

The grace is `MEDTL_STOP_GRACE_S` (seconds, default 0): with SLURM's `--signal=TERM@120`, set it
below 120 so the epoch and the run's closing fit in the lead time.
"""

from __future__ import annotations

import logging
import signal
import threading
import time

from medtl.knobs import env_seconds
from medtl.training.loop import Callback, FitState

log = logging.getLogger(__name__)

GRACE_ENV = "MEDTL_STOP_GRACE_S"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequested(KeyboardInterrupt):
    """A stop signal arrived; `signal_name` is e.g. `SIGTERM`. A BaseException, like Ctrl-C's."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(f"stopped by {signal_name}")
        self.signal_name = signal_name

    @property
    def signum(self) -> int:
        return int(getattr(signal.Signals, self.signal_name, signal.SIGINT))


class _Request:
    """The pending request: which signal, when, and whether a fit defers it to an epoch boundary."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self.at = 0.0
        self.grace_s = 0.0
        self.deferring = 0  # fits in progress that will honour the request themselves
        self.lock = threading.Lock()


_REQUEST = _Request()


def stop_grace_s(value: str | None = None) -> float:
    """The grace period in seconds from `value` or `$MEDTL_STOP_GRACE_S` (default 0).

    Raises:
        UserError: the value is not a non-negative number of seconds.
    """
    return env_seconds(GRACE_ENV, 0.0, value=value)


def install_stop_handlers(grace_s: float | None = None) -> None:
    """Make SIGTERM and SIGINT request a stop (see the module docstring); main thread only.

    Args:
        grace_s: seconds the current epoch may still take after the signal; None reads
            `$MEDTL_STOP_GRACE_S` (default 0: abandon the epoch at once).

    Raises:
        UserError: `$MEDTL_STOP_GRACE_S` is not a non-negative number.
    """
    _REQUEST.grace_s = stop_grace_s() if grace_s is None else stop_grace_s(str(grace_s))
    if threading.current_thread() is not threading.main_thread():
        log.warning("stop handlers can only be installed from the main thread; SIGTERM keeps its default")
        return
    for signum in STOP_SIGNALS:
        signal.signal(signum, _handle)


def _handle(signum: int, frame: object) -> None:
    name = signal.Signals(signum).name
    with _REQUEST.lock:
        repeated = _REQUEST.signal_name is not None
        if not repeated:
            _REQUEST.signal_name, _REQUEST.at = name, time.monotonic()
        deferring = _REQUEST.deferring > 0
    if deferring and not repeated:
        log.warning("%s received: stopping at the end of this epoch if it ends within %.0f s", name, _REQUEST.grace_s)
        return
    raise StopRequested(_REQUEST.signal_name or name)


def clear_stop_request() -> None:
    """Forget a handled request (a worker that continues, or a test)."""
    with _REQUEST.lock:
        _REQUEST.signal_name = None


class StopCheck(Callback):
    """The loop's side of a stop request: honour it between batches and at the epoch boundary.

    Between batches the epoch is abandoned once it cannot end within the grace period (estimated
    from the batches done so far); at the epoch boundary, after that epoch's checkpoint is queued,
    the fit stops. Only fits with this callback defer a signal; others are interrupted at once.
    """

    epoch_end_order = 200  # after the checkpointer has queued this epoch's last.pt

    def __init__(self) -> None:
        self._holding = False

    def on_fit_start(self, state: FitState) -> None:
        with _REQUEST.lock:
            _REQUEST.deferring += 1
            self._holding = True
        self._check_boundary()

    def on_batch_end(self, state: FitState) -> None:
        name = _REQUEST.signal_name
        if name is None:
            return
        now = time.monotonic()
        left = _REQUEST.grace_s - (now - _REQUEST.at)
        done, total = state.batch, max(state.batches, 1)
        per_batch = (now - state.epoch_started) / max(done, 1)
        if left <= 0 or per_batch * (total - done) > left:
            log.warning("%s: abandoning epoch %d (it would not end within the grace period)", name, state.epoch)
            raise StopRequested(name)

    def on_epoch_end(self, state: FitState, metrics: dict[str, float]) -> None:
        self._check_boundary()

    def on_fit_end(self, state: FitState) -> None:
        self._release()
        self._check_boundary()

    def on_fit_abort(self, state: FitState, error: BaseException) -> None:
        self._release()

    def _release(self) -> None:
        with _REQUEST.lock:
            if self._holding:
                _REQUEST.deferring = max(0, _REQUEST.deferring - 1)
                self._holding = False

    @staticmethod
    def _check_boundary() -> None:
        name = _REQUEST.signal_name
        if name is not None:
            raise StopRequested(name)
