"""Scale-out storage end to end: PostgreSQL for Optuna and MLflow behind a lean server, on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from medtl.mlops.stack import sweep_command, without_password
from medtl.mlops.sweeps.study import load_study, study_text
from medtl.mlops.tracking.runner import run_spec
from medtl.training.spec import RunSpec

pytestmark = pytest.mark.integration

STUDY = study_text("stack", lrs=(1e-3, 1e-4), seeds=range(6), max_epochs=3, patience=3, batch_size=32, image_size=32)


def _medtl() -> str:
    return str(Path(sys.executable).parent / "medtl")


def _finetune_runs(client: MlflowClient, study: str):
    experiment = client.get_experiment_by_name(f"medtl/{study}")
    return client.search_runs([experiment.experiment_id], filter_string="tags.`medtl.stage` = 'finetune'", max_results=1000)


def _workers_of(proc: subprocess.Popen) -> list[psutil.Process]:
    children = psutil.Process(proc.pid).children()
    return [c for c in children if "resource_tracker" not in " ".join(c.cmdline())]


def test_sweep_survives_a_killed_worker_exactly_once(postgres, mlflow_server, tmp_path):
    study_file = tmp_path / "stack.yaml"
    study_file.write_text(STUDY)
    storage, secret = without_password(postgres.optuna_url)  # the password only in PGPASSWORD
    env = {**os.environ, **secret, "MEDTL_HEARTBEAT_S": "1", "MEDTL_GRACE_S": "4", "MLFLOW_TRACKING_URI": ""}
    command = sweep_command(str(study_file), storage, mlflow_server.uri, workers=2)
    command[0] = _medtl()
    sweep = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    client = MlflowClient(mlflow_server.uri)
    victim = None
    deadline = time.time() + 300
    while victim is None and time.time() < deadline and sweep.poll() is None:
        time.sleep(0.5)
        experiment = client.get_experiment_by_name("medtl/stack")
        if experiment is None:
            continue
        for run in client.search_runs([experiment.experiment_id], filter_string="attributes.status = 'RUNNING'"):
            if run.data.tags.get("medtl.stage") == "finetune" and client.get_metric_history(run.info.run_id, "val_loss"):
                workers = _workers_of(sweep)
                for process in [psutil.Process(sweep.pid), *workers, psutil.Process(mlflow_server.proc.pid)]:
                    assert postgres.password not in " ".join(process.cmdline()), process.pid
                if workers:
                    victim = workers[0]
                    victim.send_signal(signal.SIGKILL)  # mid-run: at least one epoch logged, more to come
                    break
    assert victim is not None, "no worker was caught mid-run"
    out, _ = sweep.communicate(timeout=900)
    assert sweep.returncode == 1, out[-3000:]  # a worker died: reported, and the sweep says so
    assert f"worker {victim.pid} died (exit code -9)" in out and "Traceback" not in out, out[-3000:]
    assert "password" not in out and postgres.password not in out

    # Run the sweep again: whatever the dead worker left is finished now, nothing is repeated.
    again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]

    expected = {spec.run_key for spec in load_study(study_file).specs}
    runs = _finetune_runs(client, "stack")
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert sorted(r.data.tags["medtl.run_key"] for r in finished) == sorted(expected)  # exactly one each
    assert not [r for r in runs if r.info.status == "RUNNING"]
    for run in finished:
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_loss"))
        assert steps == list(range(1, int(run.data.metrics["epochs_run"]) + 1)), (run.info.run_id, steps)
    evidence = [r for r in runs if "medtl.resumed_from_epoch" in r.data.tags or r.info.status == "KILLED"]
    assert evidence, "the killed worker's point was neither resumed nor restarted"


def test_a_tracking_server_outage_does_not_kill_a_run(mlflow_server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = RunSpec(task="demo-binary", arch="mobilenet_v3_small", max_epochs=4, patience=4, image_size=32, seed=9)
    outcome: dict = {}

    def train():
        try:
            outcome["result"] = run_spec(spec, study="outage", tracking_uri=mlflow_server.uri)
        except BaseException as exc:  # surfaced by the assertion below
            outcome["error"] = exc

    thread = threading.Thread(target=train)
    thread.start()
    client = MlflowClient(mlflow_server.uri)
    deadline = time.time() + 300
    while time.time() < deadline:
        experiment = client.get_experiment_by_name("medtl/outage")
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        if runs and client.get_metric_history(runs[0].info.run_id, "val_loss"):
            break
        time.sleep(0.3)
    mlflow_server.stop()
    time.sleep(20)  # the server is gone while the run trains on
    mlflow_server.start()
    thread.join(timeout=600)
    assert "error" not in outcome, outcome.get("error")
    run = client.get_run(outcome["result"].run_id)
    assert run.info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_loss"))
    assert steps == [1, 2, 3, 4]
    assert {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")} == {"checkpoints/best.pt", "checkpoints/last.pt"}


def test_unreachable_storage_is_one_line_exit_2_and_enqueues_nothing(tmp_path):
    study_file = tmp_path / "stack.yaml"
    study_file.write_text(STUDY)
    url = "postgresql+psycopg://medtl:s3cret@127.0.0.1:1/nowhere"
    result = subprocess.run(
        [_medtl(), "sweep", "--study", str(study_file), "--storage", url],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "cannot open Optuna storage postgresql+psycopg://medtl:***@127.0.0.1:1/nowhere" in result.stderr
    assert "s3cret" not in result.stderr + result.stdout
    assert not (tmp_path / "mlflow.db").exists()
