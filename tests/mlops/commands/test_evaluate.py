"""`medtl evaluate`: report files, the evaluation run in MLflow, one-line errors with exit 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from evaluation.conftest import STUDY, shared_store

from medtl.evaluation.collect import collect
from medtl.mlops.cli import main


@pytest.fixture
def store_copy(tmp_path_factory, tmp_path):
    """A private copy of the synthetic store (these tests write an evaluation run into it)."""
    store = shared_store(tmp_path_factory)
    db = tmp_path / "mlflow.db"
    shutil.copy(store.path, db)
    return f"sqlite:///{db}", store


def test_evaluate_writes_report_and_logs_run(store_copy, tmp_path, capsys):
    uri, store = store_copy
    out = tmp_path / "rep"
    rc = main(["evaluate", "--study", STUDY, "--tracking-uri", uri, "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1] == f"report: {(out / 'report.html').resolve()}"
    # the headline: one verdict line per (task, arch) at full data and reduced data, then what was set aside
    verdicts = [line for line in printed if " is best on " in line]
    assert len(verdicts) == 5  # 2 tasks x 2 archs at full data, 1 reduced-data cell
    assert any(line.startswith("demo-regression / resnet18: ") and "best on mae" in line for line in verdicts)
    assert "one run per grid point (0 duplicate run(s) set aside); diverged runs counted at their best checkpoint" in printed
    page = (out / "report.html").read_text()
    # run ids link to the run's page in the MLflow UI (default address)
    assert "<a href='http://127.0.0.1:5000/#/experiments/" in page and "?workflowType=machine_learning" in page
    records = json.loads((out / "comparisons.json").read_text())
    assert {r["test"] for r in records} >= {"kruskal", "mannwhitneyu"}
    assert (out / "summary.csv").is_file() and (out / "tables.tex").is_file()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(f"medtl/{STUDY}")
    runs = client.search_runs([exp.experiment_id], "tags.`medtl.stage` = 'evaluation'")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["medtl.study"] == STUDY
    assert run.data.params["mode"] == "paper" and run.data.metrics["n_runs"] == len(store.finetune)
    logged = {f.path for f in client.list_artifacts(run.info.run_id, "report")}
    assert {"report/report.html", "report/comparisons.json", "report/plots"} <= logged
    # the evaluation run is not a fine-tuning run
    assert set(collect(STUDY, uri).runs["run_id"]) == store.finetune


def test_evaluate_recommended_without_log(store_copy, tmp_path):
    uri, _ = store_copy
    out = tmp_path / "rec"
    rc = main(["evaluate", "--study", STUDY, "--mode", "recommended", "--no-log", "--tracking-uri", uri,
               "--out", str(out)])
    assert rc == 0
    assert {r["test"] for r in json.loads((out / "comparisons.json").read_text())} == {"permutation"}
    assert "Comparisons in paper mode" in (out / "report.md").read_text()


def test_default_out_folder(store_copy, tmp_path, monkeypatch):
    uri, _ = store_copy
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert main(["evaluate", "--study", "other", "--no-log"]) == 0
    assert (Path.cwd() / "reports" / "other" / "report.html").is_file()


def test_unknown_study_exits_2_listing_known(store_copy, capsys, tmp_path):
    uri, _ = store_copy
    rc = main(["evaluate", "--study", "nope", "--tracking-uri", uri, "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and "unknown study 'nope'" in err and "known studies: other, synth" in err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("argv, message", [
    (["--mode", "fancy"], "valid modes: paper, recommended"),
    (["--study", "../etc"], "invalid study name"),
])
def test_bad_input_exits_2(store_copy, capsys, argv, message):
    uri, _ = store_copy
    args = ["evaluate", "--study", STUDY, "--tracking-uri", uri, "--no-log", *argv]
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_help_mentions_the_files(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    assert "comparisons.json" in capsys.readouterr().out
