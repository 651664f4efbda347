"""The tracking store going away: bounded retries, epochs buffered in order, training never waits."""

from __future__ import annotations

import threading
import time

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from medtl.mlops.tracking import client as T


class _Flaky:
    """An MlflowClient whose writes fail with a connection error while `down` is set."""

    def __init__(self, client: MlflowClient) -> None:
        self.client = client
        self.down = threading.Event()
        self.hang = threading.Event()  # set: a request that never returns (a frozen server)
        self.failures = 0

    def log_batch(self, *args, **kwargs):
        while self.hang.is_set():
            time.sleep(0.05)
        if self.down.is_set():
            self.failures += 1
            raise MlflowException("API request to http://127.0.0.1:5000 failed: Max retries exceeded (Connection refused)")
        return self.client.log_batch(*args, **kwargs)

    def log_artifact(self, *args, **kwargs):
        return self.client.log_artifact(*args, **kwargs)


def _run(tracking_uri) -> tuple[MlflowClient, str]:
    client = MlflowClient(tracking_uri)
    experiment_id = T.get_or_create_experiment(client, "medtl/faults", tracking_uri)
    return client, client.create_run(experiment_id).info.run_id


def _epoch(n: int) -> dict[str, float]:
    return {"epoch": n, "train_loss": 1.0 / n, "val_loss": 2.0 / n}


