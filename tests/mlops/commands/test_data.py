"""`medtl data check` and `medtl data splits` on a tiny Brain Tumor MRI download."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from medtl.mlops.cli import main

CLASSES = ("glioma", "meningioma", "notumor", "pituitary")


@pytest.fixture
def brain(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDTL_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "brain"
    for part, n in (("Training", 8), ("Testing", 2)):
        for c, name in enumerate(CLASSES):
            (root / part / name).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.full((24, 24), 30 + 40 * c, np.uint8)).save(
                    root / part / name / f"x{i}.jpg"
                )
    return root


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_check_json(brain, capsys):
    rc = main(
        ["data", "check", str(brain), "--task", "brain-tumor-mri", "--image-size", "16", "--json"]
    )
    summary = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert {k: v["total"] for k, v in summary["counts"].items()} == {
        "train": 24,
        "val": 8,
        "test": 8,
    }
    assert summary["counts"]["val"]["classes"] == dict.fromkeys(CLASSES, 2)
    assert summary["image_size"] == 16 and len(summary["source_digest"]) == 16


def test_check_table(brain, capsys):
    assert (
        main(["data", "check", str(brain), "--task", "brain-tumor-mri", "--image-size", "16"]) == 0
    )
    out = capsys.readouterr().out
    assert "train      24  glioma=6" in out and "test        8" in out


def _splits_argv(brain, out):
    return ["data", "splits", str(brain), "--task", "brain-tumor-mri", "--image-size", "16", "--out", str(out)]


def test_splits_csv_and_fraction(brain, tmp_path):
    out = tmp_path / "splits.csv"
    assert main(_splits_argv(brain, out)) == 0
    rows = _rows(out)
    assert list(rows[0]) == ["sample_id", "split", "label"] and len(rows) == 40
    assert {r["label"] for r in rows} == set(CLASSES)
    assert all(r["sample_id"].split("/")[1] == r["label"] for r in rows)
    small = tmp_path / "half.csv"
    assert main([*_splits_argv(brain, small), "--fraction", "0.5"]) == 0
    half = _rows(small)
    count = {s: sum(r["split"] == s for r in half) for s in ("train", "val", "test")}
    assert count == {"train": 12, "val": 8, "test": 8}
    train_full = {r["sample_id"] for r in rows if r["split"] == "train"}
    assert {r["sample_id"] for r in half if r["split"] == "train"} < train_full
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["data", "check", "{tmp}/nowhere", "--task", "brain-tumor-mri"], "does not exist"),
        (["data", "check", "{tmp}", "--task", "brain-tumor-mri"], "Brain Tumor MRI layout"),
        (["data", "check", "{tmp}", "--task", "grazpedwri-osteopenia"], "no dataset.csv"),
        (["data", "check", "{brain}", "--task", "mnist"], "mnist"),
        (["data", "splits", "{brain}", "--task", "brain-tumor-mri", "--out", "{tmp}/no/dir/x.csv"], "does not exist"),
        (["data", "splits", "{brain}", "--task", "brain-tumor-mri", "--out", "{tmp}/x.csv", "--fraction", "0"], "--fraction"),
    ],
)
def test_bad_input_exits_2_with_one_line(brain, tmp_path, capsys, argv, needle):
    (tmp_path / "empty").mkdir()
    args = [a.format(tmp=tmp_path / "empty", brain=brain) for a in argv]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medtl data: error:") and needle in err and "\n" not in err
    assert not (tmp_path / "empty" / "x.csv").exists()


def test_no_action_prints_help(capsys):
    assert main(["data"]) == 2
    assert "medtl data check PATH" in capsys.readouterr().out


def test_deidentify_then_splits_with_a_source_map(brain, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MEDTL_DEID_KEY", raising=False)
    assert main(["data", "deidentify", str(brain)]) == 2
    assert "MEDTL_DEID_KEY" in capsys.readouterr().err
    monkeypatch.setenv("MEDTL_DEID_KEY", "k" * 32)
    assert main(["data", "deidentify", str(brain)]) == 0
    out, mapping = tmp_path / "splits.csv", tmp_path / "private-map.csv"
    args = _splits_argv(brain, out)
    assert main([*args, "--source-map", str(out)]) == 2
    assert "same file" in capsys.readouterr().err
    assert main([*args, "--source-map", str(mapping)]) == 0
    rows, sources = _rows(out), {r["sample_id"]: r["source"] for r in _rows(mapping)}
    assert len(rows) == 40 and all(len(r["sample_id"]) == 32 and "x" not in r["sample_id"] for r in rows)
    assert set(sources) == {r["sample_id"] for r in rows}
    assert all(s.endswith(".jpg") or "/x" in s for s in sources.values())
    assert mapping.stat().st_mode & 0o777 == 0o600
