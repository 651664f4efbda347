"""The sweep's queue under faults, with a stand-in for the runner (training is tested elsewhere).

Claims carry their first heartbeat and an owner token; infrastructure faults and stop signals put a
point back without spending its retry budget; a worker that lost its claim writes nothing.
"""

from __future__ import annotations

import time

import optuna
import pytest
from mlflow.exceptions import MlflowException
from optuna.trial import TrialState

from medtl.knobs import knobs
from medtl.mlops import retry
from medtl.mlops.cli import main
from medtl.mlops.retry import is_connection_error
from medtl.mlops.signals import StopRequested, clear_stop_request
from medtl.mlops.sweeps import queue as Q
from medtl.mlops.sweeps import worker as W
from medtl.mlops.sweeps.study import load_study
from medtl.mlops.tracking.runner import RunOutcome

OFFLINE = MlflowException("API request to http://127.0.0.1:9/api/2.0/mlflow/runs/create failed with exception ConnectionError")


@pytest.fixture
def queue(enqueued, monkeypatch, tracking_uri):
    """A two-point study enqueued in a fresh SQLite storage; 1 s heartbeat, 2 s grace, one retry."""
    monkeypatch.setenv("MEDTL_MAX_REQUEUES", "1")
    path, _, url, optuna_study = enqueued("queue")
    yield path, url, optuna_study
    clear_stop_request()


def _states(optuna_study) -> list[str]:
    return sorted(t.state.name for t in optuna_study.get_trials(deepcopy=False))


def _work(path, url, tracking_uri):
    return W.work(str(path), url, tracking_uri, progress=False)


def test_a_claim_writes_its_first_heartbeat_and_owner_in_the_same_transaction(queue):
    _, _, optuna_study = queue
    trial_id = Q.claim_next(optuna_study, "me")
    assert Q.trial_owner(optuna_study, trial_id) == (TrialState.RUNNING, "me")
    rdb = Q._rdb(optuna_study)
    time.sleep(3.5)  # past the 2 s grace (SQLite keeps whole seconds) with no further beat
    assert rdb._get_stale_trial_ids(optuna_study._study_id) == [trial_id]


def test_an_error_inside_the_claim_leaves_the_trial_waiting(queue, monkeypatch):
    _, _, optuna_study = queue
    from optuna.storages._rdb import models

    def broken(*args, **kwargs):
        raise OSError("disk went away mid-claim")

    monkeypatch.setattr(models, "TrialHeartbeatModel", broken)
    with pytest.raises(OSError):
        Q.claim_next(optuna_study, "me")
    assert _states(optuna_study) == ["WAITING", "WAITING"]


def test_a_lost_claim_is_requeued_uncharged_and_the_loser_writes_nothing(queue):
    _, _, optuna_study = queue
    trial_id = Q.claim_next(optuna_study, "frozen-worker")
    time.sleep(3.5)  # the frozen worker misses its beats
    Q.fail_stale(optuna_study, knobs())  # what the next worker does before it claims
    claim = Q.Claim(optuna_study, trial_id, "frozen-worker", knobs())
    assert not claim.owns()
    assert not Q.finish(optuna_study, trial_id, "frozen-worker", TrialState.COMPLETE, 0.5)
    assert not Q.put_back(optuna_study, trial_id, "frozen-worker", "woke up")
    trials = optuna_study.get_trials(deepcopy=False)
    assert sorted(t.state.name for t in trials) == ["FAIL", "WAITING", "WAITING"]
    copy = next(t for t in trials if t.user_attrs.get("lost") == 1)
    old = next(t for t in trials if t._trial_id == trial_id)
    assert copy.user_attrs["run_key"] == old.user_attrs["run_key"] and copy.state is TrialState.WAITING
    assert not Q.charged_failures(trials)  # the point's retry budget is untouched
    study = load_study(queue[0])
    assert Q.enqueue_missing(study.specs, optuna_study, set()) == 0  # and it is not enqueued twice


def test_infrastructure_faults_put_the_point_back_without_spending_its_budget(queue, train_with, monkeypatch, tracking_uri):
    path, url, optuna_study = queue
    calls = []

    def flaky_check(client, study, key):
        calls.append(("check", key))
        if len(calls) == 1:  # the claim → start window: MLflow unreachable
            raise OFFLINE
        return set()

    def runner(spec, **kwargs):
        calls.append(("run", spec.run_key))
        if sum(1 for c in calls if c[0] == "run") == 1:  # mid-run: the server is away
            raise RuntimeError("epoch logging gave up") from ConnectionRefusedError(111, "Connection refused")
        assert kwargs["owns_claim"]() is True
        return RunOutcome(f"run-{spec.run_key}", "FINISHED", {"best_val_loss": 0.25})

    train_with(runner, finished=flaky_check)
    monkeypatch.setattr(retry, "MAX_BACKOFF_S", 0.2)
    stats = _work(path, url, tracking_uri)
    trials = optuna_study.get_trials(deepcopy=False)
    assert (stats.done, stats.failed, stats.requeued) == (2, 0, 2)
    assert sorted(t.state.name for t in trials) == ["COMPLETE", "COMPLETE"]  # no FAIL, no copies
    assert sum(t.user_attrs.get("requeued", 0) for t in trials) == 2
    assert all("attempt" not in t.user_attrs for t in trials)
    assert all(t.values == [0.25] for t in trials)


