"""Batch ingest: real-world pydicom fixtures, resume after a kill, workers, keys and leaks."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
from pydicom.data import get_testdata_files

from medtl.errors import UserError
from medtl.training.data.demo_archive import planted_identifiers, write_demo_archive
from medtl.training.data.ingest import KEY_ENV, DeidKeyError, ingest, keyed, load_key

KEY = b"test-key-0123456789abcdef"


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo") / "archive"
    write_demo_archive(root, seed=1, patients=6)
    return root


@pytest.fixture(scope="module")
def reference(archive, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "out"
    ingest(archive, out, key=KEY, progress=False)
    return out


def _pngs(out: Path) -> set[str]:
    return {p.relative_to(out).as_posix() for p in (out / "images").rglob("*.png")}


@pytest.fixture(scope="module")
def pydicom_files(tmp_path_factory) -> Path:
    """pydicom's own test files (no pattern: no downloads), copied with their folder layout."""
    files = [Path(f) for f in get_testdata_files() if os.path.isfile(f)]
    base = Path(os.path.commonpath([str(f.parent) for f in files]))
    root = tmp_path_factory.mktemp("pydicom") / "src"
    for f in files:
        target = root / f.relative_to(base)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, target)
    return root


def test_pydicom_test_files_are_each_converted_or_skipped(pydicom_files, tmp_path):
    start = time.perf_counter()
    summary = ingest(pydicom_files, tmp_path / "out", key=KEY, progress=False)
    assert time.perf_counter() - start < 30
    manifest = pd.read_parquet(tmp_path / "out" / "manifest.parquet")
    skipped = pd.read_csv(tmp_path / "out" / "skipped.csv")
    sources = sorted(p.relative_to(pydicom_files).as_posix() for p in pydicom_files.rglob("*") if p.is_file())
    per_source = manifest.groupby("source_key").size()
    whole_file_skips = skipped[~skipped["reason"].str.startswith("frame ")]
    reasons = dict(zip(whole_file_skips["source"], whole_file_skips["reason"], strict=True))
    for rel in sources:
        digest = hashlib.sha256((pydicom_files / rel).read_bytes()).hexdigest()
        converted = keyed(KEY, "source", digest) in per_source.index
        assert converted or rel in reasons, rel
        assert not (converted and rel in reasons) or reasons[rel].startswith("duplicate"), rel
    assert "truncated" in reasons.get("MR_truncated.dcm", "") or "cannot decode" in reasons["MR_truncated.dcm"]
    assert reasons["README.txt"] == "not a DICOM file"
    assert reasons["rtplan.dcm"] == "no pixel data"
    assert summary.converted >= 80 and summary.skipped >= 60
    # Multi-frame → several PNGs; compressed syntaxes decode.
    def rows_of(rel: str) -> int:
        digest = hashlib.sha256((pydicom_files / rel).read_bytes()).hexdigest()
        return int(per_source.get(keyed(KEY, "source", digest), 0))

    assert rows_of("examples_ybr_color.dcm") == 30 and rows_of("SC_rgb_rle_2frame.dcm") == 2
    assert reasons["ExplVR_LitEndNoMeta.dcm"] == "no pixel data"  # read without a preamble
    for rel in ("MR_small_RLE.dcm", "JPEG2000.dcm", "MR_small_jpeg_ls_lossless.dcm", "JPGExtended.dcm"):
        assert rows_of(rel) == 1, rel
    assert _pngs(tmp_path / "out") == set(manifest["image_path"])


def test_demo_archive_ingest_and_rerun_skips_everything(archive, reference):
    manifest = pd.read_parquet(reference / "manifest.parquet")
    assert len(manifest) == 60 and manifest["image_path"].is_unique
    assert set(manifest["modality"]) == {"CT", "MR", "CR"}
    assert (manifest.groupby("source_key").size() == 4).sum() >= 2  # the multi-frame MR files
    again = ingest(archive, reference, key=KEY, progress=False)
    assert again.already_done == again.seen == 51 and again.converted == 0
    assert pd.read_parquet(reference / "manifest.parquet").equals(manifest)


def test_two_workers_write_the_same_as_one(archive, reference, tmp_path):
    ingest(archive, tmp_path / "out", key=KEY, workers=2, progress=False)
    one = pd.read_parquet(reference / "manifest.parquet")
    two = pd.read_parquet(tmp_path / "out" / "manifest.parquet")
    pd.testing.assert_frame_equal(one, two)


