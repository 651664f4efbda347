"""Promotion ranks the study's runs of one protocol fingerprint and full training data (fake store, no training)."""

from __future__ import annotations

import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from medtl.mlops.cli import main
from medtl.mlops.tracking.promote import candidates, version_tags
from medtl.training.spec import RunSpec


def _spec(**kw) -> RunSpec:
    return RunSpec(**{"task": "demo-binary", "arch": "resnet18", "image_size": 32, "max_epochs": 4, **kw})


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("medtl/promo")
    ids = {}

    def log(name, spec, val, start, tagged=True):
        tags = {"medtl.stage": "finetune", "medtl.run_key": spec.run_key}
        if tagged:
            tags["medtl.fingerprint"] = spec.fingerprint("dg")
        rid = client.create_run(exp, start_time=start, tags=tags).info.run_id
        params = {**spec.to_params(), "data_digest": "dg"}
        client.log_batch(rid, metrics=[Metric("best_val_f1", val, start, 0), Metric("best_val_loss", 0.5, start, 0)],
                         params=[Param(k, v) for k, v in params.items()])
        client.set_terminated(rid, "FINISHED")
        ids[name] = rid

    log("old_best", _spec(seed=0), 0.95, 1000, tagged=False)  # first protocol, logged before the tag existed
    log("old", _spec(seed=1), 0.80, 2000, tagged=False)
    log("reduced", _spec(seed=0, max_epochs=50, data_fraction=0.25), 0.99, 2500)
    log("new_best", _spec(seed=0, max_epochs=50), 0.85, 3000)  # the edited study file
    log("new", _spec(seed=1, max_epochs=50), 0.70, 4000)
    return uri, client, ids


def test_ranks_the_newest_protocol_at_full_data(store):
    uri, client, ids = store
    (cell, cand), = candidates(client, "promo").items()
    assert cell == ("demo-binary", "resnet18")
    # 0.99 is reduced data and 0.95 another protocol: neither competes
    assert cand.run.info.run_id == ids["new_best"] and cand.other_fingerprints == 1
    assert cand.fingerprint == _spec(max_epochs=50).fingerprint("dg")


def test_told_otherwise_by_fingerprint_or_fraction(store):
    uri, client, ids = store
    old = _spec().fingerprint("dg")  # recomputed from params for the untagged runs
    (cand,) = candidates(client, "promo", fingerprint=old[:6]).values()
    assert cand.run.info.run_id == ids["old_best"] and cand.fingerprint == old
    reduced = _spec(max_epochs=50, data_fraction=0.25).fingerprint("dg")
    (cand,) = candidates(client, "promo", fraction=None, fingerprint=reduced).values()
    assert cand.run.info.run_id == ids["reduced"]
    with pytest.raises(Exception, match="no finished fine-tuning runs of fingerprint ffff at training fraction 1"):
        candidates(client, "promo", fingerprint="ffff")


def test_version_tags_name_study_and_fingerprint(store):
    _, client, ids = store
    run = client.get_run(ids["new_best"])
    spec = RunSpec.from_params(run.data.params)
    tags = version_tags("promo", spec, run, "abc123")
    assert tags["medtl.study"] == "promo" and tags["medtl.fingerprint"] == "abc123"
    assert tags["spec.max_epochs"] == "50" and tags["metric.best_val_f1"] == "0.85"


def test_cli_dry_run_says_which_protocol(store, capsys):
    uri, _, ids = store
    assert main(["promote", "--study", "promo", "--dry-run", "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert f"would register (run {ids['new_best']}" in out
    assert f"fingerprint {_spec(max_epochs=50).fingerprint('dg')}; 1 other protocol(s)" in out
    assert main(["promote", "--study", "promo", "--dry-run", "--fraction", "2", "--tracking-uri", uri]) == 2
    assert "--fraction must be a number in (0, 1] or 'any'" in capsys.readouterr().err
