"""`medtl` command line: help, bad input (one line, exit 2, no MLflow run), and the sweep smoke test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from medtl.mlops.cli import main
from medtl.mlops.sweeps.study import study_text

ONE_POINT = study_text("smoke", seeds=[0], max_epochs=2, patience=2, batch_size=16, image_size=32)


def _medtl(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medtl.mlops.cli", *args], cwd=cwd, capture_output=True, text=True)


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("run", "sweep", "worker"):
        assert command in out


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--task", "demo-binar", "--arch", "resnet18"], "unknown task 'demo-binar'; valid:"),
        (["--task", "demo-binary", "--arch", "resnet19"], "unknown architecture 'resnet19'; valid:"),
        (["--task", "demo-binary", "--arch", "resnet18", "--init", "imagenet1k"], "unknown init 'imagenet1k'"),
        (["--task", "demo-binary", "--arch", "resnet18", "--lr", "0"], "lr must be a positive number"),
        (["--task", "demo-binary", "--arch", "resnet18", "--lr", "-0.1"], "lr must be a positive number"),
        (["--task", "demo-binary", "--arch", "resnet18", "--fraction", "1.5"], "fraction must lie in (0, 1]"),
        (["--task", "demo-binary", "--arch", "resnet18", "--fraction", "0"], "fraction must lie in (0, 1]"),
        (["--task", "demo-binary", "--arch", "resnet18", "--max-epochs", "0"], "max-epochs must be at least 1"),
        (["--task", "demo-binary", "--arch", "resnet18", "--lr", "fast"], "invalid float value: 'fast'"),
    ],
)
def test_bad_run_input_is_one_line_exit_2_and_no_run(tmp_path, args, fragment):
    result = _medtl("run", *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0], result.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_bad_study_file_is_refused_with_file_key_and_choices(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(ONE_POINT + "learning_rates: [0.1]\n")
    result = _medtl("sweep", "--study", str(bad), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "bad.yaml: unknown key 'learning_rates' in the study; valid:" in result.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "optuna.db").exists()


def test_sweep_smoke_runs_a_one_point_study_once(tmp_path, capsys):
    study = tmp_path / "one.yaml"
    study.write_text(ONE_POINT)
    assert main(["sweep", "--study", str(study)]) == 0
    out = capsys.readouterr().out
    assert "1 grid points, 1 newly enqueued; complete 1, failed 0, left 0" in out
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("medtl/smoke")
    runs = client.search_runs([experiment.experiment_id])
    by_stage = {r.data.tags["medtl.stage"]: r for r in runs}
    assert set(by_stage) == {"sweep", "finetune"}
    child, parent = by_stage["finetune"], by_stage["sweep"]
    assert child.info.status == parent.info.status == "FINISHED"
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert child.data.tags["medtl.optuna_study"] == "medtl-smoke"
    # Idempotent: the second sweep enqueues and trains nothing.
    assert main(["sweep", "--study", str(study)]) == 0
    assert "0 newly enqueued; complete 1" in capsys.readouterr().out
    finetune = client.search_runs([experiment.experiment_id], filter_string="tags.`medtl.stage` = 'finetune'")
    assert len(finetune) == 1