KILL_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import medtl.training.data.ingest as m
    real = m.process_source
    def slow(path, rel):
        time.sleep(0.15)
        return real(path, rel)
    m.process_source = slow
    from pathlib import Path
    m.ingest(Path(sys.argv[1]), Path(sys.argv[2]), key=sys.argv[3].encode(), progress=False)
    """
)


def test_killed_run_loses_nothing_and_rerun_duplicates_nothing(archive, reference, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(archive), str(out), KEY.decode()])
    try:
        deadline = time.time() + 60
        while time.time() < deadline and len(list((out / ".shards").rglob("*.json"))) < 12:
            time.sleep(0.05)
        assert proc.poll() is None, "ingest finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
    assert not (out / "manifest.parquet").exists()
    done = len(list((out / ".shards").rglob("*.json")))
    assert 12 <= done < 51
    summary = ingest(archive, out, key=KEY, progress=False)
    assert summary.already_done >= done and summary.converted == 51 - summary.already_done
    resumed = pd.read_parquet(out / "manifest.parquet")
    pd.testing.assert_frame_equal(resumed, pd.read_parquet(reference / "manifest.parquet"))
    assert _pngs(out) == set(resumed["image_path"]) and resumed["image_path"].is_unique
    assert not [p for p in out.rglob("*.tmp")]


def test_planted_identifiers_reach_no_output(archive, reference):
    planted = planted_identifiers(archive)
    assert len(planted) > 200 and "Riverside General Hospital" in planted
    leaks = []
    for path in reference.rglob("*"):
        blob = path.relative_to(reference).as_posix().encode()
        blob += path.read_bytes() if path.is_file() else b""
        leaks += [(path.name, v) for v in planted if v.encode() in blob or v.lower().encode() in blob.lower()]
    assert leaks == []


def test_key_sources_and_refusals(tmp_path, monkeypatch, archive):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(DeidKeyError, match=KEY_ENV):
        load_key(tmp_path / "out")
    inside = tmp_path / "out" / "key.txt"
    inside.parent.mkdir()
    inside.write_text("k" * 32)
    with pytest.raises(DeidKeyError, match="inside the output folder"):
        load_key(tmp_path / "out", key_file=inside)
    outside = tmp_path / "key.txt"
    outside.write_text("k" * 32 + "\n")
    assert load_key(tmp_path / "out", key_file=outside) == b"k" * 32
    monkeypatch.setenv(KEY_ENV, "short")
    with pytest.raises(DeidKeyError, match="too short"):
        load_key(tmp_path / "out")
    monkeypatch.setenv(KEY_ENV, "e" * 20)
    assert load_key(tmp_path / "out") == b"e" * 20
    monkeypatch.delenv(KEY_ENV)
    first, second = load_key(tmp_path, ephemeral=True), load_key(tmp_path, ephemeral=True)
    assert len(first) == 32 and first != second
    src = tmp_path / "one"
    src.mkdir()
    shutil.copy(next(archive.rglob("*.dcm")), src / "a.dcm")
    ingest(src, tmp_path / "res", key=KEY, progress=False)
    with pytest.raises(DeidKeyError, match="different de-identification key"):
        ingest(src, tmp_path / "res", key=b"another-key-0123456789", progress=False)


def test_bad_sources_raise_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        ingest(tmp_path / "missing", tmp_path / "out", key=KEY, progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="inside the source"):
        ingest(tmp_path / "empty", tmp_path / "empty" / "out", key=KEY, progress=False)
    with pytest.raises(UserError, match="no files"):
        ingest(tmp_path / "empty", tmp_path / "out", key=KEY, progress=False)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.txt").write_text("hello")
    (tmp_path / "junk" / "b.dcm").write_bytes(b"")
    with pytest.raises(UserError, match="no readable DICOM"):
        ingest(tmp_path / "junk", tmp_path / "out2", key=KEY, progress=False)
    assert not (tmp_path / "out2" / "manifest.parquet").exists()
    skipped = pd.read_csv(tmp_path / "out2" / "skipped.csv")
    assert dict(zip(skipped["source"], skipped["reason"], strict=True)) == {"a.txt": "not a DICOM file", "b.dcm": "empty file"}


def test_duplicate_content_is_ingested_once_and_listed(archive, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    first = next(archive.rglob("*.dcm"))
    shutil.copy(first, src / "a.dcm")
    shutil.copy(first, src / "b.dcm")
    summary = ingest(src, tmp_path / "out", key=KEY, progress=False)
    assert (summary.converted, summary.skipped) == (1, 1)
    skipped = pd.read_csv(tmp_path / "out" / "skipped.csv")
    assert list(skipped["source"]) == ["b.dcm"] and "duplicate" in skipped["reason"][0]
    again = ingest(src, tmp_path / "out", key=KEY, progress=False)
    assert again.already_done == 2 and len(pd.read_csv(tmp_path / "out" / "skipped.csv")) == 1


def test_dicomdir_as_source(archive, tmp_path):
    from pydicom import dcmread
    from pydicom.fileset import FileSet

    fs = FileSet()
    for path in sorted(archive.rglob("*.dcm"))[:3]:
        fs.add(dcmread(path))
    fs.write(tmp_path / "media")
    summary = ingest(tmp_path / "media" / "DICOMDIR", tmp_path / "out", key=KEY, progress=False)
    assert summary.seen == 3 and summary.converted == 3
    walked = ingest(tmp_path / "media", tmp_path / "out2", key=KEY, progress=False)
    assert walked.converted == 3 and walked.skipped == 1  # the DICOMDIR index itself
