"""`lrs: {from_study: NAME}`: `load_study` only parses; the sweep reads the source study once and names it."""

from __future__ import annotations

import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from medtl.mlops.cli import main
from medtl.mlops.sweeps import lr_selection as L
from medtl.mlops.sweeps import sweep as S
from medtl.mlops.sweeps.queue import open_storage
from medtl.mlops.sweeps.study import StudyError, load_study, lr_sources, study_from_attrs
from medtl.mlops.tracking.runner import RunOutcome
from medtl.training.spec import RunSpec

REDUCED = """
name: reduced
defaults: {max_epochs: 10}
tasks:
  demo-binary: {archs: [resnet18]}
arms: [random, imagenet]
lrs: {from_study: full}
seeds: [0, 1]
fractions: [0.25]
"""


@pytest.fixture
def full_study(tracking_uri) -> MlflowClient:
    """A finished study `full`: resnet18's random arm best at 1e-4 (mean 0.8 vs 0.6), imagenet at 1e-3."""
    client = MlflowClient(tracking_uri)
    exp = client.create_experiment("medtl/full")
    for arm, lr, vals in (("random", 1e-3, (0.6, 0.6)), ("random", 1e-4, (0.8, 0.8)),
                          ("imagenet", 1e-3, (0.9, 0.7)), ("imagenet", 1e-4, (0.5, 0.5))):
        for seed, val in enumerate(vals):
            spec = RunSpec(task="demo-binary", arch="resnet18", init=arm, lr=lr, seed=seed)
            tags = {"medtl.stage": "finetune", "medtl.run_key": spec.run_key, "medtl.arm": arm,
                    "medtl.fingerprint": spec.fingerprint()}
            rid = client.create_run(exp, tags=tags).info.run_id
            client.log_batch(rid, metrics=[Metric("best_val_f1", val, 0, 0), Metric("test_f1", val, 0, 0)],
                             params=[Param(k, v) for k, v in spec.to_params().items()])
            client.set_terminated(rid, "FINISHED")
    return client


def _write(tmp_path, text: str):
    path = tmp_path / "reduced.yaml"
    path.write_text(text)
    return path


def test_load_study_parses_only_and_names_what_it_needs(tmp_path):
    path = _write(tmp_path, REDUCED)
    assert lr_sources(path) == ["full"]
    with pytest.raises(StudyError, match=r"lrs.from_study 'full': the study's selected learning rates were not read"):
        load_study(path)  # no tracking store is opened: there is none in this folder
    assert not (tmp_path / "mlflow.db").exists()


def test_resolve_study_takes_each_models_selected_learning_rate(tmp_path, full_study, tracking_uri):
    study = L.resolve_study(_write(tmp_path, REDUCED), tracking_uri)
    assert {(s.arm, s.lr) for s in study.specs} == {("random", 1e-4), ("imagenet", 1e-3)}
    assert len(study.specs) == 4
    (selection,) = study.lr_selections
    expected = RunSpec(task="demo-binary", arch="resnet18").fingerprint()
    assert selection.study == "full" and selection.fingerprints == (expected,)
    assert "study 'full'" in selection.describe() and expected[:12] in selection.describe()
    with pytest.raises(StudyError, match="selected no learning rate for demo-binary resnet18 domain"):
        L.resolve_study(_write(tmp_path, REDUCED.replace("[random, imagenet]", "[random, domain]")), tracking_uri)


def test_the_sweep_reads_the_source_once_and_says_which(tmp_path, full_study, tracking_uri, monkeypatch, capsys):
    reads = []
    real = L.select_from_study
    monkeypatch.setattr(L, "select_from_study", lambda *a: reads.append(a[0]) or real(*a))
    monkeypatch.setattr("medtl.mlops.sweeps.worker.run_spec",
                        lambda spec, **kw: RunOutcome(f"run-{spec.run_key}", "FINISHED", {"best_val_loss": 0.5}))
    path = _write(tmp_path, REDUCED)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    assert main(["sweep", "--study", str(path), "--storage", storage, "--tracking-uri", tracking_uri]) == 0
    assert reads == ["full"]  # once per `medtl sweep`, not once per load
    out = capsys.readouterr().out
    fingerprint = RunSpec(task="demo-binary", arch="resnet18").fingerprint()
    assert f"[sweep] learning rates from study 'full' (protocol fingerprint {fingerprint[:12]}" in out
    parent = full_study.search_runs([full_study.get_experiment_by_name("medtl/reduced").experiment_id],
                                    filter_string="tags.`medtl.stage` = 'sweep'")[0]
    assert parent.data.tags["medtl.lrs_from_study"] == "full"
    assert parent.data.tags["medtl.lrs_from_fingerprint"] == fingerprint

    # A worker rebuilds the study, learning rates and their source, from the queue: no store read.
    import optuna

    queue = optuna.load_study(study_name="medtl-reduced", storage=open_storage(storage))
    again = study_from_attrs(queue.user_attrs)
    assert {(s.arm, s.lr) for s in again.specs} == {("random", 1e-4), ("imagenet", 1e-3)}
    assert [(s.study, s.fingerprints) for s in again.lr_selections] == [("full", (fingerprint,))]
    assert S.lr_selection_tags(again) == {"medtl.lrs_from_study": "full", "medtl.lrs_from_fingerprint": fingerprint}


def test_a_worker_given_the_file_joins_the_published_grid(tmp_path, full_study, tracking_uri, monkeypatch):
    from medtl.mlops.sweeps.queue import join_queue, open_optuna_study

    path = _write(tmp_path, REDUCED)
    storage = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    open_optuna_study(L.resolve_study(path, tracking_uri), storage)
    monkeypatch.setattr(L, "select_from_study", lambda *a: pytest.fail("a worker read the tracking store"))
    study, queue = join_queue(str(path), storage)
    assert queue.study_name == "medtl-reduced" and {s.lr for s in study.specs} == {1e-4, 1e-3}
