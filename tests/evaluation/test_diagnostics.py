"""Calibration, confusion matrices and subgroups from the runs' predictions/test.csv: known answers, a store
that predates the test_ece/test_brier metrics, a run without predictions, a server's proxied artifacts."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from medtl.calibration import brier_score, expected_calibration_error
from medtl.evaluation.analysis import analyse_study
from medtl.evaluation.predictions import (
    Predictions,
    PredictionsError,
    PredictionsReader,
    columns_of,
)
from medtl.evaluation.predictions import parse as parse_columns
from medtl.mlops.cli import main
from medtl.training.spec import RunSpec, TaskType

STUDY = "diag"
ARCH = "resnet18"


def calibrated() -> pd.DataFrame:
    """40 binary predictions whose every equal-mass bin (4 samples) is exactly calibrated: ECE 0, Brier 0.1875.

    p = 0.25 for 20 samples, one positive in each run of 4; p = 0.75 for 20, three positives in each 4.
    """
    targets = [1, 0, 0, 0] * 5 + [1, 1, 1, 0] * 5
    probs = [0.25] * 20 + [0.75] * 20
    return _table(targets, probs)


def overconfident() -> pd.DataFrame:
    """40 predictions at 0.05 / 0.95 that are right half the time: ECE 0.45, Brier 0.4525."""
    return _table([1, 0] * 20, [0.05] * 20 + [0.95] * 20)


def _table(targets: list[int], probs: list[float]) -> pd.DataFrame:
    return pd.DataFrame({
        "id": [f"s{i:02d}" for i in range(len(targets))], "target": targets,
        "prediction": [int(p >= 0.5) for p in probs], "prob_positive": probs,
        "subgroup_sex": ["female", "male"] * (len(targets) // 2),
    })


def parse(frame: pd.DataFrame, task: str) -> Predictions:
    return parse_columns(columns_of(frame), task)


def f1_by_hand(table: pd.DataFrame) -> float:
    tp = int(((table["prediction"] == 1) & (table["target"] == 1)).sum())
    fp = int(((table["prediction"] == 1) & (table["target"] == 0)).sum())
    fn = int(((table["prediction"] == 0) & (table["target"] == 1)).sum())
    return 2 * tp / (2 * tp + fp + fn)


def _log(client, exp, tmp, *, arm, seed, val_f1, predictions=None, metrics=None):
    from mlflow.entities import Metric, Param

    spec = RunSpec(task="demo-binary", arch=ARCH, init="domain" if arm == "domain" else arm, lr=1e-3, seed=seed,
                   max_epochs=4, patience=3, batch_size=8, image_size=32)
    tags = {"medtl.stage": "finetune", "medtl.study": STUDY, "medtl.arm": arm, "medtl.task": "demo-binary",
            "medtl.arch": ARCH, "medtl.run_key": spec.run_key}
    rid = client.create_run(exp, tags=tags).info.run_id
    values = {"best_val_f1": val_f1, "test_f1": val_f1, "epochs_to_convergence": 2, "epochs_run": 3, **(metrics or {})}
    client.log_batch(rid, metrics=[Metric(k, float(v), 0, 0) for k, v in values.items()],
                     params=[Param(k, v) for k, v in spec.to_params().items()])
    if predictions is not None:
        folder = tmp / rid / "predictions"
        folder.mkdir(parents=True)
        predictions.to_csv(folder / "test.csv", index=False)
        client.log_artifact(rid, str(folder / "test.csv"), "predictions")
    client.set_terminated(rid)
    return rid


def _fill(uri, tmp):
    """random: seed 0 recomputed from its predictions (the best run), seed 1 logged its own metrics;
    domain: seed 0 over-confident predictions (the best run), seed 1 neither predictions nor metrics."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.create_experiment(f"medtl/{STUDY}")
    runs = {
        "random0": _log(client, exp, tmp, arm="random", seed=0, val_f1=0.9, predictions=calibrated()),
        "random1": _log(client, exp, tmp, arm="random", seed=1, val_f1=0.8, predictions=calibrated(),
                        metrics={"test_ece": 0.123, "test_brier": 0.2}),
        "domain0": _log(client, exp, tmp, arm="domain", seed=0, val_f1=0.9, predictions=overconfident()),
        "domain1": _log(client, exp, tmp, arm="domain", seed=1, val_f1=0.7),
    }
    return runs


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("diag")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    return uri, _fill(uri, tmp / "files")


