"""Pseudo-labelling of the demo archive, cluster pruning, and the pretraining dataset over it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.cluster import KMeans
from sklearn.metrics import homogeneity_score

from medtl.training.archive.demo_archive import write_demo_archive
from medtl.training.archive.ingest import ingest
from medtl.training.archive.pretrain_set import load_pretrain, oversampling_weights, split_patients
from medtl.training.archive.pseudolabel import (
    image_features,
    normalised_entropy,
    pseudolabel,
    summarise,
)
from medtl.training.data.base import DataError

KEY = b"pseudolabel-test-key-0123"


@pytest.fixture(scope="module")
def ingested(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pl")
    write_demo_archive(root / "archive", seed=3, patients=6)
    ingest(root / "archive", root / "out", key=KEY, progress=False)
    return root / "out"


@pytest.fixture()
def labelled(ingested, tmp_path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(ingested, out)
    pseudolabel(out, clusters=6, seed=0)
    return out


def _groups(manifest: pd.DataFrame) -> pd.Series:
    return manifest["modality"] + "/" + manifest["body_part"]


def test_pseudolabels_recover_modality_and_body_part_groups(labelled):
    manifest = pd.read_parquet(labelled / "manifest.parquet")
    groups = _groups(manifest)
    assert homogeneity_score(groups, manifest["label"]) > 0.9
    chance = homogeneity_score(groups, np.random.default_rng(0).integers(0, 6, len(manifest)))
    assert chance < 0.5
    summary = pd.read_csv(labelled / "clusters.csv")
    assert list(summary.columns[:3]) == ["cluster", "size", "modality_composition"]
    assert summary["size"].sum() == len(manifest) and summary["kept"].all()
    assert sorted(p.name for p in (labelled / "clusters").glob("*.png")) == [f"cluster_{c:02d}.png" for c in range(6)]


def test_image_embeddings_alone_separate_the_groups(ingested):
    manifest = pd.read_parquet(ingested / "manifest.parquet")
    features = image_features(ingested, list(manifest["image_path"]), seed=0)
    ids = KMeans(6, random_state=0, n_init=10).fit_predict(features)
    assert homogeneity_score(_groups(manifest), ids) > 0.7


def test_normalised_entropy_known_values():
    assert normalised_entropy(["CT"] * 8, 3) == 0.0
    assert normalised_entropy(["CT", "MR"] * 4, 2) == pytest.approx(1.0)
    assert normalised_entropy(["CT", "MR"] * 4, 4) == pytest.approx(0.5)


def test_heterogeneous_clusters_are_dropped():
    manifest = pd.DataFrame({
        "modality": ["CT"] * 6 + ["CT", "MR", "CR", "CT", "MR", "CR"],
        "body_part": ["head"] * 6 + ["head", "chest", "lower_limb", "chest", "head", "lower_limb"],
    })
    clusters = np.array([0] * 6 + [1] * 6)
    summary = summarise(manifest, clusters, max_entropy=0.5)
    assert summary.set_index("cluster")["kept"].to_dict() == {0: True, 1: False}
    assert summary.loc[1, "modality_entropy"] > 0.5


def test_dropped_clusters_get_label_minus_one(ingested, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(ingested, out)
    result = pseudolabel(out, clusters=2, seed=0, max_entropy=0.3)  # 2 clusters for 6 groups: mixed
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert (manifest["label"] == -1).sum() == int(len(manifest) - result.metrics["kept_images"]) > 0
    assert result.metrics["dropped_clusters"] >= 1


def test_report_text_features_and_bad_reports(ingested, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(ingested, out)
    manifest = pd.read_parquet(out / "manifest.parquet")
    studies = manifest.drop_duplicates("study_key")
    words = {"head": "skull brain normal", "chest": "lungs clear thorax", "upper_limb": "hand fracture",
             "lower_limb": "knee effusion"}
    reports = pd.DataFrame({"study_key": studies["study_key"], "text": studies["body_part"].map(words)})
    reports.to_csv(tmp_path / "reports.csv", index=False)
    result = pseudolabel(out, clusters=6, seed=0, reports=tmp_path / "reports.csv", write=False)
    assert result.params["reports"] is True and result.metrics["homogeneity_group"] > 0.9
    pd.DataFrame({"study": ["x"], "body": ["y"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError, match="study_key,text"):
        pseudolabel(out, clusters=6, reports=tmp_path / "bad.csv", write=False)


@pytest.mark.parametrize("clusters", [1, 0, 10_000])
def test_bad_cluster_counts(ingested, clusters):
    with pytest.raises(DataError, match="--clusters must be between 2"):
        pseudolabel(ingested, clusters=clusters, write=False)


def test_pretrain_splits_by_patient_with_contiguous_labels(labelled):
    splits = load_pretrain(labelled, modality="all", image_size=32, seed=0)
    patients = [set(part.groups) for _, part in splits.items()]
    assert all(patients) and not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
    assert splits.train.images.shape[1:] == (32, 32) and splits.train.images.dtype == np.uint8
    targets = np.concatenate([part.targets for _, part in splits.items()])
    assert targets.dtype == np.int64 and set(targets) == set(range(int(splits.notes["classes"])))
    assert load_pretrain(labelled, modality="all", image_size=32, seed=0).digest == splits.digest
    ct = load_pretrain(labelled, modality="CT", image_size=32)
    manifest = pd.read_parquet(labelled / "manifest.parquet").set_index("image_path")
    ids = [i for _, part in ct.items() for i in part.ids]
    assert set(manifest.loc[ids, "modality"]) == {"CT"}
    assert sorted(set(np.concatenate([p.targets for _, p in ct.items()]))) == list(range(int(ct.notes["classes"])))


def test_pretrain_needs_labels_and_a_known_modality(ingested):
    with pytest.raises(DataError, match="pseudolabel"):
        load_pretrain(ingested)
    with pytest.raises(Exception, match="valid: all, MR, CR, CT"):
        load_pretrain(ingested, modality="XA")


def test_patient_split_is_deterministic_and_covers_every_split():
    patients = [f"p{i}" for i in range(20)]
    first = split_patients(patients, seed=0)
    assert first == split_patients(list(reversed(patients)), seed=0)
    assert sorted(first.values()).count("train") == 16 and set(first.values()) == {"train", "val", "test"}
    assert first != split_patients(patients, seed=1)


def test_oversampling_weights_balance_classes():
    targets = np.array([0] * 90 + [1] * 9 + [2])
    weights = oversampling_weights(targets)
    totals = [weights[targets == c].sum() for c in range(3)]
    assert np.allclose(totals, 1 / 3) and weights.sum() == pytest.approx(1.0)
    with pytest.raises(DataError):
        oversampling_weights(np.array([]))
