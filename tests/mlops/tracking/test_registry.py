"""Pretraining → registry → domain fine-tuning → promotion, end to end on the demo archive."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from medtl.mlops.cli import main
from medtl.mlops.tracking.model_card import CARD_TAG
from medtl.mlops.tracking.pretraining import run_pretrain as pretrain
from medtl.mlops.tracking.promote import history, promote, promote_version
from medtl.mlops.tracking.registry import CHAMPION, PREVIOUS
from medtl.mlops.tracking.runner import run_spec
from medtl.training import schema as S
from medtl.training.archive.deid import keyed
from medtl.training.spec import PretrainSpec, RunSpec

KEY = b"test-key-0123456789abcdef"


def _card(client: MlflowClient, name: str, version: str, folder: Path) -> tuple[str, dict]:
    """The Markdown and JSON of a version's model card, downloaded from its run's artifacts."""
    uri = client.get_model_version(name, version).tags[CARD_TAG]
    run_id, path = uri.removeprefix("runs:/").split("/", 1)
    local = Path(client.download_artifacts(run_id, path.rsplit("/", 1)[0], str(folder)))
    return (local / "model_card.md").read_text(), json.loads((local / "model_card.json").read_text())


@pytest.fixture(scope="module")
def archive_set(tmp_path_factory) -> Path:
    from medtl.training.archive.demo_archive import write_demo_archive
    from medtl.training.archive.ingest import ingest
    from medtl.training.archive.pseudolabel import pseudolabel

    root = tmp_path_factory.mktemp("archive")
    write_demo_archive(root / "archive")
    ingest(root / "archive", root / "set", key=KEY, progress=False)
    pseudolabel(root / "set", clusters=6)
    return root / "set"


@pytest.fixture(scope="module")
def store(tmp_path_factory, archive_set):
    """One pretraining run of resnet18 (2 epochs) registered in a fresh store."""
    folder = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        spec = PretrainSpec(arch="resnet18", data=str(archive_set), max_epochs=2, image_size=32, batch_size=16)
        outcome, registered = pretrain(spec, tracking_uri=uri)
    finally:
        os.chdir(cwd)
    return uri, outcome, registered, folder


def test_pretraining_registers_a_champion(store, archive_set):
    uri, outcome, registered, _ = store
    client = MlflowClient(uri)
    run = client.get_run(outcome.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["medtl.stage"] == "pretrain"
    assert client.get_experiment(run.info.experiment_id).name == "medtl/pretrain"
    assert [m.step for m in client.get_metric_history(outcome.run_id, "val_loss")] == [1, 2]
    assert registered.name == "pretrained-resnet18" and registered.version == "1" and registered.champion
    version = client.get_model_version_by_alias("pretrained-resnet18", CHAMPION)
    assert str(version.version) == "1" and version.tags[S.RUN_TAG] == outcome.run_id
    assert outcome.result is not None and outcome.result.best_checkpoint.name == "best.pt"
    assert run.data.tags["mlflow.note.content"].startswith("Pretraining of resnet18")
    # The model card: the version's description, and artifacts of its run; the archive named by its key id.
    md, card = _card(client, "pretrained-resnet18", "1", store[3] / "card")
    assert version.description == md and md.startswith("# pretrained-resnet18 — version 1")
    deid = card["deidentification"]
    assert deid["key_id"] == keyed(KEY, "key-check", "medtl") and deid["patients"] > 0 and "CT" in deid["modalities"]
    assert version.tags["medtl.deid.key_id"] == deid["key_id"] and version.tags[S.FINGERPRINT_TAG] == card["protocol"]["fingerprint"]
    assert card["calibration"]["status"] == "measured on the test split" and card["calibration"]["test_ece"] is not None
    for text in (md, json.dumps(card)):
        assert KEY.decode() not in text and str(archive_set) not in text and str(store[3]) not in text
    (entry,) = history("pretrained-resnet18", uri)
    assert (entry.action, entry.to_version) == ("moved", "1") and "first" in entry.reason
    import mlflow

    mlflow.set_tracking_uri(uri)
    model = mlflow.pytorch.load_model("models:/pretrained-resnet18@champion")
    import torch

    assert model(torch.rand(2, 1, 32, 32)).shape == (2, 6)
    from importlib.metadata import version as installed

    folder = Path(mlflow.artifacts.download_artifacts("models:/pretrained-resnet18/1", dst_path=str(store[3] / "dl")))
    requirements = (folder / "requirements.txt").read_text().split()
    assert f"medtl=={installed('medtl')}" in requirements and f"torch=={torch.__version__.split('+')[0]}" in requirements


def test_domain_finetune_loads_the_whole_backbone_from_the_registry(store, monkeypatch):
    uri, outcome, registered, folder = store
    monkeypatch.chdir(folder)
    spec = RunSpec(task="demo-binary", arch="resnet18", init="domain", max_epochs=1, image_size=32)
    result = run_spec(spec, study="reg", tracking_uri=uri)
    client = MlflowClient(uri)
    run = client.get_run(result.run_id)
    assert run.data.params["init_resolved"] == "pretrained-resnet18/1"
    assert run.data.params["init_source"] == "models:/pretrained-resnet18@champion"
    report = json.loads(Path(client.download_artifacts(result.run_id, "transfer_report.json", str(folder / "dl"))).read_text())
    assert report["missing"] == [] or all(k.startswith("head") for k in report["missing"])
    from medtl.training.archs import build_body, get_arch

    body, _ = build_body(get_arch("resnet18"))
    assert report["loaded"] == len(body.state_dict())
    # Its model card names the pretrained source version and the de-identification it carried.
    (done,) = promote("reg", tracking_uri=uri)
    assert (done.action, done.champion) == ("moved", "1")
    _, card = _card(client, "finetuned-demo-binary-resnet18", "1", folder / "card-reg")
    assert card["initialisation"]["pretrained_version"] == "pretrained-resnet18/1"
    assert card["deidentification"]["key_id"] == keyed(KEY, "key-check", "medtl")
    assert card["deidentification"]["applies_to"] == "the pretraining archive of pretrained-resnet18/1"


def test_domain_without_a_registered_model_says_which_pretrain_to_run(store, monkeypatch, capsys):
    uri, *_, folder = store
    monkeypatch.chdir(folder)
    code = main(["run", "--task", "demo-binary", "--arch", "resnet34", "--init", "domain", "--image-size", "32", "--tracking-uri", uri])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "run `medtl pretrain --arch resnet34 --data DIR` first" in err


def test_promote_picks_best_validation_run_and_is_idempotent(store, monkeypatch):
    uri, *_, folder = store
    monkeypatch.chdir(folder)
    for seed in (0, 1):
        run_spec(RunSpec(task="demo-multiclass", arch="mobilenet_v3_small", max_epochs=1, image_size=32, seed=seed), study="promo", tracking_uri=uri)
    first = promote("promo", tracking_uri=uri)
    assert len(first) == 1 and (first[0].action, first[0].registered) == ("moved", True)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("medtl/promo")
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`medtl.stage` = 'finetune'")
    best = max(runs, key=lambda r: (r.data.metrics["best_val_f1"], -r.data.metrics["best_val_loss"]))
    version = client.get_model_version_by_alias("finetuned-demo-multiclass-mobilenet_v3_small", CHAMPION)
    assert version.tags[S.RUN_TAG] == best.info.run_id
    assert "spec.lr" in version.tags and "metric.test_f1" in version.tags
    second = promote("promo", tracking_uri=uri)
    assert [p.action for p in second] == ["kept"]
    assert len(client.search_model_versions("name = 'finetuned-demo-multiclass-mobilenet_v3_small'")) == 1
    entries = history("finetuned-demo-multiclass-mobilenet_v3_small", uri)
    assert [e.action for e in entries] == ["moved", "kept"] and "already holds champion" in entries[1].reason
    md, card = _card(client, "finetuned-demo-multiclass-mobilenet_v3_small", "1", folder / "card-promo")
    assert card["verdict"]["text"].startswith("unavailable") or "demo-multiclass / mobilenet_v3_small" in card["verdict"]["text"]
    assert card["metrics"]["test"]["test_f1"] == best.data.metrics["test_f1"] and "test_ece" in card["metrics"]["test"]
    # The promoted model answers `medtl predict`.
    import numpy as np
    from PIL import Image

    Image.fromarray((np.random.default_rng(0).random((40, 50)) * 255).astype("uint8")).save(folder / "x.png")
    assert main(["predict", "--model", "models:/finetuned-demo-multiclass-mobilenet_v3_small@champion", str(folder / "x.png"), "--out", str(folder / "p.csv"), "--tracking-uri", uri]) == 0
    text = (folder / "p.csv").read_text()
    assert text.startswith("path,prediction,prob_disc,prob_square,prob_ring,prob_stripes")


def test_promote_refuses_a_study_without_finished_runs(store, capsys):
    uri, *_ = store
    assert main(["promote", "--study", "nothing-here", "--tracking-uri", uri]) == 2
    assert "unknown study 'nothing-here'; known studies:" in capsys.readouterr().err


def test_missing_model_uri_is_one_line(store, tmp_path, capsys):
    uri, *_ = store
    (tmp_path / "x.png").write_bytes(b"")
    assert main(["predict", "--model", "models:/finetuned-nope@champion", str(tmp_path / "x.png"), "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "models:/finetuned-nope@champion does not exist" in err


def test_pretraining_moves_champion_only_through_the_gate(store, archive_set, monkeypatch, capsys):
    uri, outcome, registered, folder = store
    monkeypatch.chdir(folder)
    client = MlflowClient(uri)
    # Another budget (max_epochs 1, not 2) is another protocol: never compared, whatever its metric.
    spec = PretrainSpec(arch="resnet18", data=str(archive_set), max_epochs=1, image_size=32, batch_size=16, seed=5, lr=3e-3)
    _, again = pretrain(spec, tracking_uri=uri)
    assert not again.champion and again.previous_champion is None
    assert str(client.get_model_version_by_alias("pretrained-resnet18", CHAMPION).version) == "1"
    refusal = history("pretrained-resnet18", uri)[-1]
    assert (refusal.action, refusal.candidate_version, refusal.to_version) == ("refused", again.version, "1")
    assert "not comparable" in refusal.reason
    assert CARD_TAG in client.get_model_version("pretrained-resnet18", again.version).tags  # a card either way
    # The same gate answers `medtl promote --model/--version`: a dry run says so and writes nothing, a forced
    # move records its reason, and moving back is refused for the same fingerprint reason.
    assert main(["promote", "--model", "pretrained-resnet18", "--version", again.version, "--dry-run", "--tracking-uri", uri]) == 0
    assert "would refuse; champion stays at 1" in capsys.readouterr().out
    forced = promote_version("pretrained-resnet18", again.version, tracking_uri=uri, force=True, reason="longer budget agreed")
    assert (forced.action, forced.champion, forced.holder) == ("forced", again.version, "1")
    assert str(client.get_model_version_by_alias("pretrained-resnet18", PREVIOUS).version) == "1"
    back = promote_version("pretrained-resnet18", "1", tracking_uri=uri)
    assert back.action == "refused" and back.champion == again.version
    actions = [e.action for e in history("pretrained-resnet18", uri)]
    assert actions[-3:] == ["refused", "forced", "refused"] and actions[0] == "moved"
    assert main(["promote", "--model", "pretrained-resnet18", "--version", "1", "--force", "--tracking-uri", uri]) == 2


def test_registered_weights_are_downloaded_once_per_version_and_follow_the_alias(store, archive_set, monkeypatch):
    import mlflow

    from medtl.mlops.tracking.registry import resolve_weights
    from medtl.training.checkpoint import load_checkpoint

    uri, _, _, folder = store
    monkeypatch.chdir(folder)
    client = MlflowClient(uri)
    if len(client.search_model_versions("name = 'pretrained-resnet18'")) < 2:
        spec = PretrainSpec(arch="resnet18", data=str(archive_set), max_epochs=1, image_size=32, batch_size=16, seed=7)
        pretrain(spec, tracking_uri=uri)
    monkeypatch.setattr("medtl.mlops.tracking.registry._WEIGHTS", {})  # forget earlier tests' copies
    downloads = []
    real = mlflow.artifacts.download_artifacts
    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", lambda *a, **k: downloads.append(a) or real(*a, **k))
    paths = {}
    for number in ("1", "2"):
        client.set_registered_model_alias("pretrained-resnet18", "cache-test", number)
        first = resolve_weights("models:/pretrained-resnet18@cache-test", uri, folder / f"w{number}a")
        again = resolve_weights("models:/pretrained-resnet18@cache-test", uri, folder / f"w{number}b")
        assert first.version == again.version == number and first.path == again.path
        paths[number] = first.path
    assert len(downloads) == 2  # one per version, none for the second ask
    assert paths["1"] != paths["2"]
    for number, path in paths.items():
        registered = Path(real(f"models:/pretrained-resnet18/{number}/extra_files/best.pt", dst_path=str(folder / f"ref{number}")))
        assert path.read_bytes() == registered.read_bytes()
        assert load_checkpoint(path)["meta"]["spec"]["seed"] == client.get_model_version("pretrained-resnet18", number).tags["spec.seed"]


@pytest.mark.slow
def test_ddp_pretraining_with_two_gloo_processes_logs_one_run_and_one_version(archive_set, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
        "-m", "medtl.mlops.cli", "pretrain", "--arch", "mobilenet_v3_small", "--data", str(archive_set),
        "--max-epochs", "2", "--image-size", "32", "--batch-size", "8", "--tracking-uri", uri,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("medtl/pretrain")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "val_loss")] == [1, 2]
    assert runs[0].data.params["torch_threads"]
    assert runs[0].data.params["world_size"] == "2"
    assert runs[0].data.params["sync_batchnorm"] == "False"  # CPU/gloo: torch's SyncBatchNorm needs an accelerator
    versions = client.search_model_versions("name = 'pretrained-mobilenet_v3_small'")
    assert len(versions) == 1