def test_parse_each_task_type_and_refuse_what_does_not_fit():
    binary = parse(calibrated(), "demo-binary")
    assert binary.task_type is TaskType.BINARY and binary.classes == ("plain", "lesion") and len(binary) == 40
    assert list(binary.subgroups) == ["sex"] and binary.subgroups["sex"][:2].tolist() == ["female", "male"]
    multi = parse(pd.DataFrame({"id": ["a", "b"], "target": [0, 2], "prediction": [0, 1], "prob_disc": [0.7, 0.1],
                                "prob_square": [0.2, 0.5], "prob_ring": [0.1, 0.4]}), "demo-multiclass")
    assert multi.classes == ("disc", "square", "ring") and multi.probs.shape == (2, 3)
    regression = parse(pd.DataFrame({"id": ["a"], "target": [10.0], "prediction": [12.5], "subgroup_sex": [None]}),
                       "demo-regression")
    assert regression.probs is None and regression.subgroups["sex"].tolist() == ["unknown"]
    segmentation = parse(pd.DataFrame({"id": ["a"], "target_pixels": [3], "predicted_pixels": [2], "dice": [0.8]}),
                         "demo-segmentation")
    assert segmentation.dice.tolist() == [0.8]
    with pytest.raises(PredictionsError, match="lacks column.*prob_positive"):
        parse(calibrated().drop(columns="prob_positive"), "demo-binary")
    with pytest.raises(PredictionsError, match="outside"):
        parse(calibrated().assign(prob_positive=1.5), "demo-binary")
    with pytest.raises(PredictionsError, match="prob_<class>"):
        parse(pd.DataFrame({"target": [0], "prediction": [0], "prob_disc": [1.0]}), "demo-multiclass")


def test_a_local_artifact_folder_is_read_from_disk(tmp_path):
    folder = tmp_path / "run" / "artifacts"
    (folder / "predictions").mkdir(parents=True)
    calibrated().to_csv(folder / "predictions" / "test.csv", index=False)
    runs = pd.DataFrame({"run_id": ["a", "b", "c"], "task": "demo-binary",
                         "artifact_uri": [folder.as_uri(), str(tmp_path / "nowhere"), None]})
    found = PredictionsReader("sqlite:///unused.db")(runs)
    assert isinstance(found["a"], Predictions) and len(found["a"]) == 40
    assert found["b"] == "no predictions/test.csv artifact" and found["c"] == "the run has no artifact location"


def test_calibration_confusion_and_subgroups_from_a_store(store, tmp_path, capsys):
    uri, runs = store
    out = tmp_path / "rep"
    assert main(["evaluate", "--study", STUDY, "--tracking-uri", uri, "--no-log", "--out", str(out)]) == 0
    calib = pd.read_csv(out / "calibration.csv").set_index("run_id")
    assert calib.at[runs["random0"], "source"] == "predictions"
    assert calib.at[runs["random0"], "ece"] == pytest.approx(0.0, abs=1e-12)
    assert calib.at[runs["random0"], "brier"] == pytest.approx(0.1875)
    assert (calib.at[runs["random1"], "source"], calib.at[runs["random1"], "ece"]) == ("metrics", 0.123)
    assert calib.at[runs["domain0"], "ece"] == pytest.approx(0.45) and calib.at[runs["domain0"], "brier"] == pytest.approx(0.4525)
    table = overconfident()
    assert calib.at[runs["domain0"], "ece"] == pytest.approx(expected_calibration_error(table["target"], table["prob_positive"]))
    assert calib.at[runs["domain0"], "brier"] == pytest.approx(brier_score(table["target"], table["prob_positive"]))
    assert calib.at[runs["domain1"], "source"] == "unknown"
    assert calib.at[runs["domain1"], "note"] == "calibration unknown: no predictions/test.csv artifact"
    md = (out / "report.md").read_text()
    assert "## Calibration (classification, full training data)" in md
    assert "| resnet18 | domain | 0.001 | 1/2 | 0.45 ± – [no interval: fewer than 2 seeds (n=1)]" in md
    assert runs["domain1"][:8] in md and "no predictions/test.csv artifact (1)" in md
    assert (out / "plots" / "reliability_demo-binary_resnet18.png").read_bytes().startswith(b"\x89PNG")
    assert "![reliability_demo-binary_resnet18.png](plots/reliability_demo-binary_resnet18.png)" in md
    # confusion matrices summed over the seeds with predictions: random twice the calibrated table
    assert "| random | 2 | plain | 30 | 10 | 0.75 |" in md and "| domain | 1 | lesion | 10 | 10 | 0.5 |" in md
    # subgroups: F1 of each run on its female / male samples, the arm's mean over seeds
    female = calibrated()[calibrated()["subgroup_sex"] == "female"]
    assert f"| resnet18 | random | sex = female | 20 | 2 | {f1_by_hand(female):.3g} [" in md


