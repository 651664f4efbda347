"""MLflow's system metrics (CPU, memory, disk, network; GPU where present) sampled for one run."""

from __future__ import annotations

import logging
from typing import Any

from medtl.knobs import env_seconds

log = logging.getLogger(__name__)

SYSTEM_METRICS_ENV = "MEDTL_SYSTEM_METRICS_S"


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
