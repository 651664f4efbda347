"""The client helpers: bounded retries on connection errors only, experiments with their kind and artifacts."""

from __future__ import annotations

import time

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from medtl.mlops.retry import is_connection_error
from medtl.mlops.tracking import client as T
from medtl.training import schema as S


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

    assert is_connection_error(sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection")))
    assert is_connection_error(MlflowException("API request failed: Max retries exceeded with url"))
    wrapped = RuntimeError("outer")
    wrapped.__cause__ = ConnectionRefusedError()
    assert is_connection_error(wrapped)
    assert not is_connection_error(MlflowException("INVALID_PARAMETER_VALUE: param changed"))
    assert not is_connection_error(ValueError("bad value"))


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
    assert experiment.tags[S.EXPERIMENT_KIND_TAG] == "custom_model_development"
    assert "mlartifacts" in experiment.artifact_location
    older = client.create_experiment("medtl/older")  # created before the tag existed
    assert T.get_or_create_experiment(client, "medtl/older", tracking_uri) == older
    assert client.get_experiment(older).tags[S.EXPERIMENT_KIND_TAG] == "custom_model_development"


def test_finished_runs_are_the_studys_finished_finetuning_runs(tracking_uri):
    client = MlflowClient(tracking_uri)
    experiment_id = T.get_or_create_experiment(client, S.study_experiment("seen"), tracking_uri)

    def run(key: str, stage: S.Stage, status: str) -> str:
        run_id = client.create_run(experiment_id, tags={S.STAGE_TAG: stage.value, S.RUN_KEY_TAG: key}).info.run_id
        T.end_run(client, run_id, status)
        return run_id

    done = run("a", S.Stage.FINETUNE, "FINISHED")
    run("b", S.Stage.FINETUNE, "FAILED")
    run("c", S.Stage.SWEEP, "FINISHED")
    assert [r.info.run_id for r in T.finished_runs(client, "seen")] == [done]
    assert [r.info.run_id for r in T.finished_runs(client, "seen", run_key="a")] == [done]
    assert list(T.finished_runs(client, "seen", run_key="b")) == []
    assert list(T.finished_runs(client, "never-run")) == []