def test_epochs_wait_out_an_outage_in_order_and_training_never_blocks(tracking_uri, tmp_path):
    client, run_id = _run(tracking_uri)
    flaky = _Flaky(client)
    logger = T.EpochLogger(flaky, run_id, tmp_path)  # type: ignore[arg-type]
    history = []
    flaky.down.set()
    for n in range(1, 4):  # three epochs end while the server refuses connections
        history.append(_epoch(n))
        logger(n, [dict(h) for h in history], improved=True)
        time.sleep(0.3)
    assert flaky.failures >= 1 and logger.pending
    assert client.get_metric_history(run_id, "val_loss") == []
    flaky.hang.set()  # then two more while a request hangs: handing over must not wait for it
    handed = threading.Thread(
        target=lambda: [logger(n, [dict(h) for h in history + [_epoch(4), _epoch(5)][: n - 3]], True) for n in (4, 5)]
    )
    handed.start()
    handed.join(timeout=10)
    assert not handed.is_alive(), "the training thread waited for the tracking store"
    history += [_epoch(4), _epoch(5)]
    flaky.hang.clear()
    flaky.down.clear()
    history.append(_epoch(6))
    logger(6, [dict(h) for h in history], improved=False)
    logger.close(timeout_s=60)
    for key in ("train_loss", "val_loss"):
        steps = [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
        assert sorted(steps) == [(n, _epoch(n)[key]) for n in range(1, 7)], key  # each once, none lost


def test_close_is_bounded_when_the_server_stays_away(tracking_uri, tmp_path):
    client, run_id = _run(tracking_uri)
    flaky = _Flaky(client)
    flaky.down.set()
    logger = T.EpochLogger(flaky, run_id, tmp_path)  # type: ignore[arg-type]
    logger(1, [_epoch(1)], improved=True)
    started = time.perf_counter()
    with pytest.raises(T.TrackingUnavailable, match="epochs 1..1") as unavailable:
        logger.close(timeout_s=1.5)
    assert T.is_connection_error(unavailable.value)  # a sweep sees an infrastructure fault, not the point's
    assert time.perf_counter() - started < 5


def test_a_rejected_batch_is_an_error_not_a_retry(tracking_uri, tmp_path):
    client, run_id = _run(tracking_uri)
    logger = T.EpochLogger(client, "no-such-run", tmp_path)
    logger(1, [_epoch(1)], improved=True)
    with pytest.raises(MlflowException):
        logger.close(timeout_s=30)


def test_owns_claim_gates_every_batch(tracking_uri, tmp_path):
    client, run_id = _run(tracking_uri)
    owned = {"yes": True}
    logger = T.EpochLogger(client, run_id, tmp_path, owns_claim=lambda: owned["yes"])
    logger(1, [_epoch(1)], improved=True)
    deadline = time.monotonic() + 10
    while logger.pending and time.monotonic() < deadline:
        time.sleep(0.05)
    owned["yes"] = False
    logger(2, [_epoch(1), _epoch(2)], improved=False)
    logger.close(timeout_s=10)
    assert logger.claim_lost.is_set()
    assert [m.step for m in client.get_metric_history(run_id, "val_loss")] == [1]


def test_retrying_backs_off_then_gives_up_within_its_budget(caplog):
    calls = []

    def unreachable():
        calls.append(time.monotonic())
        raise ConnectionError("connection refused")

    with pytest.raises(T.TrackingUnavailable, match="creating the run: tracking store unreachable"):
        T.retrying(unreachable, "creating the run", budget_s=2.5)
    assert 2 <= len(calls) <= 4
    assert calls[1] - calls[0] >= 0.45  # a back-off (1 s, jittered to 0.5-1.5 s), not a spin
    assert "retrying in" in caplog.text

    def wrong():
        raise MlflowException("RESOURCE_DOES_NOT_EXIST: run xyz not found")

    started = time.monotonic()
    with pytest.raises(MlflowException):
        T.retrying(wrong, "reading the run", budget_s=30)
    assert time.monotonic() - started < 1  # not a connection error: no retry


def test_connection_errors_are_told_apart():
    import sqlalchemy.exc

    assert T.is_connection_error(sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection")))
    assert T.is_connection_error(MlflowException("API request failed: Max retries exceeded with url"))
    wrapped = RuntimeError("outer")
    wrapped.__cause__ = ConnectionRefusedError()
    assert T.is_connection_error(wrapped)
    assert not T.is_connection_error(MlflowException("INVALID_PARAMETER_VALUE: param changed"))
    assert not T.is_connection_error(ValueError("bad value"))


def test_bad_retry_budget_is_one_clear_error(monkeypatch):
    from medtl.errors import UserError
    from medtl.knobs import infra_patience_s

    monkeypatch.setenv("MEDTL_INFRA_PATIENCE_S", "-3")
    with pytest.raises(UserError, match="MEDTL_INFRA_PATIENCE_S must be a number of seconds >= 0"):
        infra_patience_s()


def test_experiments_carry_their_kind_and_artifacts_beside_the_store(tracking_uri, tmp_path):
    client = MlflowClient(tracking_uri)
    experiment_id = T.get_or_create_experiment(client, "medtl/kinds", tracking_uri)
    experiment = client.get_experiment(experiment_id)
    assert experiment.tags[T.EXPERIMENT_KIND_TAG] == "custom_model_development"
    assert "mlartifacts" in experiment.artifact_location
    older = client.create_experiment("medtl/older")  # created before the tag existed
    assert T.get_or_create_experiment(client, "medtl/older", tracking_uri) == older
    assert client.get_experiment(older).tags[T.EXPERIMENT_KIND_TAG] == "custom_model_development"


def test_system_metrics_reach_even_a_short_run(tracking_uri):
    client, run_id = _run(tracking_uri)
    monitor = T.SystemMetrics(run_id, tracking_uri)  # default interval 10 s: longer than this "run"
    time.sleep(0.2)
    monitor.stop()
    keys = set(client.get_run(run_id).data.metrics)
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= keys


def test_system_metrics_can_be_turned_off_and_refuse_bad_values(tracking_uri, monkeypatch):
    from medtl.errors import UserError

    client, run_id = _run(tracking_uri)
    monkeypatch.setenv("MEDTL_SYSTEM_METRICS_S", "0")
    T.SystemMetrics(run_id, tracking_uri).stop()
    assert not any(k.startswith("system/") for k in client.get_run(run_id).data.metrics)
    monkeypatch.setenv("MEDTL_SYSTEM_METRICS_S", "often")
    with pytest.raises(UserError, match="MEDTL_SYSTEM_METRICS_S"):
        T.SystemMetrics(run_id, tracking_uri)


def test_source_tags_name_the_command_never_a_path(monkeypatch):
    monkeypatch.setattr("sys.argv", ["/opt/venv/bin/medtl", "worker", "--study", "x.yaml"])
    assert T.source_tags()["mlflow.source.name"] == "medtl worker"
    monkeypatch.setattr("sys.argv", ["/opt/venv/bin/medtl", "/data/Doe_Jane/scans"])
    tags = T.source_tags()
    assert tags["mlflow.source.name"] == "medtl" and "Doe" not in str(tags)
    assert tags["mlflow.user"] and tags["mlflow.source.type"] == "LOCAL"
