"""A tracked run holds every field of the tracking schema; a failing run ends FAILED."""

from __future__ import annotations

import csv

import pytest
from mlflow.tracking import MlflowClient

from medtl.mlops.tracking.runner import run_spec
from medtl.training.finetune import FinetuneRecipe
from medtl.training.spec import RunSpec

SPEC_FIELDS = {
    "task", "dataset", "arch", "init", "init_source", "pretrain_modality", "lr", "seed", "data_fraction",
    "max_epochs", "patience", "batch_size", "image_size", "normalization",
}
CLASSIFICATION_VAL = {"val_accuracy", "val_precision", "val_recall", "val_f1", "val_auc", "val_ece", "val_brier"}
FINAL = {
    "epochs_to_convergence", "epochs_run", "best_val_f1", "best_val_loss", "test_accuracy", "test_precision",
    "test_recall", "test_f1", "test_auc", "test_ece", "test_brier", "emissions_kg", "energy_kwh", "duration_s", "diverged",
}


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tracked")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    spec = RunSpec(task="demo-multiclass", arch="mobilenet_v3_small", lr=1e-3, max_epochs=3, patience=3, image_size=32)
    import os

    cwd = os.getcwd()
    os.chdir(folder)
    try:
        outcome = run_spec(spec, study="unit", tracking_uri=uri, parent_run_id=None, tags={"medtl.optuna_trial": "0"})
    finally:
        os.chdir(cwd)
    return spec, uri, outcome, folder


