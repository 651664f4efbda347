"""Model cards of fine-tuned versions on a fake study store: every section, the study's verdict and intervals, no path."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from medtl.mlops.cli import main
from medtl.mlops.tracking.model_card import CARD_TAG, deid_facts
from medtl.mlops.tracking.promote import promote
from medtl.training.archive.deid import keyed

MODEL = "finetuned-demo-binary-resnet18"
DATA = "/hospital/exports/PATIENT-Jane-Doe-1958"
WEIGHTS = "/home/radiologist/weights/RadiologyNET-ResNet18.pth"


def _card(client: MlflowClient, folder: Path, version: str = "1") -> tuple[str, dict]:
    uri = client.get_model_version(MODEL, version).tags[CARD_TAG]
    run_id, path = uri.removeprefix("runs:/").split("/", 1)
    local = Path(client.download_artifacts(run_id, path.rsplit("/", 1)[0], str(folder)))
    return (local / "model_card.md").read_text(), json.loads((local / "model_card.json").read_text())


@pytest.fixture
def study(gated):
    """Three arms, five seeds each, the domain arm best; the data and the weights file named by paths."""
    uri, client, log = gated
    for seed in range(5):
        log(seed, 0.65 + 0.01 * seed, dataset=DATA)
        log(seed, 0.75 + 0.01 * seed, init="imagenet", dataset=DATA)
        log(seed, 0.85 + 0.01 * seed, init="domain", init_source=WEIGHTS, dataset=DATA)
    return uri, client, log


def test_a_card_has_every_section_and_the_studys_answer(study, tmp_path):
    uri, client, _ = study
    (done,) = promote("gate", tracking_uri=uri)
    assert done.other_fingerprints == 1  # the fixture's first five runs read synthetic data: another protocol
    md, card = _card(client, tmp_path / "dl")
    assert list(card) == ["schema", "generated", "model", "task", "architecture", "initialisation", "protocol", "data",
                          "deidentification", "training", "metrics", "calibration", "verdict", "intended_use", "software"]
    assert card["model"]["run_id"] == done.run_id and card["model"]["study"] == "gate"
    assert card["initialisation"]["arm"] == "domain" and card["initialisation"]["pretrained_version"] == "pretrained-resnet18/1"
    assert card["data"]["split_sizes"] == {"train": 256, "val": 64, "test": 128} and card["data"]["digest"] == "dg"
    assert card["protocol"]["fingerprint"] == done.fingerprint
    intervals = card["metrics"]["intervals"]["by_arm"]
    assert set(intervals) == {"random", "imagenet", "domain"}
    f1 = intervals["domain"]["test_f1"]
    assert f1["n"] == 5 and f1["low"] < f1["mean"] < f1["high"] and f1["mean"] == pytest.approx(0.82)
    assert card["calibration"]["test_ece"] == 0.04 and card["calibration"]["test_brier"] == 0.12
    # The cell is split from the fixture's synthetic-data runs: evaluation labels it with the differing dataset,
    # whose path the card withholds.
    assert card["verdict"]["text"].startswith("demo-binary / resnet18 [dataset=[path withheld]]: domain is best")
    assert card["verdict"]["best_arm"] == "domain" and card["verdict"]["significant"] is True
    assert card["software"]["torch"] == "2.x"
    for heading in ("## De-identification", "## Training budget and emissions", "## Metrics", "## Calibration",
                    "## The study's verdict", "## Intended use and limitations", "## Software and environment"):
        assert heading in md
    assert client.get_model_version(MODEL, "1").description == md  # short enough to be the description itself


def test_a_card_never_holds_a_path(study, tmp_path):
    uri, client, _ = study
    promote("gate", tracking_uri=uri)
    md, card = _card(client, tmp_path / "dl")
    description = client.get_model_version(MODEL, "1").description
    for text in (md, json.dumps(card), description):
        for secret in (DATA, WEIGHTS, "Jane", "radiologist", "/hospital", "/home/"):
            assert secret not in text
    assert card["initialisation"]["source"] == "a local weights file (path withheld)"
    assert card["data"]["dataset"] == "the task's dataset folder (path withheld)"


def test_the_user_template_replaces_intended_use(gated, tmp_path, capsys):
    uri, client, _ = gated
    template = tmp_path / "card.md"
    template.write_text("**Intended use.** $name (version $version) serves $task triage research only.\n")
    assert main(["promote", "--study", "gate", "--card-template", str(template), "--tracking-uri", uri]) == 0
    assert "model card: runs:/" in capsys.readouterr().out
    md, card = _card(client, tmp_path / "dl")
    assert card["intended_use"].startswith(f"**Intended use.** {MODEL} (version 1) serves demo-binary triage research")
    assert "serves demo-binary triage research only." in md
    assert main(["promote", "--study", "gate", "--card-template", str(tmp_path / "nope.md"), "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--card-template" in err and "cannot read it" in err


def test_calibration_is_unknown_for_a_run_logged_before_it(gated, tmp_path):
    uri, client, log = gated
    log(9, 0.99, metrics={"best_val_f1": 0.99, "best_val_loss": 0.4, "test_f1": 0.9})
    promote("gate", tracking_uri=uri)
    _, card = _card(client, tmp_path / "dl")
    assert card["calibration"]["status"].startswith("unknown: the run predates calibration metrics")


def test_deid_facts_name_the_key_by_its_id_and_count_patients(tmp_path):
    folder = tmp_path / "set"
    folder.mkdir()
    key = b"a-secret-key-of-the-hospital-0123"
    (folder / ".medtl-ingest.json").write_text(json.dumps({"key_check": keyed(key, "key-check", "medtl"), "image_size": 64,
                                                           "version": 1}))
    pd.DataFrame({"modality": ["CT", "MR", "CT"], "patient_key": ["p1", "p1", "p2"]}).to_parquet(folder / "manifest.parquet")
    pd.DataFrame({"source_key": ["s1"], "reason": ["burned-in text"]}).to_csv(folder / "skipped.csv", index=False)
    facts = deid_facts(folder)
    assert facts["key_id"] == keyed(key, "key-check", "medtl") and key.decode() not in json.dumps(facts)
    assert (facts["images"], facts["patients"], facts["modalities"], facts["skipped_at_ingest"]) == (3, 2, ["CT", "MR"], 1)
    assert "p1" not in json.dumps(facts)
    assert deid_facts(tmp_path / "missing")["status"].startswith("unknown")
