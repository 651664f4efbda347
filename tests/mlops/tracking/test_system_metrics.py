"""MLflow's system metrics for one run: even a short run gets a sample; the interval knob is validated."""

from __future__ import annotations

import time

import pytest

from medtl.mlops.tracking.system_metrics import SystemMetrics


def test_system_metrics_reach_even_a_short_run(new_run, tracking_uri):
    client, run_id = new_run
    monitor = SystemMetrics(run_id, tracking_uri)  # default interval 10 s: longer than this "run"
    time.sleep(0.2)
    monitor.stop()
    keys = set(client.get_run(run_id).data.metrics)
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= keys


def test_system_metrics_can_be_turned_off_and_refuse_bad_values(new_run, tracking_uri, monkeypatch):
    from medtl.errors import UserError

    client, run_id = new_run
    monkeypatch.setenv("MEDTL_SYSTEM_METRICS_S", "0")
    SystemMetrics(run_id, tracking_uri).stop()
    assert not any(k.startswith("system/") for k in client.get_run(run_id).data.metrics)
    monkeypatch.setenv("MEDTL_SYSTEM_METRICS_S", "often")
    with pytest.raises(UserError, match="MEDTL_SYSTEM_METRICS_S"):
        SystemMetrics(run_id, tracking_uri)
