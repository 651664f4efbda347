"""Fixtures of the tracking tests: a fresh run in the test's own SQLite store; a fake study store for
promotion and model-card tests (runs logged by hand, versions registered without a network)."""

from __future__ import annotations

import shutil

import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from medtl.mlops.tracking import promote as P
from medtl.mlops.tracking.client import get_or_create_experiment
from medtl.mlops.tracking.promote import version_tags
from medtl.training import schema as S
from medtl.training.spec import RunSpec


@pytest.fixture
def new_run(tracking_uri) -> tuple[MlflowClient, str]:
    """A client on the test's store and the id of a new, empty run in experiment `medtl/tracking`."""
    client = MlflowClient(tracking_uri)
    experiment_id = get_or_create_experiment(client, "medtl/tracking", tracking_uri)
    return client, client.create_run(experiment_id).info.run_id


def gate_spec(**kw) -> RunSpec:
    return RunSpec(**{"task": "demo-binary", "arch": "resnet18", "image_size": 32, "max_epochs": 4, **kw})


@pytest.fixture(scope="module")
def empty_db(tmp_path_factory):
    """An MLflow SQLite store with its tables and nothing else, copied by each test (creating one takes seconds)."""
    path = tmp_path_factory.mktemp("empty") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def gated(empty_db, tmp_path, monkeypatch):
    """Study `gate`: demo-binary / resnet18, random arm at lr 1e-3, five seeds; registration without a network.

    Returns (tracking URI, client, log): `log(seed, best_val_f1, metrics=None, **RunSpec fields)` adds a run.
    """
    shutil.copy(empty_db, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("medtl/gate", artifact_location=str(tmp_path / "artifacts"))
    monkeypatch.setattr(P, "_register", fake_register)
    clock = iter(range(1000, 10**6, 1000))

    def log(seed: int, val: float, metrics: dict | None = None, **spec_kw) -> str:
        spec = gate_spec(seed=seed, **spec_kw)
        start = next(clock)
        tags = {"medtl.stage": "finetune", "medtl.run_key": spec.run_key, "medtl.fingerprint": spec.fingerprint("dg"),
                "medtl.study": "gate", "medtl.arm": spec.arm, "medtl.env.torch": "2.x"}
        rid = client.create_run(exp, start_time=start, tags=tags).info.run_id
        metrics = metrics or {"best_val_f1": val, "best_val_loss": 0.5, "test_f1": val - 0.05, "test_ece": 0.04,
                              "test_brier": 0.12, "epochs_to_convergence": 3.0, "emissions_kg": 1e-6}
        extra = {"data_digest": "dg", "n_train": "256", "n_val": "64", "n_test": "128"}
        if spec.init.value == "domain":
            extra["init_resolved"] = "pretrained-resnet18/1"
        client.log_batch(rid, metrics=[Metric(k, v, start, 0) for k, v in metrics.items()],
                         params=[Param(k, v) for k, v in {**spec.to_params(), **extra}.items()])
        client.set_terminated(rid, "FINISHED")
        return rid

    for seed, val in enumerate([0.70, 0.72, 0.74, 0.76, 0.78]):
        log(seed, val)
    return uri, client, log


def fake_register(client, uri, study, run, fingerprint):  # noqa: ANN001
    """`promote._register` without logging a network: the same version tags on a bare model version."""
    spec = RunSpec.from_params(run.data.params)
    name = f"finetuned-{spec.task.value}-{spec.arch.value}"
    if not client.search_registered_models(f"name = '{name}'"):
        client.create_registered_model(name)
    tags = {**version_tags(study, spec, run, fingerprint), S.RUN_TAG: run.info.run_id, S.METRIC_NAME_TAG: "best_val_f1",
            S.METRIC_TAG: repr(run.data.metrics["best_val_f1"]), S.HIGHER_TAG: "True"}
    return str(client.create_model_version(name, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id, tags=tags).version)


