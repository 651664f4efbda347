"""Contract: the SQL reader's SELECTs match the pinned MLflow's schema and give what MLflow's client gives.

A fresh SQLite store is created by MLflow itself (its migrations, its version), a few runs are
logged through MlflowClient, and the SQL reader is compared with the client-based reader (the
one `http(s):` stores use) and with `get_metric_history`.
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

import pytest

from medtl.evaluation.collect import collect
from medtl.evaluation.readers import SQL_SCHEMA, _HttpReader, _SqlReader
from medtl.training import schema as S


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('contract') / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment(S.study_experiment("contract"))
    client.create_experiment(S.PRETRAIN_EXPERIMENT)
    made = {}
    for i, (stage, status) in enumerate(((S.Stage.FINETUNE, "FINISHED"), (S.Stage.FINETUNE, "FAILED"),
                                         (S.Stage.GRADCAM, "FINISHED"))):
        run = client.create_run(exp, run_name=f"run {i}", tags={S.STAGE_TAG: stage.value, S.TASK_TAG: "demo-binary",
                                                                S.ARCH_TAG: "resnet18", S.ARM_TAG: "imagenet"})
        rid = run.info.run_id
        client.log_batch(
            rid,
            params=[Param("task", "demo-binary"), Param("arch", "resnet18"), Param("lr", "0.001"),
                    Param("seed", str(i))],
            metrics=[Metric("val_f1", v, 1000 + s, s) for s, v in ((1, 0.5), (2, 0.6 + i / 10), (3, math.nan))]
            + [Metric("test_f1", 0.7 + i / 100, 2000, 0)],
            tags=[RunTag(S.FINGERPRINT_TAG, "abc")],
        )
        client.set_terminated(rid, status=status)
        made[rid] = stage
    return uri, exp, made


def test_mlflow_is_the_pinned_version():
    import mlflow

    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    pins = [d for d in pyproject["project"]["dependencies"] if d.startswith("mlflow==")]
    assert pins == [f"mlflow=={mlflow.__version__}"]


def test_every_selected_column_exists_in_mlflows_schema(store):
    import sqlalchemy

    inspector = sqlalchemy.inspect(sqlalchemy.create_engine(store[0]))
    for table, columns in SQL_SCHEMA.items():
        present = {c["name"] for c in inspector.get_columns(table)}
        assert set(columns) <= present, (table, set(columns) - present)


def test_sql_reader_matches_the_client_reader(store):
    uri, exp, made = store
    sql, client = _SqlReader(uri), _HttpReader(uri)
    assert sql.experiments() == client.experiments() == {"contract": exp}
    for a, b in zip(sql.runs(exp), client.runs(exp), strict=True):
        key = [c for c in ("run_id", "key") if c in a.columns]
        left = a.sort_values(key).reset_index(drop=True)
        right = b.sort_values(key).reset_index(drop=True)
        assert left.astype(str).equals(right.astype(str)), (left, right)
    gradcam = [r for r, stage in made.items() if stage is S.Stage.GRADCAM]
    assert sql.run_ids_tagged(exp, S.STAGE_TAG, S.Stage.GRADCAM.value) == gradcam
    assert client.run_ids_tagged(exp, S.STAGE_TAG, S.Stage.GRADCAM.value) == gradcam
    assert sql.fingerprint(S.study_experiment("contract"))[0] == exp
    assert sql.fingerprint("medtl/absent") is None and client.fingerprint("medtl/absent") is None


def test_sql_histories_match_get_metric_history(store):
    from mlflow.tracking import MlflowClient

    uri, exp, made = store
    frame = _SqlReader(uri).histories(exp, list(made), ["val_f1"], None)
    client = MlflowClient(uri)
    for rid in made:
        expected = sorted((m.step, m.value) for m in client.get_metric_history(rid, "val_f1"))
        got = sorted(frame.loc[frame["run_id"] == rid, ["step", "value"]].itertuples(index=False, name=None))
        assert len(got) == len(expected) == 3
        for (s1, v1), (s2, v2) in zip(got, expected, strict=True):
            assert s1 == s2 and (v1 == v2 or (math.isnan(v1) and math.isnan(v2)))


def test_collect_reads_the_finetune_runs_typed(store):
    uri, _, made = store
    data = collect("contract", uri)
    assert set(data.runs["run_id"]) == {r for r, s in made.items() if s is S.Stage.FINETUNE}
    assert data.runs["seed"].dtype == "Int64" and data.runs["lr"].dtype == float
    assert sorted(data.runs["status"]) == ["FAILED", "FINISHED"]