def test_run_record_holds_the_whole_tracking_schema(tracked):
    spec, uri, outcome, _ = tracked
    client = MlflowClient(uri)
    run = client.get_run(outcome.run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "medtl/unit"
    params = run.data.params
    assert set(params) >= SPEC_FIELDS
    assert RunSpec.from_params(params) == spec
    assert {"optimizer", "weight_decay", "resolved_normalization", "input_channels", "device", "num_workers", "pin_memory"} <= set(params)
    assert params["optimizer"] == "adamw" and params["weight_decay"] == "0.001" and params["input_channels"] == "3"
    tags = run.data.tags
    assert tags["medtl.stage"] == "finetune"
    assert tags["medtl.run_key"] == spec.run_key
    assert tags["medtl.study"] == "unit"
    assert tags["medtl.arm"] == "random"
    assert tags["medtl.fingerprint"] == spec.fingerprint(params["data_digest"])
    assert tags["medtl.git_commit"]
    assert tags["medtl.optuna_trial"] == "0"
    # MLflow's own fields (the UI's Source, commit, user and description) and the environment.
    assert tags["mlflow.source.name"] and tags["mlflow.user"]
    if tags["medtl.git_commit"] != "unknown":
        assert tags["mlflow.source.git.commit"] == tags["medtl.git_commit"]
    note = tags["mlflow.note.content"]
    assert "mobilenet_v3_small" in note and "demo-multiclass" in note and "study unit" in note and spec.run_key in note
    import torch

    assert tags["medtl.env.torch"] == str(torch.__version__)
    assert {"medtl.env.medtl", "medtl.env.torchvision", "medtl.env.cuda", "medtl.env.cudnn", "medtl.env.device_name"} <= set(tags)
    assert "normalisation" not in params and params["normalization"] == "auto"  # one spelling per param
    assert params["resolved_normalization"] == "none"
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "system/cpu_utilization_percentage" in run.data.metrics
    metrics = run.data.metrics
    assert set(metrics) >= FINAL, FINAL - set(metrics)
    assert metrics["epochs_run"] == 3 and 1 <= metrics["epochs_to_convergence"] <= 3
    assert metrics["emissions_kg"] >= 0 and metrics["duration_s"] > 0
    for key in ("train_loss", "val_loss", "val_f1", *CLASSIFICATION_VAL):
        history = client.get_metric_history(outcome.run_id, key)
        assert [m.step for m in history] == [1, 2, 3], key
    best_epoch = int(metrics["epochs_to_convergence"])
    val_loss = {m.step: m.value for m in client.get_metric_history(outcome.run_id, "val_loss")}
    assert val_loss[best_epoch] == min(val_loss.values()) == pytest.approx(metrics["best_val_loss"])


def test_run_artifacts_are_complete(tracked):
    spec, uri, outcome, folder = tracked
    client = MlflowClient(uri)
    names = {a.path for a in client.list_artifacts(outcome.run_id, "checkpoints")}
    # best.pt always; last.pt only serves a resume, and a FINISHED run on a local store is never
    # resumed, so it is not uploaded (mid-run uploads to a remote store put it there; see test_resume).
    assert names == {"checkpoints/best.pt"}
    assert not (folder / ".medtl" / "work" / spec.run_key).exists()  # the work folder is cleaned up
    local = client.download_artifacts(outcome.run_id, "predictions/test.csv", str(folder / "dl"))
    with open(local) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 128
    assert set(rows[0]) == {"id", "target", "prediction", "prob_disc", "prob_square", "prob_ring", "prob_stripes"}
    assert all(abs(sum(float(r[f"prob_{c}"]) for c in ("disc", "square", "ring", "stripes")) - 1) < 1e-4 for r in rows)
    # The calibration logged at the end is what evaluation recomputes from the predictions file.
    import numpy as np

    from medtl.calibration import brier_score, expected_calibration_error

    probs = np.array([[float(r[f"prob_{c}"]) for c in ("disc", "square", "ring", "stripes")] for r in rows])
    targets = np.array([int(r["target"]) for r in rows])
    metrics = client.get_run(outcome.run_id).data.metrics
    assert metrics["test_ece"] == pytest.approx(expected_calibration_error(targets, probs), abs=1e-5)
    assert metrics["test_brier"] == pytest.approx(brier_score(targets, probs), abs=1e-5)
    best = client.download_artifacts(outcome.run_id, "checkpoints/best.pt", str(folder / "dl"))
    from medtl.training.checkpoint import load_checkpoint

    payload = load_checkpoint(best)
    assert payload["meta"]["run_key"] == spec.run_key
    assert payload["meta"]["spec"] == spec.to_params()
    assert payload["meta"]["epoch"] == int(client.get_run(outcome.run_id).data.metrics["epochs_to_convergence"])
    inputs = client.get_run(outcome.run_id).inputs.dataset_inputs
    assert inputs and inputs[0].dataset.name == "demo-multiclass"
    # The outcome carries the recipe's own result: its test metrics are the run's test_* metrics.
    logged = client.get_run(outcome.run_id).data.metrics
    assert outcome.result is not None and outcome.result.metrics
    assert all(logged[f"test_{k}"] == pytest.approx(v) for k, v in outcome.result.metrics.items())
    assert outcome.result.best_checkpoint is not None and outcome.result.best_checkpoint.name == "best.pt"
    # And its fit summary is logged as the recipe reported it: the runner computes none of it.
    summary = outcome.result.fit
    assert summary is not None and summary.primary == "f1"
    assert {k: logged[k] for k in summary.metrics()} == pytest.approx(summary.metrics())
    assert client.get_run(outcome.run_id).data.tags["medtl.stop_reason"] == summary.stop_reason


def test_a_failing_run_ends_failed_with_its_reason(tracking_uri, monkeypatch):
    def boom(self):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(FinetuneRecipe, "test", boom)
    spec = RunSpec(task="demo-binary", arch="mobilenet_v3_small", max_epochs=1, image_size=32)
    with pytest.raises(RuntimeError):
        run_spec(spec, study="unit", tracking_uri=tracking_uri)
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("medtl/unit")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    assert runs[0].info.status == "FAILED"
    assert runs[0].data.tags["medtl.failure_reason"] == "RuntimeError: disk on fire"


def test_a_missing_dataset_creates_no_run(tracking_uri, tmp_path):
    from medtl.training.data import DataError

    spec = RunSpec(task="brain-tumor-mri", arch="resnet18", dataset=str(tmp_path / "nowhere"), image_size=32)
    with pytest.raises(DataError, match="does not exist"):
        run_spec(spec, study="unit", tracking_uri=tracking_uri)
    assert MlflowClient(tracking_uri).get_experiment_by_name("medtl/unit") is None


def _dataset_inputs(digest: str) -> list:
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    dataset = MetaDataset(source=CodeDatasetSource({"source": "demo"}), name="demo-binary", digest=digest)
    return [DatasetInput(dataset._to_mlflow_entity(), [InputTag("mlflow.data.context", "train")])]


def test_runs_that_log_one_new_dataset_at_once_all_get_it(postgres):
    """MLflow's SQL store looks a dataset up, then inserts it: of 8 runs logging the same new dataset at
    the same moment, 3-6 got 400 (unique violation on dataset_pk) when measured on this PostgreSQL."""
    import threading
    import uuid

    from medtl.mlops.tracking.runner import _log_inputs

    client = MlflowClient(postgres.mlflow_url)
    experiment = client.create_experiment(f"inputs-race-{uuid.uuid4().hex}")
    runs = [client.create_run(experiment).info.run_id for _ in range(8)]
    inputs = _dataset_inputs(uuid.uuid4().hex[:8])
    barrier, errors = threading.Barrier(len(runs)), []

    def log(run_id: str) -> None:
        barrier.wait()
        try:
            _log_inputs(client, run_id, inputs, pause_s=0.05)
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=log, args=(r,)) for r in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for run_id in runs:
        assert [d.dataset.name for d in client.get_run(run_id).inputs.dataset_inputs] == ["demo-binary"]


def test_only_a_bad_request_is_tried_again():
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import BAD_REQUEST, PERMISSION_DENIED

    from medtl.mlops.tracking.runner import DATASET_INPUT_TRIES, _log_inputs

    class Client:
        def __init__(self, code: int) -> None:
            self.code, self.calls = code, 0

        def log_inputs(self, run_id, datasets):  # noqa: ANN001
            self.calls += 1
            raise MlflowException("no", error_code=self.code)

    denied = Client(PERMISSION_DENIED)
    with pytest.raises(MlflowException):
        _log_inputs(denied, "r", [], pause_s=0)
    racing = Client(BAD_REQUEST)
    with pytest.raises(MlflowException):
        _log_inputs(racing, "r", [], pause_s=0)
    assert (denied.calls, racing.calls) == (1, DATASET_INPUT_TRIES)
