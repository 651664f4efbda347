"""MLflow tracking: the store's location, the schema's names, and the callbacks the loop is given."""

from __future__ import annotations

import functools
import getpass
import logging
import math
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from medtl.knobs import checkpoint_upload_every, env_seconds, infra_patience_s
from medtl.mlops.retry import Backoff, is_connection_error, one_line, retry
from medtl.provenance import git_commit
from medtl.redact import mask_url
from medtl.training.loop import Callback, FitState
from medtl.training.schema import ARM_TAG as ARM_TAG

# The schema's names, re-exported for mlops callers; defined once in medtl.training.schema.
from medtl.training.schema import DEFAULT_DB as DEFAULT_DB
from medtl.training.schema import ENV_TAG_PREFIX, study_experiment
from medtl.training.schema import EXPERIMENT_KIND as EXPERIMENT_KIND
from medtl.training.schema import EXPERIMENT_KIND_TAG as EXPERIMENT_KIND_TAG
from medtl.training.schema import FAILURE_TAG as FAILURE_TAG
from medtl.training.schema import GIT_COMMIT_TAG as GIT_COMMIT_TAG
from medtl.training.schema import NOTE_TAG as NOTE_TAG
from medtl.training.schema import PARENT_TAG as PARENT_TAG
from medtl.training.schema import RUN_KEY_TAG as RUN_KEY_TAG
from medtl.training.schema import STAGE_TAG as STAGE_TAG
from medtl.training.schema import STUDY_TAG as STUDY_TAG
from medtl.training.schema import resolve_tracking_uri as resolve_tracking_uri

log = logging.getLogger(__name__)

