"""The whole demo pipeline on an archive with identifying values planted in every patient field:
nothing it writes — PNGs, manifests, the MLflow store, every artifact, logs, the report — holds one."""

from __future__ import annotations

import io
import pickletools
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from medtl.training.data.demo_archive import planted_identifiers

pytestmark = pytest.mark.slow

STUDY = """
name: leak
defaults: {max_epochs: 1, patience: 1, batch_size: 16, image_size: 32}
tasks:
  demo-binary: {archs: [mobilenet_v3_small]}
arms: [random, domain]
lrs: [1.0e-3]
seeds: [0]
pretrain: {data: set, max_epochs: 1, image_size: 32, batch_size: 16}
"""


def _pickle_strings(data: bytes) -> list[str]:
    """String arguments of a pickle stream, read without executing it."""
    out = []
    for opcode, arg, _ in pickletools.genops(io.BytesIO(data)):
        if isinstance(arg, str):
            out.append(arg)
        elif isinstance(arg, bytes) and opcode.name.endswith("BYTES") and len(arg) < 4096:
            out.append(arg.decode("latin-1"))
    return out


def _texts(path: Path) -> list[str]:
    """Everything human-readable a file holds: names, metadata, cells, text, pickle strings."""
    texts = [str(path)]
    suffix = path.suffix.lower()
    data = path.read_bytes()
    if suffix == ".png":
        with Image.open(path) as image:
            texts += [f"{k}={v}" for k, v in image.info.items()]
            texts += [str(v) for v in (image.text if hasattr(image, "text") else {}).values()]
    elif suffix == ".parquet":
        texts.append(pd.read_parquet(path).to_csv())
    elif suffix == ".db":
        with sqlite3.connect(path) as conn:
            texts.extend(conn.iterdump())
    elif zipfile.is_zipfile(path):  # torch.save files: scan the pickle, not the raw tensor bytes
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                texts.append(name)
                if name.endswith(".pkl"):
                    texts.extend(_pickle_strings(archive.read(name)))
    elif suffix in {".pt", ".pth", ".pkl"}:
        texts.extend(_pickle_strings(data))
    else:
        texts.append(data.decode("utf-8", errors="replace"))
    return texts


def test_demo_pipeline_leaks_no_planted_identifier(tmp_path):
    medtl = [sys.executable, "-m", "medtl.mlops.cli"]
    (tmp_path / "study.yaml").write_text(STUDY)
    (tmp_path / "key").write_text("0" * 64)
    logs = tmp_path / "logs"
    logs.mkdir()
    steps = [
        ["demo-archive", "--out", str(tmp_path / "archive")],
        ["ingest", str(tmp_path / "archive"), "--out", "set", "--key-file", str(tmp_path / "key"), "--no-progress"],
        ["pseudolabel", "set", "--clusters", "6"],
        ["sweep", "--study", "study.yaml"],
        ["promote", "--study", "leak"],
        ["evaluate", "--study", "leak", "--out", "report"],
    ]
    for i, step in enumerate(steps):
        result = subprocess.run([*medtl, "-v", *step], cwd=tmp_path, capture_output=True, text=True, timeout=900)
        (logs / f"{i}-{step[0]}.log").write_text(result.stdout + result.stderr)
        assert result.returncode == 0, (step, result.stderr[-3000:])
    planted = planted_identifiers(tmp_path / "archive")
    assert len(planted) > 50  # names, IDs, dates, addresses, institutions, UIDs
    scanned = 0
    hits = []
    for path in sorted(tmp_path.rglob("*")):
        if not path.is_file() or (tmp_path / "archive") in path.parents or path.name == "key":
            continue
        blob = "\n".join(_texts(path))
        scanned += 1
        hits += [(str(path.relative_to(tmp_path)), value) for value in planted if value in blob]
    assert scanned > 40
    kinds = {p.suffix for p in tmp_path.rglob("*") if p.is_file()}
    assert {".png", ".parquet", ".db", ".csv", ".json", ".html", ".log", ".pt"} <= kinds, kinds
    assert hits == []