def test_a_point_that_fails_on_its_own_spends_its_budget_once(queue, train_with, tracking_uri):
    path, url, optuna_study = queue

    def runner(spec, **kwargs):
        raise ValueError("loss is NaN at step 1")

    train_with(runner)
    stats = _work(path, url, tracking_uri)
    trials = optuna_study.get_trials(deepcopy=False)
    assert stats.failed == 4  # 2 points × (1 try + MEDTL_MAX_REQUEUES=1)
    assert [t.state.name for t in trials] == ["FAIL"] * 4
    assert all(t.user_attrs["fail_reason"] == "ValueError: loss is NaN at step 1" for t in trials)
    assert sorted(Q.charged_failures(trials).values()) == [2, 2]


def test_a_worker_that_lost_its_claim_mid_run_tells_optuna_nothing(queue, train_with, tracking_uri):
    path, url, optuna_study = queue
    runs = []

    def runner(spec, **kwargs):
        runs.append(spec.run_key)
        if len(runs) == 1:  # another worker took the point over while this one was frozen
            trial = next(t for t in optuna_study.get_trials(deepcopy=False) if t.state is TrialState.RUNNING)
            optuna_study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            Q._requeue_lost(optuna_study, optuna_study._storage.get_trial(trial._trial_id))
            raise RuntimeError("claim lost before logging epoch 2")
        return RunOutcome("r", "FINISHED", {"best_val_loss": 1.0})

    train_with(runner)
    stats = _work(path, url, tracking_uri)
    assert (stats.lost, stats.done, stats.failed) == (1, 2, 0)
    trials = optuna_study.get_trials(deepcopy=False)
    assert sorted(t.state.name for t in trials) == ["COMPLETE", "COMPLETE", "FAIL"]
    failed = next(t for t in trials if t.state is TrialState.FAIL)
    assert "fail_reason" not in failed.user_attrs  # the loser wrote nothing to the trial


def test_a_stop_signal_puts_the_point_back_and_reaches_the_caller(queue, train_with, tracking_uri):
    path, url, optuna_study = queue

    def runner(spec, **kwargs):
        raise StopRequested("SIGTERM")

    train_with(runner)
    with pytest.raises(StopRequested):
        _work(path, url, tracking_uri)
    trials = optuna_study.get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["WAITING", "WAITING"]
    assert [t.user_attrs.get("requeue_reason") for t in trials] == ["worker stopped by SIGTERM", None]


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"MEDTL_HEARTBEAT_S": "30", "MEDTL_GRACE_S": "30"}, "MEDTL_GRACE_S (30 s) must be longer than MEDTL_HEARTBEAT_S (30 s)"),
        ({"MEDTL_MAX_REQUEUES": "-1"}, "MEDTL_MAX_REQUEUES must be 0 or more, got -1"),
        ({"MEDTL_MAX_RETRIES": "-1"}, "MEDTL_MAX_RETRIES must be 0 or more, got -1"),  # the older name, still read
        ({"MEDTL_HEARTBEAT_S": "0.5"}, "MEDTL_HEARTBEAT_S must be a whole number, got '0.5'"),
    ],
)
@pytest.mark.parametrize("command", ["sweep", "worker"])
def test_bad_knobs_are_one_line_and_exit_2(tmp_path, study_file, monkeypatch, capsys, env, fragment, command):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    path = study_file("queue")
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    assert main([command, "--study", str(path), "--storage", storage]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0], err
    assert not (tmp_path / "optuna.db").exists() and not (tmp_path / "mlflow.db").exists()


def test_connection_errors_are_recognised_through_their_causes():
    import sqlalchemy.exc

    locked = sqlalchemy.exc.OperationalError("UPDATE trials", {}, Exception("database is locked"))
    assert is_connection_error(locked)
    assert is_connection_error(OFFLINE)
    assert is_connection_error(optuna.exceptions.StorageInternalError("commit failed"))
    try:
        try:
            raise ConnectionResetError(104, "reset by peer")
        except ConnectionResetError:
            raise RuntimeError("upload failed")  # noqa: B904 - the implicit context is the point
    except RuntimeError as chained:
        assert is_connection_error(chained)
    assert not is_connection_error(ValueError("loss is NaN"))
    assert not is_connection_error(MlflowException("Response body: 'RESOURCE_DOES_NOT_EXIST'"))


def test_sqlite_storage_is_shared_through_wal_and_a_dead_local_workers_point_comes_back(queue):
    _, url, optuna_study = queue
    with Q._rdb(optuna_study).engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    import socket

    trial_id = Q.claim_next(optuna_study, f"{socket.gethostname()}:4242:abcd")
    other = Q.claim_next(optuna_study, f"{socket.gethostname()}:4343:abcd")
    assert Q.reclaim(optuna_study, 4242) == 1  # what the sweep does when its worker 4242 exits non-zero
    assert Q.trial_owner(optuna_study, trial_id) == (TrialState.WAITING, None)
    assert Q.trial_owner(optuna_study, other)[0] is TrialState.RUNNING


def test_a_trial_running_without_any_heartbeat_is_requeued_after_the_grace(queue):
    _, _, optuna_study = queue
    (old, _) = optuna_study.get_trials(deepcopy=False)
    optuna_study._storage.set_trial_state_values(old._trial_id, TrialState.RUNNING)  # an older medtl's claim
    Q.fail_stale(optuna_study, knobs())
    assert Q.trial_owner(optuna_study, old._trial_id)[0] is TrialState.RUNNING  # within the grace: left alone
    time.sleep(3.5)
    Q.fail_stale(optuna_study, knobs())
    trials = optuna_study.get_trials(deepcopy=False)
    assert sorted(t.state.name for t in trials) == ["FAIL", "WAITING", "WAITING"]
    assert [t.user_attrs["lost"] for t in trials if "lost" in t.user_attrs] == [1]
