"""The alias history: one registered-model tag an entry, read back in order, every value within MLflow's limit."""

from __future__ import annotations

import json

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from medtl.errors import UserError
from medtl.mlops.tracking import alias_history as H


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    return MlflowClient(f"sqlite:///{tmp_path_factory.mktemp('history') / 'mlflow.db'}")


def _entry(i: int, **kw) -> H.Entry:
    fields = dict(model="m", alias="champion", action="refused", from_version="1", to_version="1",
                  candidate_run=f"run-{i}", candidate_version=None, by="tester", reason=f"entry {i}",
                  evidence={"metric": "best_val_f1", "margin": 0.01})
    return H.new_entry(**{**fields, **kw})


def test_many_entries_are_read_back_in_the_order_they_were_made(client):
    client.create_registered_model("m")
    keys = [H.append(client, _entry(i)) for i in range(40)]
    assert len(set(keys)) == 40  # never overwritten
    entries = H.read(client, "m")
    assert [e.reason for e in entries] == [f"entry {i}" for i in range(40)]
    assert [e.key for e in entries] == keys and entries[0].time <= entries[-1].time
    assert "refused" in entries[0].line() and "stays at 1" in entries[0].line() and "by tester" in entries[0].line()


def test_an_entry_never_exceeds_the_tag_value_limit():
    huge = _entry(0, reason="x" * 20_000, evidence={"metric": "best_val_f1", "margin": 0.1, "blob": "y" * 20_000})
    text = H.encode(huge)
    assert len(text) <= H.MAX_ENTRY_CHARS
    record = json.loads(text)
    assert record["evidence"]["truncated"] is True and record["evidence"]["margin"] == 0.1
    small = _entry(1)
    assert json.loads(H.encode(small))["evidence"] == {"metric": "best_val_f1", "margin": 0.01}


def test_an_unknown_model_is_one_line_naming_the_registered_ones(client):
    client.create_registered_model("finetuned-a")
    with pytest.raises(UserError, match="no registered model 'nope'; registered models: .*finetuned-a"):
        H.read(client, "nope")


@pytest.mark.integration
def test_entries_fit_postgresql_through_the_server_and_read_back_in_order(mlflow_server):
    """MLflow validates registered-model tag values up to 100,000 characters, but its PostgreSQL column holds 5,000."""
    client = MlflowClient(mlflow_server.uri)
    name = "history-on-postgres"
    client.create_registered_model(name)
    with pytest.raises(MlflowException):  # the limit the log is designed around
        client.set_registered_model_tag(name, "too-long", "x" * 6000)
    big = _entry(0, model=name, reason="r" * 3000, evidence={"metric": "best_val_f1", "margin": 0.1, "blob": "b" * 3000})
    for entry in (big, _entry(1, model=name), _entry(2, model=name)):
        H.append(client, entry)
    entries = H.read(client, name)
    assert [e.candidate_run for e in entries] == ["run-0", "run-1", "run-2"]
    assert entries[0].evidence["truncated"] is True and entries[1].reason == "entry 1"
