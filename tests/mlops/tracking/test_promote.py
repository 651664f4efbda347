"""Promotion ranks the study's runs of one protocol fingerprint and full training data, then passes the gate
and writes the history (fake store, no training: versions are registered without a network, see conftest's `gated`)."""

from __future__ import annotations

import json

import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from medtl.mlops.cli import main
from medtl.mlops.tracking.gate import seed_interval
from medtl.mlops.tracking.promote import candidates, history, promote, version_tags
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
    assert f"would move; champion none -> a new version; candidate run {ids['new_best']} (not registered)" in out
    assert f"fingerprint {_spec(max_epochs=50).fingerprint('dg')}; 1 other protocol(s)" in out
    assert "why: no version holds the alias yet" in out
    assert main(["promote", "--study", "promo", "--dry-run", "--fraction", "2", "--tracking-uri", uri]) == 2
    assert "--fraction must be a number in (0, 1] or 'any'" in capsys.readouterr().err


# ---------------------------------------------------------------- the gate and the history


MODEL = "finetuned-demo-binary-resnet18"


def _versions(client) -> int:  # noqa: ANN001
    return len(client.search_model_versions(f"name = '{MODEL}'"))


def test_promoting_twice_moves_once_and_the_history_says_why(gated, capsys):
    uri, client, _ = gated
    (first,) = promote("gate", tracking_uri=uri)
    assert (first.action, first.champion, first.registered) == ("moved", "1", True)
    assert first.card and first.card.endswith("/model_card.md")
    (second,) = promote("gate", tracking_uri=uri)
    assert (second.action, second.champion, second.registered, second.card) == ("kept", "1", False, None)
    assert _versions(client) == 1
    entries = history(MODEL, uri)
    assert [(e.action, e.from_version, e.to_version) for e in entries] == [("moved", None, "1"), ("kept", "1", "1")]
    assert "already holds champion" in entries[1].reason and entries[1].study == "gate" and entries[1].by
    assert main(["promote", "--history", MODEL, "--tracking-uri", uri]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and "moved" in lines[0] and "champion: none -> 1" in lines[0]
    assert "kept" in lines[1] and "stays at 1" in lines[1]
    assert main(["promote", "--history", MODEL, "--json", "--tracking-uri", uri]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["action"] for r in records] == ["moved", "kept"] and records[0]["evidence"]["metric"] == "best_val_f1"


def test_a_candidate_within_the_seed_interval_is_refused_then_a_clearly_better_one_moves(gated):
    uri, client, log = gated
    promote("gate", tracking_uri=uri)
    log(5, 0.785)  # better than the holder's 0.78 by 0.005: within the seeds' spread
    (refused,) = promote("gate", tracking_uri=uri)
    assert (refused.action, refused.champion, refused.registered) == ("refused", "1", False)
    assert _versions(client) == 1  # a refused run is not registered
    entry = history(MODEL, uri)[-1]
    family = [0.70, 0.72, 0.74, 0.76, 0.78, 0.785]
    assert entry.action == "refused" and entry.to_version == "1" and entry.candidate_version is None
    assert entry.evidence["margin"] == pytest.approx(seed_interval(family).half_width)
    assert entry.evidence["improvement"] == pytest.approx(0.005) and entry.evidence["seed_interval"]["n"] == 6
    assert "not more than the margin" in entry.reason
    log(6, 0.95)
    (moved,) = promote("gate", tracking_uri=uri)
    assert (moved.action, moved.champion, moved.holder) == ("moved", "2", "1")
    assert str(client.get_model_version_by_alias(MODEL, "previous-champion").version) == "1"
    new, old = client.get_model_version(MODEL, "2"), client.get_model_version(MODEL, "1")
    assert new.tags["medtl.alias.champion.from"] == "1" and "more than the margin" in new.tags["medtl.alias.champion.reason"]
    assert old.tags["medtl.alias.champion.until"] == new.tags["medtl.alias.champion.since"]
    assert [e.action for e in history(MODEL, uri)] == ["moved", "refused", "moved"]


def test_a_forced_promotion_records_its_reason(gated, capsys):
    uri, client, log = gated
    promote("gate", tracking_uri=uri)
    for seed in (0, 1):
        log(seed, 0.5, max_epochs=50)  # an edited study: a new protocol, newest, so it is the one ranked
    (refused,) = promote("gate", tracking_uri=uri)
    assert refused.action == "refused" and "not comparable" in refused.reason
    code = main(["promote", "--study", "gate", "--force", "--reason", "new protocol approved by the board",
                 "--tracking-uri", uri])
    assert code == 0 and "forced; champion 1 -> 2" in capsys.readouterr().out
    entries = history(MODEL, uri)
    assert [e.action for e in entries] == ["moved", "refused", "forced"]
    assert entries[-1].reason == "forced: new protocol approved by the board"
    assert entries[-1].evidence["gate_alone"].startswith("refused: ") and "fingerprint" in entries[-1].evidence["gate_alone"]
    tags = client.get_model_version(MODEL, "2").tags
    assert tags["medtl.alias.champion.reason"] == "forced: new protocol approved by the board"
    assert str(client.get_model_version_by_alias(MODEL, "previous-champion").version) == "1"


def test_a_forced_promotion_without_reason_exits_2_and_writes_nothing(gated, capsys):
    uri, client, _ = gated
    assert main(["promote", "--study", "gate", "--force", "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--force needs --reason" in err
    assert client.search_registered_models() == []


def _snapshot(client, folder):  # noqa: ANN001
    models = {}
    for m in client.search_registered_models():
        versions = {str(v.version): (dict(v.tags), v.description) for v in client.search_model_versions(f"name = '{m.name}'")}
        models[m.name] = (dict(m.tags), dict(m.aliases), versions)
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    return models, files


def test_dry_run_prints_what_would_move_and_writes_nothing(gated, tmp_path, capsys):
    uri, client, log = gated
    promote("gate", tracking_uri=uri)
    log(5, 0.99)
    before = _snapshot(client, tmp_path / "artifacts")
    assert main(["promote", "--study", "gate", "--dry-run", "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert "would move; champion 1 -> a new version" in out and "more than the margin" in out
    assert main(["promote", "--study", "gate", "--dry-run", "--force", "--reason", "r", "--tracking-uri", uri]) == 0
    assert "would force" in capsys.readouterr().out
    assert _snapshot(client, tmp_path / "artifacts") == before
    assert [e.action for e in history(MODEL, uri)] == ["moved"]