def test_the_analysis_names_the_best_runs_curves(store):
    uri, runs = store
    analysis = analyse_study(STUDY, uri)
    (figure,) = [f for f in analysis.figures if f.name.startswith("reliability_")]
    random, domain = figure.panels
    assert (random.arm, domain.arm) == ("random", "domain") and runs["random0"][:8] in random.label
    assert random.observed.tolist() == pytest.approx([0.25] * 5 + [0.75] * 5)  # calibrated bins, 4 samples each
    assert domain.confidence.tolist() == pytest.approx([0.05] * 5 + [0.95] * 5) and domain.observed.tolist() == [0.5] * 10
    assert all(lo <= o <= hi for lo, o, hi in zip(domain.low, domain.observed, domain.high, strict=True))
    arms = {a.arm: a for a in analysis.diagnostics.calibration}
    assert arms["random"].ece == pytest.approx(0.123 / 2) and arms["random"].ece_ci.available
    assert arms["domain"].unknown == (runs["domain1"],) and not arms["domain"].ece_ci.available
    assert analysis.calibration_for("demo-binary", ARCH) == analysis.diagnostics.calibration
    verdict = analysis.verdict_for("demo-binary", ARCH)
    assert verdict.best in ("random", "domain") and verdict.intervals["random"].available
    assert {r.arm for r in analysis.results_for("demo-binary", ARCH)} == {"random", "domain"}
    assert analysis.verdict_for("demo-binary", "vgg16") is None
    without = analyse_study(STUDY, uri, predictions=False)
    assert not without.diagnostics.read and not any(f.name.startswith("reliability_") for f in without.figures)


@pytest.mark.integration
def test_predictions_behind_a_server_are_downloaded(start_mlflow_server, tmp_path):
    """A server proxying its artifacts (`mlflow-artifacts:` URIs): the reader downloads through MLflow's client."""
    server = start_mlflow_server(f"sqlite:///{tmp_path / 'served.db'}")
    runs = _fill(server.uri, tmp_path / "files")
    analysis = analyse_study(STUDY, server.uri)
    calib = analysis.diagnostics.runs.set_index("run_id")
    assert calib.at[runs["random0"], "source"] == "predictions" and calib.at[runs["domain1"], "source"] == "unknown"
    assert analysis.runs.set_index("run_id").at[runs["random0"], "artifact_uri"].startswith("mlflow-artifacts:")
    assert calib.at[runs["domain0"], "ece"] == pytest.approx(0.45)
    assert json.loads(json.dumps(analysis.main.records()))  # the served store gives a complete analysis


def test_subgroup_cells_are_labels_and_an_empty_one_is_unknown(tmp_path):
    """pyarrow would read a projection column of digits with an empty cell as floats ("2.0"), and an
    empty text cell as "": both are read as written, and empty is "unknown"."""
    from medtl.evaluation.predictions import read_csv

    path = tmp_path / "test.csv"
    path.write_text("id,target,prediction,prob_positive,subgroup_projection,subgroup_sex\n"
                    "a,1,1,0.9,2,male\nb,0,0,0.2,,\nc,0,1,0.6,1,female\n")
    table = parse_columns(read_csv(path), "demo-binary")
    assert table.subgroups["projection"].tolist() == ["2", "unknown", "1"]
    assert table.subgroups["sex"].tolist() == ["male", "unknown", "female"]
