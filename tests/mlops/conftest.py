"""The native service stack the integration tests use: PostgreSQL (tests/conftest.py) and a lean MLflow server on 127.0.0.1.

`docker-compose.yml` runs the same commands (`medtl.mlops.stack`); a test checks that they agree.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from medtl.mlops.sweeps import queue as Q
from medtl.mlops.sweeps import worker as W
from medtl.mlops.sweeps.study import load_study, study_text


@pytest.fixture(scope="session")
def mlflow_server(postgres, start_mlflow_server) :
    """The session's `mlflow server` on PostgreSQL, proxying artifacts (what compose runs)."""
    return start_mlflow_server(postgres.mlflow_url)


@pytest.fixture
def study_file(tmp_path):
    """Writes a two-point study (demo-binary, mobilenet_v3_small, 32 px, one epoch) named as asked: its path."""

    def write(name: str) -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(study_text(name, seeds=(0, 1), max_epochs=1, patience=1, batch_size=16, image_size=32))
        return path

    return write


@pytest.fixture
def enqueued(study_file, tmp_path, monkeypatch):
    """Enqueues `study_file(name)` in a fresh SQLite Optuna storage, 1 s heartbeat and 2 s grace.

    Returns a function of the study's name giving (study file, study, storage URL, Optuna study).
    """
    monkeypatch.setenv("MEDTL_HEARTBEAT_S", "1")
    monkeypatch.setenv("MEDTL_GRACE_S", "2")

    def enqueue(name: str):
        path = study_file(name)
        study = load_study(path)
        url = f"sqlite:///{tmp_path / 'optuna.db'}"
        optuna_study = Q.open_optuna_study(study, Q.open_storage(url))
        assert Q.enqueue_missing(study.specs, optuna_study, set()) == len(study.specs)
        return path, study, url, optuna_study

    return enqueue


@pytest.fixture
def train_with(monkeypatch):
    """Makes sweep workers train with a stand-in for `run_spec`; MLflow holds no finished point unless `finished` says."""

    def use(runner, finished=lambda *args: set()) -> None:
        monkeypatch.setattr(W, "run_spec", runner)
        monkeypatch.setattr(W, "finished_run_keys_for", finished)

    return use
