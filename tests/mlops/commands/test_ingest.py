"""`medtl demo-archive` → `ingest` → `pseudolabel` end to end: outputs, MLflow runs, leaks, bad input, --forget."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest

from medtl.mlops.cli import main
from medtl.training.archive.deid import KEY_ENV


@pytest.fixture()
def workdir(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(KEY_ENV, "cli-test-key-0123456789")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def test_pipeline_logs_a_pseudolabel_run_and_leaks_nothing(workdir, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    planted_file = workdir / "planted.txt"
    assert main(["demo-archive", "--out", "archive", "--patients", "6", "--planted-out", str(planted_file)]) == 0
    assert main(["ingest", "archive", "--out", "data", "--workers", "2"]) == 0
    assert main(["pseudolabel", "data", "--clusters", "6"]) == 0  # default store: ./mlflow.db
    captured = capsys.readouterr()
    assert "60 images" in captured.out and "pseudolabel: 6 clusters" in captured.out
    assert "1 skipped (1 for burned-in text: 1 of them found by the pixel scan" in captured.out  # the annotated copy
    manifest = pd.read_parquet(workdir / "data" / "manifest.parquet")
    assert "label" in manifest and (manifest["label"] >= 0).all()
    assert set(manifest["pixel_scan"]) <= {"clean", "allowed-text"}

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["medtl/pretrain"], output_format="list")
    by_stage = {r.data.tags["medtl.stage"]: r for r in runs}
    assert len(runs) == 2 and set(by_stage) == {"ingest", "pseudolabel"}
    ingested = by_stage["ingest"]
    assert ingested.data.params["burned_in"] == "refuse" and ingested.data.params["scan_side"] == "512"
    assert ingested.data.params["ocr_rapidocr"] == "3.10.0" and ingested.data.params["scan_threads"] == "1"
    metrics = ingested.data.metrics
    assert metrics["images"] == 60 and metrics["refused_pixels"] == 1 == metrics["scan_refused"]
    assert metrics["scan_clean"] + metrics.get("scan_allowed_text", 0) == 60
    assert sum(v for k, v in metrics.items() if k.startswith("scan_clean_")) == metrics["scan_clean"]
    refusals = {k: v for k, v in metrics.items() if k.startswith("scan_refused_")}
    assert sum(v for k, v in refusals.items() if k in ("scan_refused_CR", "scan_refused_CT")) == 1
    assert {"scan_refused_patient_name", "scan_refused_patient_id"} & set(refusals)
    artifacts = {f.path for f in mlflow.MlflowClient().list_artifacts(ingested.info.run_id)}
    assert artifacts == {"scan_verdicts.csv", "skipped.csv"}
    assert "archive" not in str(ingested.data.tags) + str(ingested.data.params)  # the source folder is never logged
    run = by_stage["pseudolabel"]
    experiment = mlflow.get_experiment(run.info.experiment_id)  # created by medtl: artifacts beside the store
    assert "mlartifacts" in experiment.artifact_location and not (workdir / "mlruns").exists()
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert run.data.params["clusters"] == "6" and run.data.metrics["homogeneity_body_part"] > 0.9
    assert "nmi_modality" in run.data.metrics
    sizes = mlflow.MlflowClient().get_metric_history(run.info.run_id, "cluster_size")
    assert sum(m.value for m in sizes) == len(manifest)

    planted = [v for v in planted_file.read_text().splitlines() if v]
    assert len(planted) > 200
    scanned = [captured.out.encode(), captured.err.encode(), caplog.text.encode()]
    for path in workdir.rglob("*"):
        if path.is_file() and "archive" not in path.relative_to(workdir).parts and path != planted_file:
            scanned.append(path.relative_to(workdir).as_posix().encode() + b"\n" + path.read_bytes())
    assert len(scanned) > 60  # PNGs, manifest, skipped list, shards, mlflow.db, artifacts
    leaks = [v for v in planted for blob in scanned if v.encode() in blob or v.lower().encode() in blob.lower()]
    assert leaks == []


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_bad_input_exits_2_with_one_line(workdir, capsys, monkeypatch):
    assert main(["ingest", "missing", "--out", "o"]) == 2
    assert "does not exist" in _error(capsys)
    (workdir / "empty").mkdir()
    assert main(["ingest", "empty", "--out", "o"]) == 2
    assert "no files" in _error(capsys)
    (workdir / "junk").mkdir()
    (workdir / "junk" / "notes.txt").write_text("no DICOM here")
    assert main(["ingest", "junk", "--out", "o2", "--no-progress"]) == 2
    assert "no readable DICOM" in _error(capsys)

    assert main(["demo-archive", "--out", "archive", "--patients", "3"]) == 0
    capsys.readouterr()
    monkeypatch.delenv(KEY_ENV)
    assert main(["ingest", "archive", "--out", "o3"]) == 2
    assert KEY_ENV in _error(capsys) and not (workdir / "o3").exists()
    (workdir / "o3").mkdir()
    (workdir / "o3" / "key").write_text("k" * 40)
    assert main(["ingest", "archive", "--out", "o3", "--key-file", "o3/key"]) == 2
    assert "inside the output folder" in _error(capsys)
    (workdir / "loose.key").write_text("k" * 40)
    (workdir / "loose.key").chmod(0o644)
    assert main(["ingest", "archive", "--out", "o5", "--key-file", "loose.key"]) == 2
    assert "chmod 600 loose.key" in _error(capsys)
    (workdir / "loose.key").chmod(0o600)
    assert main(["ingest", "archive", "--out", "o5", "--key-file", "loose.key", "--allow-modality", "CT"]) == 2
    assert "unknown --allow-modality CT; choose from ES, GM, OT, RF, SC, SM, US, XA, XC" in _error(capsys)
    assert main(["ingest", "archive", "--out", "o5", "--key-file", "loose.key", "--source-map", "o5/map.csv"]) == 2
    assert "inside the output folder" in _error(capsys)
    assert not (workdir / "o5").exists()  # nothing written for any refusal
    assert main(["ingest", "archive", "--out", "o4", "--ephemeral-key", "--no-progress"]) == 0
    capsys.readouterr()
    for k in ("1", "1000"):
        assert main(["pseudolabel", "o4", "--clusters", k]) == 2
        assert "--clusters must be between 2" in _error(capsys)
    assert main(["pseudolabel", "nowhere", "--clusters", "3"]) == 2
    assert "does not exist" in _error(capsys)
    assert main(["ingest", "archive", "--out", "o6", "--burned-in", "blur"]) == 2
    assert "unknown --burned-in 'blur'; choose from refuse, mask, off" in _error(capsys)
    assert main(["ingest", "--out", "o6"]) == 2
    assert "name the source archive" in _error(capsys)
    assert main(["ingest", "archive", "--out", "o4", "--forget", "0" * 32]) == 2
    assert "no SRC" in _error(capsys)
    assert main(["ingest", "--out", "o4", "--forget", "0" * 32]) == 2
    assert "is not in o4" in _error(capsys)
    assert not (workdir / "o6").exists()
    assert main(["demo-archive", "--out", "archive"]) == 2
    assert "not an empty folder" in _error(capsys)
    assert main(["demo-archive", "--out", "a2", "--planted-out", "a2/p.txt"]) == 2
    assert "inside the archive" in _error(capsys)


def test_scan_off_warns_and_says_so_on_the_run_and_forget_removes_a_source(workdir, capsys, caplog):
    assert main(["demo-archive", "--out", "archive", "--patients", "4"]) == 0
    assert main(["ingest", "archive", "--out", "data", "--no-progress", "--burned-in", "off",
                 "--source-map", "map.csv"]) == 0
    captured = capsys.readouterr()
    assert "pixels not scanned (--burned-in off)" in captured.out
    assert "--burned-in off: the pixels are not scanned for burned-in text" in caplog.text
    manifest = pd.read_parquet(workdir / "data" / "manifest.parquet")
    assert len(manifest) == 43 and set(manifest["pixel_scan"]) == {"off"}  # the annotated copy too: nothing scanned

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    (run,) = mlflow.search_runs(experiment_names=["medtl/pretrain"], output_format="list")
    assert run.data.tags["medtl.burned_in"] == "off" and run.data.params["burned_in"] == "off"
    assert run.data.tags["mlflow.note.content"].startswith("WARNING: ingest: --burned-in off")
    assert run.data.metrics["scan_off"] == 43
    # A reader finds the name in an image: its row's source_key names the file through the source map.
    sources = dict(pd.read_csv(workdir / "map.csv").itertuples(index=False))
    annotated = next(k for k, path in sources.items() if path.endswith("_annotated.dcm"))
    row = manifest[manifest["source_key"] == annotated]
    assert len(row) == 1
    assert main(["ingest", "--forget", annotated, "--out", "data"]) == 0
    assert "1 sources and their 1 images removed from data" in capsys.readouterr().out
    assert not (workdir / "data" / row.iloc[0]["image_path"]).exists()
    assert annotated not in set(pd.read_parquet(workdir / "data" / "manifest.parquet")["source_key"])
    assert main(["ingest", "archive", "--out", "data", "--no-progress"]) == 0  # the scan on now: the rest is scanned
    out = capsys.readouterr().out
    assert "manifest has 42 images" in out and "0 of them found by the pixel scan" in out
