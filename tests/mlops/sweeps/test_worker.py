"""`medtl worker --study NAME --storage URL`: the study travels in the queue, no study file needed."""

from __future__ import annotations

import optuna
import pytest

from medtl.mlops.cli import main
from medtl.mlops.signals import clear_stop_request
from medtl.mlops.sweeps import queue as Q
from medtl.mlops.sweeps.study import study_attrs, study_from_attrs
from medtl.mlops.tracking.runner import RunOutcome


@pytest.fixture
def published(enqueued, tmp_path, monkeypatch):
    """A two-point study enqueued by the sweep's own calls; the study file is deleted afterwards."""
    path, study, url, optuna_study = enqueued("byname")
    path.unlink()
    elsewhere = tmp_path / "worker-machine"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # nothing of the study's folder around
    yield study, url, optuna_study
    clear_stop_request()


def test_the_queue_carries_the_whole_study(published):
    study, _, optuna_study = published
    again = study_from_attrs(optuna_study.user_attrs)
    assert again.name == "byname"
    assert [s.run_key for s in again.specs] == [s.run_key for s in study.specs]
    assert study_attrs(again) == study_attrs(study)


def test_a_worker_given_only_the_name_runs_the_queue(published, train_with, capsys, tracking_uri):
    study, url, optuna_study = published
    ran = []

    def runner(spec, **kwargs):
        ran.append((kwargs["study"], spec.run_key))
        return RunOutcome(f"run-{spec.run_key}", "FINISHED", {"best_val_loss": 0.5})

    train_with(runner)
    assert main(["worker", "--study", "byname", "--storage", url, "--tracking-uri", tracking_uri]) == 0
    assert sorted(ran) == sorted(("byname", s.run_key) for s in study.specs)
    assert sorted(t.state.name for t in optuna_study.get_trials(deepcopy=False)) == ["COMPLETE", "COMPLETE"]
    assert "worker: 2 done, 0 failed" in capsys.readouterr().out


def test_an_unknown_name_is_one_line_naming_the_known_sweeps(published, capsys, tracking_uri):
    _, url, _ = published
    assert main(["worker", "--study", "nosuch", "--storage", url, "--tracking-uri", tracking_uri]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no sweep named 'nosuch'" in err[0] and "known: byname" in err[0], err


def test_a_queue_from_an_older_medtl_asks_for_the_study_file(tmp_path, capsys, tracking_uri):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.create_study(study_name="medtl-old", storage=Q.open_storage(url))  # no study attributes
    assert main(["worker", "--study", "old", "--storage", url, "--tracking-uri", tracking_uri]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--study PATH" in err[0], err


def _wrapped_stop() -> Exception:
    """What SQLAlchemy raises when a stop signal interrupts a pooled connection: its own error, the stop as context."""
    import sqlalchemy

    from medtl.mlops.signals import StopRequested

    try:
        try:
            raise StopRequested("SIGTERM")
        except StopRequested:
            raise sqlalchemy.exc.ProgrammingError("SET autocommit", {}, Exception("connection in transaction status ACTIVE"))  # noqa: B904
    except sqlalchemy.exc.ProgrammingError as exc:
        return exc


def test_a_stop_wrapped_by_the_database_library_still_stops_cleanly(published, train_with, monkeypatch, capsys, tracking_uri):
    """A SIGTERM that lands inside a database call: one line, exit 143, the point back in the queue uncharged."""
    from medtl.mlops.sweeps import worker as W

    _, url, optuna_study = published
    wrapped = _wrapped_stop()
    assert W.stop_in_chain(wrapped).signal_name == "SIGTERM" and W.stop_in_chain(RuntimeError("x")) is None
    real_claim = Q.claim_next
    calls = []

    def claim_then_interrupted(study, owner):
        calls.append(owner)
        if len(calls) == 1:
            real_claim(study, owner)  # the claim committed, then the signal hit before it returned
            raise wrapped
        return real_claim(study, owner)

    monkeypatch.setattr(W, "claim_next", claim_then_interrupted)
    train_with(lambda spec, **kw: pytest.fail("nothing may train after the stop"))
    assert main(["worker", "--study", "byname", "--storage", url, "--tracking-uri", tracking_uri]) == 143
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("medtl worker: stopped by SIGTERM") and not any("Traceback" in line for line in err), err
    states = sorted(t.state.name for t in optuna_study.get_trials(deepcopy=False))
    assert states == ["WAITING", "WAITING"]  # the claimed point was put back at once, not left to the grace
    assert all("fail_reason" not in t.user_attrs for t in optuna_study.get_trials(deepcopy=False))


def test_a_stop_wrapped_inside_a_run_puts_the_point_back_uncharged(published, train_with, capsys, tracking_uri):
    _, url, optuna_study = published
    wrapped = _wrapped_stop()

    def interrupted(spec, **kwargs):
        raise wrapped

    train_with(interrupted)
    assert main(["worker", "--study", "byname", "--storage", url, "--tracking-uri", tracking_uri]) == 143
    trials = optuna_study.get_trials(deepcopy=False)
    assert sorted(t.state.name for t in trials) == ["WAITING", "WAITING"]
    assert [t.user_attrs.get("requeue_reason") for t in trials if "requeued" in t.user_attrs] == ["worker stopped by SIGTERM"]
