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
