"""Real sweeps (tiny demo points, SQLite) under a stop signal and a killed worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import psutil
import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

STUDY = """
name: {name}
defaults: {{max_epochs: {epochs}, patience: {epochs}, batch_size: 16, image_size: 32}}
tasks:
  demo-binary: {{archs: [mobilenet_v3_small]}}
lrs: [1.0e-3]
seeds: [{seeds}]
"""
ENV = {"MEDTL_HEARTBEAT_S": "1", "MEDTL_GRACE_S": "4", "MEDTL_STOP_GRACE_S": "0", "MLFLOW_TRACKING_URI": ""}


def _sweep(tmp_path: Path, study: Path, *extra: str) -> subprocess.Popen:
    command = [str(Path(sys.executable).parent / "medtl"), "sweep", "--study", str(study), *extra]
    env = {**os.environ, **ENV, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _runs(client: MlflowClient, study: str, stage: str = "finetune"):
    experiment = client.get_experiment_by_name(f"medtl/{study}")
    return client.search_runs([experiment.experiment_id], filter_string=f"tags.`medtl.stage` = '{stage}'")


def _wait_for_a_logged_epoch(client: MlflowClient, study: str, proc: subprocess.Popen) -> str:
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
        if client.get_experiment_by_name(f"medtl/{study}") is None:
            continue
        for run in _runs(client, study):
            if run.info.status == "RUNNING" and client.get_metric_history(run.info.run_id, "val_loss"):
                return run.info.run_id
    raise AssertionError(f"no epoch was logged; sweep exited {proc.poll()}: {proc.communicate()[1][-2000:]}")


def test_sigterm_puts_the_point_back_closes_the_parent_and_the_rerun_finishes_it(tmp_path):
    study = tmp_path / "term.yaml"
    study.write_text(STUDY.format(name="term", epochs=4, seeds="0"))
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    proc = _sweep(tmp_path, study)
    run_id = _wait_for_a_logged_epoch(client, "term", proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "Traceback" not in err and "stopped by SIGTERM" in err, err[-3000:]
    (parent,) = _runs(client, "term", "sweep")
    assert parent.info.status == "KILLED" and parent.data.tags["medtl.failure_reason"] == "stopped by SIGTERM"
    assert client.get_run(run_id).info.status == "KILLED"
    trials = optuna.load_study(study_name="medtl-term", storage=f"sqlite:///{tmp_path / 'optuna.db'}").get_trials()
    assert [(t.state.name, t.user_attrs.get("requeued")) for t in trials] == [("WAITING", 1)]  # uncharged

    again = _sweep(tmp_path, study)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-3000:]
    (parent,) = _runs(client, "term", "sweep")  # the same parent run, reopened and closed
    assert parent.info.status == "FINISHED" and parent.data.tags["medtl.sweep_attempts"] == "2"
    finished = [r for r in _runs(client, "term") if r.info.status == "FINISHED"]
    assert [r.info.run_id for r in finished] == [run_id]  # resumed into the same run
    assert sorted(m.step for m in client.get_metric_history(run_id, "val_loss")) == [1, 2, 3, 4]


def test_two_sqlite_workers_one_killed_every_point_once_and_the_death_reported(tmp_path):
    study = tmp_path / "kill.yaml"
    study.write_text(STUDY.format(name="kill", epochs=3, seeds="0, 1, 2"))
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    proc = _sweep(tmp_path, study, "--workers", "2")
    _wait_for_a_logged_epoch(client, "kill", proc)
    workers = [c for c in psutil.Process(proc.pid).children() if "resource_tracker" not in " ".join(c.cmdline())]
    victim = workers[0]
    victim.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 1, out[-2000:] + err[-2000:]
    assert f"worker {victim.pid} died (exit code -9)" in out, out[-2000:]
    assert "1 worker(s) died" in err and "Traceback" not in err, err[-3000:]
    runs = _runs(client, "kill")
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert len(finished) == 3 and len({r.data.tags["medtl.run_key"] for r in finished}) == 3
    assert not [r for r in runs if r.info.status == "RUNNING"]
    for run in finished:
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_loss")) == [1, 2, 3]
    trials = optuna.load_study(study_name="medtl-kill", storage=f"sqlite:///{tmp_path / 'optuna.db'}").get_trials()
    assert sorted(t.state.name for t in trials) == ["COMPLETE"] * 3
