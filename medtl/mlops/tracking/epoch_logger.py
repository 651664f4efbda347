"""Each epoch logged to MLflow once its checkpoint is on disk, from a sender thread of its own.

The loop never waits for the tracking store: outages are buffered (the history itself), mid-run
checkpoint uploads let another machine resume, and a sweep worker's claim gates every send.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from medtl.knobs import checkpoint_upload_every, infra_patience_s
from medtl.mlops.retry import Backoff, is_connection_error, one_line
from medtl.mlops.tracking.client import METRIC_BATCH, TrackingUnavailable
from medtl.redact import mask_url
from medtl.training import schema as S
from medtl.training.checkpoint import CheckpointPaths
from medtl.training.loop import Callback

log = logging.getLogger(__name__)


def upload_every_default(uri: str) -> int:
    """Mid-run checkpoint uploads: every epoch to a remote server (resume on another machine), never
    to the local default store (the work folder on this machine is enough). `$MEDTL_CHECKPOINT_UPLOAD_EVERY`."""
    return checkpoint_upload_every(1 if uri.startswith(("http://", "https://")) else 0)


class EpochLogger(Callback):
    """`on_checkpoint_saved` callback: logs each epoch once its last checkpoint is on disk, off the training path.

    A call only records the newest history and returns; a sender thread of its own logs every epoch
    after `logged_up_to` in one `log_batch` (step = epoch, in epoch order), so a resumed run fills any
    gap the dead process left and never repeats a step. While the tracking store is unreachable the
    epochs wait in that buffer (the history itself: nothing is dropped or reordered, whatever the
    outage's length) and the sender retries with back-off, logging each failure; training never
    waits for it. `close()` flushes, bounded by `$MEDTL_INFRA_PATIENCE_S`.

    With `owns_claim`, each batch is sent only after it returns True; once it returns False the
    logger stops for good (`claim_lost` is set): another worker now owns the run. A failing check
    (the claims database is away too) waits like a failing send.
    With `upload_every` > 0 the recipe's `checkpoints` are also uploaded (to the run's
    `checkpoints/` artifacts) every that many epochs, so another machine can resume the run: the
    newest last checkpoint (one upload after an outage, however many were due), and the best one
    whenever it improved since its previous upload. A request that arrives while an upload is in
    flight is kept for the next.
    """

    def __init__(
        self,
        client: MlflowClient,
        run_id: str,
        checkpoints: CheckpointPaths,
        logged_up_to: int = 0,
        upload_every: int = 0,
        owns_claim: Callable[[], bool] | None = None,
    ) -> None:
        self.client = client
        self.run_id = run_id
        self.checkpoints = checkpoints
        self.logged_up_to = logged_up_to
        self.upload_every = upload_every
        self.owns_claim = owns_claim
        self.claim_lost = threading.Event()
        self.error: BaseException | None = None
        self.last_outage: BaseException | None = None  # the latest connection error, kept as the cause
        self._history: list[dict[str, float]] = []
        self._queued_up_to = logged_up_to
        # Counters, so that a request arriving during an upload is never cleared by that upload.
        self._uploads_due = self._uploads_done = 0
        self._best_changes = self._best_sent = 0
        self._stamps: dict[int, int] = {}
        self._closing = False
        self._abandoned = False  # close() gave up: the sender stops at its next wake-up
        self._kick = False
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def on_checkpoint_saved(self, epoch: int, history: list[dict[str, float]], improved: bool) -> None:
        self(epoch, history, improved)

    def __call__(self, epoch: int, history: list[dict[str, float]], improved: bool) -> None:
        with self._cond:
            now = int(time.time() * 1000)
            for entry in history:
                self._stamps.setdefault(int(entry["epoch"]), now)
            self._history = history
            self._queued_up_to = max(self._queued_up_to, epoch)
            self._best_changes += int(improved)
            if self.upload_every and epoch % self.upload_every == 0:
                self._uploads_due += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._send_loop, name="medtl-epoch-logger", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    @property
    def pending(self) -> bool:
        """Whether epochs or uploads are still waiting to be sent."""
        with self._cond:
            return self._has_work()

    def _has_work(self) -> bool:
        return self._queued_up_to > self.logged_up_to or self._uploads_due > self._uploads_done

    def _send_loop(self) -> None:
        backoff = Backoff(cap_s=15.0)  # after a long outage the buffer goes out within 15 s
        while True:
            with self._cond:
                while not self._closing and not self._has_work():
                    self._cond.wait()
                if self._abandoned or not self._has_work():
                    return  # closing, nothing left (or given up on)
                history, uploads_due, best_changes = self._history, self._uploads_due, self._best_changes
            try:
                if self.owns_claim is not None and not self.owns_claim():
                    log.warning("run %s belongs to another worker now; this worker logs nothing more", self.run_id)
                    self.claim_lost.set()
                    return
                self._send(history, uploads_due, best_changes)
                backoff.reset()
            except Exception as exc:
                if not is_connection_error(exc):
                    self.error = exc
                    log.warning("epoch logging for run %s stopped: %s", self.run_id, mask_url(str(exc))[:300])
                    return
                self.last_outage = exc
                wait = backoff.next()
                log.warning(
                    "tracking store unreachable (%s); epochs up to %d kept locally, retrying in %.0f s",
                    one_line(exc),
                    self._queued_up_to,
                    wait,
                )
                retry_at = time.monotonic() + wait
                with self._cond:  # new epochs only join the buffer; close() asks for one retry at once
                    while not (self._kick or self._abandoned) and time.monotonic() < retry_at:
                        self._cond.wait(timeout=retry_at - time.monotonic())
                    self._kick = False

    def _send(self, history: list[dict[str, float]], uploads_due: int, best_changes: int) -> None:
        # Stable timestamps: a batch resent after a lost reply is deduplicated by the store.
        batch = [
            Metric(key, float(value), self._stamps.get(int(entry["epoch"]), 0), int(entry["epoch"]))
            for entry in history
            if entry["epoch"] > self.logged_up_to
            for key, value in entry.items()
            if key != "epoch"
        ]
        for start in range(0, len(batch), METRIC_BATCH):
            self.client.log_batch(self.run_id, metrics=batch[start : start + METRIC_BATCH])
        if history:
            self.logged_up_to = max(self.logged_up_to, int(history[-1]["epoch"]))
        if uploads_due > self._uploads_done:
            if best_changes > self._best_sent and self.checkpoints.best.exists():
                self.client.log_artifact(self.run_id, str(self.checkpoints.best), S.CHECKPOINT_ARTIFACTS)
            self.client.log_artifact(self.run_id, str(self.checkpoints.last), S.CHECKPOINT_ARTIFACTS)
            with self._cond:
                self._uploads_done, self._best_sent = uploads_due, best_changes

    def close(self, timeout_s: float | None = None, *, drop: bool = False) -> None:
        """Flush what is buffered and stop the sender; `drop` stops without sending (or raising).

        Raises:
            TrackingUnavailable: the buffer could not be sent within `timeout_s` (default
                `infra_patience_s()`); the epochs stay in the last checkpoint's history for a resume.
            Exception: a non-connection error the sender met (e.g. a rejected metric).
        """
        with self._cond:
            self._closing = True
            self._kick = True
            if drop:
                self._queued_up_to = self.logged_up_to
                self._uploads_done = self._uploads_due
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(infra_patience_s() if timeout_s is None else timeout_s)
            if thread.is_alive() and drop:  # a send in flight is the store's to finish or time out
                with self._cond:
                    self._abandoned = True
                return
            if thread.is_alive():
                with self._cond:
                    self._abandoned = True
                    self._cond.notify_all()
                raise TrackingUnavailable(
                    f"epochs {self.logged_up_to + 1}..{self._queued_up_to} of run {self.run_id} could not be "
                    "logged: tracking store unreachable"
                ) from self.last_outage
        if self.error is not None and not drop:
            raise self.error
