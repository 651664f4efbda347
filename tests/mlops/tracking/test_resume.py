"""A worker killed mid-run: the point resumes from last.pt in the same MLflow run, no step repeated."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from mlflow.tracking import MlflowClient

from medtl.mlops.tracking.runner import run_spec
from medtl.training.spec import RunSpec

SPEC = dict(task="demo-binary", arch="mobilenet_v3_small", max_epochs=5, patience=5, image_size=32, seed=1)

KILL_AT_EPOCH_3 = textwrap.dedent(
    """
    import os, signal, sys
    import medtl.training.loop as loop
    from medtl.mlops.tracking.runner import run_spec
    from medtl.training.spec import RunSpec

    original = loop.EarlyStopping.on_epoch_end
    def die(self, state, metrics):
        original(self, state, metrics)
        if state.epoch == 3:
            os.kill(os.getpid(), signal.SIGKILL)  # mid-run, epoch 3's checkpoint may still be in flight
    loop.EarlyStopping.on_epoch_end = die
    run_spec(RunSpec(**{spec}), study="resume", tracking_uri=sys.argv[1])
    """
)


def test_killed_run_resumes_in_the_same_run_without_repeated_steps(tmp_path, tracking_uri):
    script = KILL_AT_EPOCH_3.format(spec=SPEC)
    killed = subprocess.run([sys.executable, "-c", script, tracking_uri], cwd=tmp_path, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("medtl/resume")
    (dead,) = client.search_runs([experiment.experiment_id])
    assert dead.info.status == "RUNNING"  # what SIGKILL leaves behind
    logged_before = [m.step for m in client.get_metric_history(dead.info.run_id, "val_loss")]
    assert logged_before and max(logged_before) <= 3

    outcome = run_spec(RunSpec(**SPEC), study="resume", tracking_uri=tracking_uri)

    assert outcome.run_id == dead.info.run_id
    run = client.get_run(outcome.run_id)
    assert run.info.status == "FINISHED"
    resumed_from = int(run.data.tags["medtl.resumed_from_epoch"])
    assert 2 <= resumed_from <= 3
    for key in ("train_loss", "val_loss", "val_f1"):
        steps = [m.step for m in client.get_metric_history(outcome.run_id, key)]
        assert sorted(steps) == [1, 2, 3, 4, 5], (key, steps)
    assert run.data.metrics["epochs_run"] == 5
    assert len(client.search_runs([experiment.experiment_id])) == 1


def test_a_run_killed_on_another_machine_resumes_from_its_uploaded_last_pt(tmp_path, tracking_uri):
    """Mid-run uploads on: the work folder is gone (another machine), the artifact is enough."""
    import os
    import shutil

    script = KILL_AT_EPOCH_3.format(spec=SPEC)
    env = {**os.environ, "MEDTL_CHECKPOINT_UPLOAD_EVERY": "1"}
    killed = subprocess.run([sys.executable, "-c", script, tracking_uri], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert killed.returncode == -9, killed.stderr[-2000:]
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("medtl/resume")
    (dead,) = client.search_runs([experiment.experiment_id])
    uploaded = {a.path for a in client.list_artifacts(dead.info.run_id, "checkpoints")}
    assert "checkpoints/last.pt" in uploaded
    shutil.rmtree(tmp_path / ".medtl")  # this machine never saw the run

    outcome = run_spec(RunSpec(**SPEC), study="resume", tracking_uri=tracking_uri)

    run = client.get_run(outcome.run_id)
    assert outcome.run_id == dead.info.run_id and run.info.status == "FINISHED"
    assert 1 <= int(run.data.tags["medtl.resumed_from_epoch"]) <= 3
    assert sorted(m.step for m in client.get_metric_history(outcome.run_id, "val_loss")) == [1, 2, 3, 4, 5]
    # The fetched best.pt carried the best epoch over both attempts into the test.
    val_loss = {m.step: m.value for m in client.get_metric_history(outcome.run_id, "val_loss")}
    assert val_loss[int(run.data.metrics["epochs_to_convergence"])] == min(val_loss.values())
    assert "test_f1" in run.data.metrics


def test_attempt_without_checkpoint_is_marked_killed_and_restarted(tmp_path, tracking_uri):
    client = MlflowClient(tracking_uri)
    spec = RunSpec(**{**SPEC, "max_epochs": 1})
    from medtl.mlops.tracking import client as T
    from medtl.training import schema as S

    experiment_id = T.get_or_create_experiment(client, "medtl/resume", tracking_uri)
    ghost = client.create_run(experiment_id, tags={S.RUN_KEY_TAG: spec.run_key, S.STAGE_TAG: "finetune"})
    outcome = run_spec(spec, study="resume", tracking_uri=tracking_uri)
    assert outcome.run_id != ghost.info.run_id
    assert client.get_run(ghost.info.run_id).info.status == "KILLED"
    assert client.get_run(outcome.run_id).info.status == "FINISHED"
