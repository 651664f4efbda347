"""A sweep resolves `pretrained-<arch>@champion` once per study: a moved alias changes no domain point.

The runner is a stand-in that records what it was asked to load (its use of the pin is checked
separately), so the test runs in seconds.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from mlflow.tracking import MlflowClient

from medtl.mlops.sweeps import sweep as S
from medtl.mlops.sweeps import worker as W
from medtl.mlops.tracking import runner
from medtl.mlops.tracking.registry import CHAMPION
from medtl.mlops.tracking.runner import RunOutcome
from medtl.training.spec import RunSpec

STUDY = """
name: pins
defaults: {max_epochs: 1, patience: 1, batch_size: 16, image_size: 32}
tasks:
  demo-binary: {archs: [resnet18]}
arms: [domain]
lrs: [1.0e-3]
seeds: [%s]
"""
NAME = "pretrained-resnet18"


def _register_two_versions(uri: str) -> MlflowClient:
    client = MlflowClient(uri)
    experiment = client.create_experiment("medtl/pretrain")
    client.create_registered_model(NAME)
    for _ in range(2):
        run = client.create_run(experiment)
        client.create_model_version(NAME, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    client.set_registered_model_alias(NAME, CHAMPION, "1")
    return client


def test_a_champion_moved_mid_sweep_leaves_every_domain_point_on_the_first_version(tmp_path, monkeypatch, tracking_uri):
    client = _register_two_versions(tracking_uri)
    asked: list[str | None] = []

    def fake_run(spec, **kwargs):
        asked.append(kwargs["init_pin"])
        client.set_registered_model_alias(NAME, CHAMPION, "2")  # someone promotes mid-sweep
        return RunOutcome(f"run-{len(asked)}", "FINISHED", {"best_val_loss": 0.5})

    monkeypatch.setattr(W, "run_spec", fake_run)
    study = tmp_path / "pins.yaml"
    study.write_text(STUDY % "0, 1")
    first = S.sweep(study, tracking_uri=tracking_uri)
    assert asked == [f"models:/{NAME}/1"] * 2
    assert str(client.get_model_version_by_alias(NAME, CHAMPION).version) == "2"
    parent = client.get_run(first.parent_run_id)
    assert parent.data.tags[f"medtl.init_pin.{NAME}.champion"] == f"models:/{NAME}/1"

    # A re-run of the same study (one seed added) reuses the recorded version and the parent run.
    study.write_text(STUDY % "0, 1, 2")
    again = S.sweep(study, tracking_uri=tracking_uri)
    assert again.enqueued == 1 and asked == [f"models:/{NAME}/1"] * 3
    assert again.parent_run_id == first.parent_run_id
    parent = client.get_run(again.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["medtl.sweep_attempts"] == "2"
    sweeps = client.search_runs([parent.info.experiment_id], filter_string="tags.`medtl.stage` = 'sweep'")
    assert len(sweeps) == 1


def test_the_runner_loads_the_pinned_version_not_the_alias(tmp_path, monkeypatch):
    loaded = []

    def fake_resolve(uri, tracking_uri, dest):
        loaded.append(uri)
        raise RuntimeError("stop here: only the URI matters")

    monkeypatch.setattr("medtl.mlops.tracking.registry.resolve_weights", fake_resolve)
    spec = RunSpec(task="demo-binary", arch="resnet18", init="domain")
    for pin in (f"models:/{NAME}/1", None):
        with contextlib.suppress(RuntimeError):
            runner.resolve_init(spec, "sqlite:///unused.db", Path(tmp_path), pin)
    assert loaded == [f"models:/{NAME}/1", f"models:/{NAME}@champion"]
    assert spec.run_key == RunSpec(task="demo-binary", arch="resnet18", init="domain").run_key
