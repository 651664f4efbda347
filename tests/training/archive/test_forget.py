"""`ingest --forget`: a source's images leave the manifest, the PNGs and the mosaics, and never come back."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from medtl.errors import UserError
from medtl.training.archive import forget as forget_module
from medtl.training.archive.deid import path_key
from medtl.training.archive.demo_archive import write_demo_archive
from medtl.training.archive.forget import FORGOTTEN, forget
from medtl.training.archive.ingest import ingest

KEY = b"forget-key-0123456789"


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    archive = tmp_path_factory.mktemp("demo") / "archive"
    write_demo_archive(archive, seed=3, patients=2)
    src = tmp_path_factory.mktemp("src") / "src"
    src.mkdir()
    files = sorted(archive.rglob("*.dcm"))
    for i, path in enumerate(files):
        shutil.copy(path, src / f"f{i:02d}.dcm")
    shutil.copy(files[0], src / "z_copy_of_f00.dcm")  # the same content under a second path
    return src


@pytest.fixture(scope="module")
def converted(source, tmp_path_factory) -> Path:
    """The source ingested once, with its source map beside the output folder."""
    out = tmp_path_factory.mktemp("converted") / "out"
    ingest(source, out, key=KEY, progress=False, source_map=out.parent / "map.csv")
    return out


@pytest.fixture()
def out(converted, tmp_path) -> Path:
    """A fresh copy of the converted folder for one test."""
    return Path(shutil.copytree(converted, tmp_path / "out"))


def _state(out: Path) -> tuple[pd.DataFrame, dict[str, str], set[str]]:
    manifest = pd.read_parquet(out / "manifest.parquet")
    skipped = dict(pd.read_csv(out / "skipped.csv").itertuples(index=False))
    pngs = {p.relative_to(out).as_posix() for p in (out / "images").rglob("*.png")}
    return manifest, skipped, pngs


def test_forget_removes_a_source_everywhere_and_a_rerun_does_not_bring_it_back(source, converted, out):
    manifest, _, pngs = _state(out)
    mapping = dict(pd.read_csv(converted.parent / "map.csv").itertuples(index=False))
    multi = manifest.groupby("source_key").size().idxmax()  # a multi-frame source: several images
    assert mapping[multi].startswith("f") and (manifest["source_key"] == multi).sum() > 1
    labelled = manifest.assign(label=[i % 3 for i in range(len(manifest))])  # as `medtl pseudolabel` leaves it
    labelled.to_parquet(out / "manifest.parquet", index=False)
    (out / "clusters").mkdir()
    for c in range(3):
        (out / "clusters" / f"cluster_{c:02d}.png").write_bytes(b"mosaic")
    gone = set(labelled.loc[labelled["source_key"] == multi, "image_path"])
    done = forget(out, [multi.upper()])
    after, skipped, pngs_after = _state(out)
    assert (done.sources, done.images) == (1, len(gone))
    assert not gone & set(after["image_path"]) and pngs_after == pngs - gone
    assert "label" in after and len(after) == len(manifest) - len(gone)  # other rows keep their labels
    assert skipped[multi] == FORGOTTEN
    labels = set(labelled.loc[labelled["source_key"] == multi, "label"])
    assert done.mosaics == len(labels) and {p.stem for p in (out / "clusters").iterdir()} == {f"cluster_{c:02d}" for c in {0, 1, 2} - labels}
    counts = pd.read_csv(out / "scan_verdicts.csv")
    assert counts.loc[counts["verdict"] == "forgotten", "count"].sum() == len(gone)
    again = ingest(source, out, key=KEY, progress=False, retry_skipped=True)  # not even --retry-skipped
    assert again.converted == 0 and not gone & set(pd.read_parquet(out / "manifest.parquet")["image_path"])


def test_forgetting_a_duplicate_path_forgets_the_content_it_duplicates(out):
    first, copy = path_key(KEY, "f00.dcm"), path_key(KEY, "z_copy_of_f00.dcm")
    manifest, skipped, _ = _state(out)
    assert first in set(manifest["source_key"]) and "duplicate" in skipped[copy]
    forget(out, [copy])
    manifest, skipped, _ = _state(out)
    assert first not in set(manifest["source_key"]) and skipped[first] == FORGOTTEN


def test_bad_keys_change_nothing(out, tmp_path):
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(UserError, match="32 hex characters"):
        forget(out, ["f00.dcm"])
    with pytest.raises(UserError, match="is not in .* nothing was removed"):
        forget(out, [path_key(KEY, "f01.dcm"), "0" * 32])
    with pytest.raises(UserError, match="not a medtl ingest output"):
        forget(tmp_path, [path_key(KEY, "f01.dcm")])
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_a_forget_cut_short_leaves_no_image_of_the_source_and_finishes_on_the_next_call(out, monkeypatch):
    key = path_key(KEY, "f02.dcm")
    gone = set(pd.read_parquet(out / "manifest.parquet").query("source_key == @key")["image_path"])

    def crash(path, data, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(forget_module, "write_atomic", crash)  # dies before the manifest is rewritten
    with pytest.raises(OSError):
        forget(out, [key])
    assert not [p for p in gone if (out / p).exists()]  # the pixels went first
    monkeypatch.undo()
    done = forget(out, [key])  # the same call again completes the manifest and the lists
    assert done.images == len(gone) and not gone & set(pd.read_parquet(out / "manifest.parquet")["image_path"])
