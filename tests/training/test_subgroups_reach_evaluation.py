"""End to end: a tracked demo-regression run's predictions carry `subgroup_sex`, and evaluation's subgroup table reads it."""

from __future__ import annotations

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from medtl.evaluation.analysis import analyse_study
from medtl.mlops.cli import main
from medtl.mlops.tracking.runner import run_spec
from medtl.training.spec import RunSpec

STUDY = "subgroups"


@pytest.mark.slow
def test_a_tracked_runs_subgroups_reach_the_report(tracking_uri, tmp_path, one_thread):
    maes: dict[str, list[float]] = {"female": [], "male": []}
    for seed in (0, 1):
        spec = RunSpec(task="demo-regression", arch="mobilenet_v3_small", lr=1e-3, seed=seed, max_epochs=1,
                       image_size=32, batch_size=32)
        outcome = run_spec(spec, study=STUDY, tracking_uri=tracking_uri)
        local = MlflowClient(tracking_uri).download_artifacts(outcome.run_id, "predictions/test.csv", str(tmp_path / str(seed)))
        table = pd.read_csv(local)
        assert list(table.columns) == ["id", "target", "prediction", "subgroup_sex"]
        for sex, rows in table.groupby("subgroup_sex"):
            maes[str(sex)].append(float((rows["prediction"] - rows["target"]).abs().mean()))
    results = {r.value: r for r in analyse_study(STUDY, tracking_uri).diagnostics.subgroups}
    assert set(results) == {"female", "male"}
    for sex, values in maes.items():
        result = results[sex]
        assert (result.variable, result.metric, result.arm, result.n_runs) == ("sex", "mae", "random", 2)
        assert result.n_samples == 64 and result.mean == pytest.approx(sum(values) / 2)
        assert result.ci.available
    out = tmp_path / "report"
    assert main(["evaluate", "--study", STUDY, "--tracking-uri", tracking_uri, "--no-log", "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "| mobilenet_v3_small | random | sex = female | 64 | 2 |" in report
    assert "| mobilenet_v3_small | random | sex = male | 64 | 2 |" in report