SYSTEM_METRICS_ENV = "MEDTL_SYSTEM_METRICS_S"
_BATCH = 100  # MLflow's per-call limit for params
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
    experiment = client.get_experiment_by_name(study_experiment(study_name))
    if experiment is None:
        return
    wanted = f"tags.`{STAGE_TAG}` = 'finetune' and attributes.status = 'FINISHED'"
    if run_key is not None:
        wanted += f" and tags.`{RUN_KEY_TAG}` = '{run_key}'"
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
        if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
            try:
                client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
            except Exception as exc:  # a label, never a reason to stop
                log.warning("could not tag experiment %s with its kind: %s", name, exc)
        return experiment.experiment_id
    root = artifact_root_for(tracking_uri)
    location = f"{root}/{name.replace('/', '_')}" if root else None
    try:
        return client.create_experiment(name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    except Exception:  # another worker created it first
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    items = [Param(k, mask_url(str(v))[:6000]) for k, v in sorted(params.items())]
    for start in range(0, len(items), _BATCH):
        chunk = items[start : start + _BATCH]
        retrying(lambda chunk=chunk: client.log_batch(run_id, params=chunk), "logging params")


def log_metrics(client: MlflowClient, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
    for start in range(0, len(batch), 1000):
        chunk = batch[start : start + 1000]
        retrying(lambda chunk=chunk: client.log_batch(run_id, metrics=chunk), "logging metrics")


def source_tags(commit: str | None = None) -> dict[str, str]:
    """MLflow's own source tags (the UI's Source, commit and user fields) for a run started here."""
    # The program and its subcommand (`medtl worker`), never a path argument: folders can name people.
    command = [a for a in sys.argv[1:2] if "/" not in a and "\\" not in a and not a.startswith("-")]
    entry = [Path(sys.argv[0]).name or "python", *command] if sys.argv else ["python"]
    tags = {
        "mlflow.source.name": " ".join(entry),
        "mlflow.source.type": "LOCAL",
        "mlflow.user": _user(),
    }
    commit = commit or git_commit()
    if commit != "unknown":
        tags["mlflow.source.git.commit"] = commit
    return tags


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return "unknown"


def environment_tags(device: str = "cpu") -> dict[str, str]:
    """What a result depends on beyond the code: medtl, torch, torchvision, CUDA, cuDNN, the device.

    Tags (not params): a resumed attempt on another machine records where it ran last.
    """
    import torch
    import torchvision

    try:
        from importlib.metadata import version

        medtl_version = version("medtl")
    except Exception:
        medtl_version = "unknown"
    cuda = torch.version.cuda or "none"
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    if device.startswith("cuda") and torch.cuda.is_available():
        name = torch.cuda.get_device_name(torch.device(device))
    else:
        name = _cpu_name()
    env = {
        "medtl": medtl_version,
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "cuda": cuda,  # the CUDA torch was built with
        "cuda_available": str(torch.cuda.is_available()),
        "cudnn": str(cudnn) if cudnn else "none",
        "device_name": name,
        "host_os": f"{platform.system()} {platform.release()}",
    }
    return {f"{ENV_TAG_PREFIX}{key}": value for key, value in env.items()}


@functools.lru_cache(maxsize=1)
def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def system_metrics_interval_s() -> float:
    """Seconds between system-metrics samples: `$MEDTL_SYSTEM_METRICS_S`, default 10; 0 turns them off.

    Raises:
        UserError: the value is not a non-negative number.
    """
    return env_seconds(SYSTEM_METRICS_ENV, 10.0)


class SystemMetrics:
    """MLflow's system metrics (CPU, memory, disk, network; GPU where present) for one run.

    MLflow's monitor samples on a thread and logs `system/*` metrics every interval; a run shorter
    than one interval would get nothing, so `stop()` also logs what was sampled since the last step.
    Starting and stopping cost a few milliseconds; never a reason to fail a run.
    """

    def __init__(self, run_id: str, tracking_uri: str, *, resume: bool = False) -> None:
        self.monitor: Any = None
        interval = system_metrics_interval_s()
        if interval <= 0:
            return
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
            self.monitor = SystemMetricsMonitor(
                run_id, sampling_interval=interval, resume_logging=resume, tracking_uri=tracking_uri
            )
            self.monitor.start()
        except Exception as exc:
            log.warning("system metrics not recorded: %s", exc)
            self.monitor = None

    def stop(self, flush: bool = True) -> None:
        """Stop sampling; with `flush`, log what was sampled since the last step."""
        monitor, self.monitor = self.monitor, None
        if monitor is None or monitor._process is None:
            return
        try:
            # The sampler wakes, reads the run once and exits; the last samples are sent meanwhile.
            monitor._shutdown_event.set()
            if flush:
                sampled = monitor.aggregate_metrics() if any(m._metrics for m in monitor.monitors) else {}
                if sampled:
                    monitor.publish_metrics(sampled)
                monitor.mlflow_logger.flush()
            monitor._process.join(timeout=10)
            monitor._process = None
        except Exception as exc:
            log.warning("system metrics could not be flushed: %s", exc)


class EpochLogger(Callback):
    """`on_checkpoint_saved` callback: logs each epoch once its `last.pt` is on disk, off the training path.

    A call only records the newest history and returns; a sender thread of its own logs every epoch
    after `logged_up_to` in one `log_batch` (step = epoch, in epoch order), so a resumed run fills any
    gap the dead process left and never repeats a step. While the tracking store is unreachable the
    epochs wait in that buffer (the history itself: nothing is dropped or reordered, whatever the
    outage's length) and the sender retries with back-off, logging each failure; training never
    waits for it. `close()` flushes, bounded by `$MEDTL_INFRA_PATIENCE_S`.

    With `owns_claim`, each batch is sent only after it returns True; once it returns False the
    logger stops for good (`claim_lost` is set): another worker now owns the run. A failing check
    (the claims database is away too) waits like a failing send.
    With `upload_every` > 0 the checkpoints are also uploaded every that many epochs (the newest
    `last.pt` only, after an outage), so another machine can resume the run.
    """

    def __init__(
        self,
        client: MlflowClient,
        run_id: str,
        checkpoint_dir: Path,
        logged_up_to: int = 0,
        upload_every: int = 0,
        owns_claim: Callable[[], bool] | None = None,
    ) -> None:
        self.client = client
        self.run_id = run_id
        self.checkpoint_dir = Path(checkpoint_dir)
        self.logged_up_to = logged_up_to
        self.upload_every = upload_every
        self.owns_claim = owns_claim
        self.claim_lost = threading.Event()
        self.error: BaseException | None = None
        self.last_outage: BaseException | None = None  # the latest connection error, kept as the cause
        self._history: list[dict[str, float]] = []
        self._queued_up_to = logged_up_to
        self._upload_last = False
        self._upload_best = False
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
            if self.upload_every and epoch % self.upload_every == 0:
                self._upload_last = True
                self._upload_best = self._upload_best or improved
            if self._thread is None:
                self._thread = threading.Thread(target=self._send_loop, name="medtl-epoch-logger", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    @property
    def pending(self) -> bool:
        """Whether epochs or uploads are still waiting to be sent."""
        with self._cond:
            return self._queued_up_to > self.logged_up_to or self._upload_last

    def _send_loop(self) -> None:
        backoff = Backoff(cap_s=15.0)  # after a long outage the buffer goes out within 15 s
        while True:
            with self._cond:
                while not self._closing and not (self._queued_up_to > self.logged_up_to or self._upload_last):
                    self._cond.wait()
                if self._abandoned or not (self._queued_up_to > self.logged_up_to or self._upload_last):
                    return  # closing, nothing left (or given up on)
                history, upload_last, upload_best = self._history, self._upload_last, self._upload_best
            try:
                if self.owns_claim is not None and not self.owns_claim():
                    log.warning("run %s belongs to another worker now; this worker logs nothing more", self.run_id)
                    self.claim_lost.set()
                    return
                self._send(history, upload_last, upload_best)
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

    def _send(self, history: list[dict[str, float]], upload_last: bool, upload_best: bool) -> None:
        # Stable timestamps: a batch resent after a lost reply is deduplicated by the store.
        batch = [
            Metric(key, float(value), self._stamps.get(int(entry["epoch"]), 0), int(entry["epoch"]))
            for entry in history
            if entry["epoch"] > self.logged_up_to
            for key, value in entry.items()
            if key != "epoch"
        ]
        for start in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[start : start + 1000])
        if history:
            self.logged_up_to = max(self.logged_up_to, int(history[-1]["epoch"]))
        if upload_last:
            if upload_best and (self.checkpoint_dir / "best.pt").exists():
                self.client.log_artifact(self.run_id, str(self.checkpoint_dir / "best.pt"), "checkpoints")
            self.client.log_artifact(self.run_id, str(self.checkpoint_dir / "last.pt"), "checkpoints")
            with self._cond:
                self._upload_last = self._upload_best = False

    def close(self, timeout_s: float | None = None, *, drop: bool = False) -> None:
        """Flush what is buffered and stop the sender; `drop` stops without sending (or raising).

        Raises:
            TrackingUnavailable: the buffer could not be sent within `timeout_s` (default
                `infra_patience_s()`); the epochs stay in `last.pt`'s history for a resume.
            Exception: a non-connection error the sender met (e.g. a rejected metric).
        """
        with self._cond:
            self._closing = True
            self._kick = True
            if drop:
                self._queued_up_to = self.logged_up_to
                self._upload_last = False
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


def upload_every_default(uri: str) -> int:
    """Mid-run checkpoint uploads: every epoch to a remote server (resume on another machine), never
    to the local default store (the work folder on this machine is enough). `$MEDTL_CHECKPOINT_UPLOAD_EVERY`."""
    return checkpoint_upload_every(1 if uri.startswith(("http://", "https://")) else 0)


class EmissionsCallback(Callback):
    """codecarbon's offline tracker around the fit: energy and CO2-equivalent, no network.

    The country (ISO 3166 alpha-3) sets the grid's carbon intensity: `$MEDTL_COUNTRY_ISO_CODE`,
    default `HRV` (Croatia, where the study ran) so demo figures compare with the paper's.
    """

    def __init__(self, country_iso_code: str | None = None) -> None:
        self.country = country_iso_code or os.environ.get("MEDTL_COUNTRY_ISO_CODE", "HRV")
        self.tracker: Any = None
        self.emissions_kg = math.nan
        self.energy_kwh = math.nan

    def on_fit_start(self, state: FitState) -> None:
        try:
            from codecarbon import OfflineEmissionsTracker

            logging.getLogger("codecarbon").setLevel(logging.ERROR)
            self.tracker = OfflineEmissionsTracker(
                country_iso_code=self.country,
                save_to_file=False,
                log_level="error",
                tracking_mode="process",
                measure_power_secs=15,
            )
            self.tracker.start()
        except Exception as exc:  # emissions are a measurement, never a reason to lose a run
            log.warning("codecarbon could not start (%s); emissions not measured", exc)
            self.tracker = None

    def energy_so_far(self) -> float:
        """kWh measured so far in this fit (codecarbon measures every 15 s); NaN if not measuring."""
        try:
            return float(self.tracker._total_energy.kWh) if self.tracker is not None else math.nan
        except Exception:  # codecarbon internals; a measurement, never a failure
            return math.nan

    def emissions_so_far(self) -> float:
        """kg CO2-eq of the energy measured so far in this fit; NaN if not measuring."""
        try:
            if self.tracker is None:
                return math.nan
            self.tracker._update_emissions()
            return float(self.tracker._total_emissions)
        except Exception:
            return math.nan

    def on_fit_abort(self, state: FitState, error: BaseException) -> None:
        self.on_fit_end(state)

    def on_fit_end(self, state: FitState) -> None:
        if self.tracker is None:
            return
        try:
            emissions = self.tracker.stop()
            self.emissions_kg = float(emissions or 0.0)
            data = getattr(self.tracker, "final_emissions_data", None)
            self.energy_kwh = float(getattr(data, "energy_consumed", math.nan))
        except Exception as exc:
            log.warning("codecarbon could not stop cleanly (%s)", exc)
        self.tracker = None


def end_run(client: MlflowClient, run_id: str, status: str, reason: str | None = None) -> None:
    if reason:
        client.set_tag(run_id, FAILURE_TAG, mask_url(reason)[:5000])
    client.set_terminated(run_id, status=status)


def set_tags(client: MlflowClient, run_id: str, tags: dict[str, str]) -> None:
    client.log_batch(run_id, tags=[RunTag(k, mask_url(str(v))) for k, v in tags.items()])
