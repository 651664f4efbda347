"""collect: every fine-tuning run of a study, typed, flagged, with histories; SQL and HTTP agree."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from medtl.errors import UserError
from medtl.evaluation.collect import (
    FINAL_METRICS,
    UnknownStudyError,
    collect,
    fingerprint,
    list_studies,
)
from medtl.training import schema as S

from .conftest import EPOCHS, STUDY


@pytest.fixture(scope="module")
def data(synthetic_store):
    return collect(STUDY, synthetic_store.uri)


def test_list_studies_skips_pretrain_and_other_experiments(synthetic_store):
    assert list_studies(synthetic_store.uri) == ["other", "synth"]


def test_every_finetune_run_and_nothing_else(data, synthetic_store):
    runs = data.runs
    assert set(runs["run_id"]) == synthetic_store.finetune
    assert synthetic_store.sweep_parent not in set(runs["run_id"])
    assert runs["run_id"].is_unique


def test_failed_and_diverged_runs_are_kept_and_flagged(data, synthetic_store):
    runs = data.runs.set_index("run_id")
    assert set(runs.index[runs["failed"]]) == synthetic_store.failed
    assert set(runs.index[runs["diverged"]]) == synthetic_store.diverged
    assert (runs.loc[list(synthetic_store.failed), "status"] == "FAILED").all()
    assert runs.loc[list(synthetic_store.failed), "failure_reason"].str.contains("synthetic").all()
    diverged = runs.loc[next(iter(synthetic_store.diverged))]
    assert diverged["status"] == "FINISHED" and math.isnan(diverged["test_mae"])


def test_types_and_values(data, synthetic_store):
    runs = data.runs
    assert runs["lr"].dtype == float and runs["data_fraction"].dtype == float
    assert str(runs["seed"].dtype) == "Int64" and runs["diverged"].dtype == bool
    assert set(FINAL_METRICS) <= set(runs.columns)
    assert set(runs["arm"]) == {"random", "imagenet", "domain", "domain-CR"}
    assert sorted(runs["data_fraction"].dropna().unique()) == [0.25, 1.0]
    one = runs.set_index("run_id")
    for rid, expected in synthetic_store.expected.items():
        for key, value in expected.items():
            got = one.at[rid, key] if key != "diverged" else float(one.at[rid, "diverged"])
            assert (math.isnan(value) and math.isnan(got)) or got == pytest.approx(value), (rid, key)


def test_run_without_params_falls_back_to_tags(data, synthetic_store):
    row = data.runs.set_index("run_id").loc[synthetic_store.no_params]
    assert (row["task"], row["arch"], row["arm"]) == ("demo-binary", "mobilenet_v3_small", "imagenet")
    assert math.isnan(row["lr"]) and row["failed"]


def test_histories_are_complete_and_steps_start_at_one(data, synthetic_store):
    hist = data.histories
    assert list(hist.columns) == ["run_id", "key", "step", "value"]
    last = hist.groupby(["run_id", "key"])["step"].max().to_dict()
    assert last == synthetic_store.history_points
    assert hist["step"].min() == 1
    assert not hist.duplicated(["run_id", "key", "step"]).any()


def test_history_selection(synthetic_store):
    part = collect(STUDY, synthetic_store.uri, primary_only=True, max_step=2)
    assert set(part.histories["key"]) == {"val_f1", "val_mae"}
    assert part.histories["step"].max() == 2
    keys = collect(STUDY, synthetic_store.uri, history_keys=["train_loss"]).histories
    assert set(keys["key"]) == {"train_loss"}
    assert keys["step"].max() == max(synthetic_store.history_points.values()) > EPOCHS


def test_unknown_study_lists_known_ones(synthetic_store):
    with pytest.raises(UnknownStudyError, match="known studies: other, synth"):
        collect("nope", synthetic_store.uri)
    with pytest.raises(UserError, match="invalid study name"):
        collect("../etc", synthetic_store.uri)


def test_missing_sqlite_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no MLflow store"):
        list_studies(f"sqlite:///{tmp_path / 'absent.db'}")
    assert not (tmp_path / "absent.db").exists()


def test_default_uri_rule(monkeypatch, tmp_path):
    assert S.resolve_tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////x.db")
    assert S.resolve_tracking_uri() == "sqlite:////x.db"
    assert S.resolve_tracking_uri("http://h:1") == "http://h:1"


def test_fingerprint_is_stable(synthetic_store):
    assert fingerprint(STUDY, synthetic_store.uri) == fingerprint(STUDY, synthetic_store.uri)
    assert fingerprint(STUDY, synthetic_store.uri) != fingerprint("other", synthetic_store.uri)


@pytest.mark.integration
def test_http_path_agrees_with_sql_path(data, synthetic_store, store_server):
    remote = collect(STUDY, store_server)
    assert list_studies(store_server) == ["other", "synth"]
    pd.testing.assert_frame_equal(remote.runs, data.runs)
    pd.testing.assert_frame_equal(remote.histories, data.histories)
    part = collect(STUDY, store_server, primary_only=True, max_step=3)
    assert set(part.histories["key"]) == {"val_f1", "val_mae"} and part.histories["step"].max() == 3
    # The HTTP token is built from other calls than the SQL one; the parts both read must agree:
    # the experiment and its update time, the latest start and the latest end of its runs.
    over_http, over_sql = fingerprint(STUDY, store_server), fingerprint(STUDY, synthetic_store.uri)
    assert (str(over_http[0]), over_http[1]) == (str(over_sql[0]), over_sql[1])  # REST gives the id as text
    _, latest_start, _, _ = over_http[2]
    _, _, latest_end, _ = over_http[3]
    assert (latest_start, latest_end) == (over_sql[3], over_sql[4])
