"""Batch ingest: real-world pydicom fixtures, resume after a kill, workers, keys and leaks."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
from pydicom.data import get_testdata_files

from medtl.errors import UserError
from medtl.training.archive.deid import KEY_ENV, DeidKeyError, load_key, path_key
from medtl.training.archive.demo_archive import planted_identifiers, write_demo_archive
from medtl.training.archive.ingest import ingest

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


def _reasons(out: Path, src: Path) -> dict[str, str]:
    """skipped.csv read back through the keyed source hashes: relative path -> reason."""
    skipped = pd.read_csv(out / "skipped.csv")
    assert list(skipped.columns) == ["source_key", "reason"]
    names = {path_key(KEY, p.relative_to(src).as_posix()): p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()}
    whole_file_skips = skipped[~skipped["reason"].str.startswith("frame ")]
    return {names[k]: r for k, r in zip(whole_file_skips["source_key"], whole_file_skips["reason"], strict=True)}


def test_pydicom_test_files_are_each_converted_or_skipped(pydicom_files, tmp_path):
    summary = ingest(pydicom_files, tmp_path / "out", key=KEY, progress=False, source_map=tmp_path / "map.csv")
    manifest = pd.read_parquet(tmp_path / "out" / "manifest.parquet")
    sources = sorted(p.relative_to(pydicom_files).as_posix() for p in pydicom_files.rglob("*") if p.is_file())
    per_source = manifest.groupby("source_key").size()
    reasons = _reasons(tmp_path / "out", pydicom_files)
    # One key per source: every manifest row and every skipped row resolves through the source map.
    mapping = dict(pd.read_csv(tmp_path / "map.csv").itertuples(index=False))
    assert set(manifest["source_key"]) | set(pd.read_csv(tmp_path / "out" / "skipped.csv")["source_key"]) <= set(mapping)
    assert sorted(mapping.values()) == sources
    for rel in sources:
        converted = path_key(KEY, rel) in per_source.index
        assert converted or rel in reasons, rel
        assert not (converted and rel in reasons) or reasons[rel].startswith("duplicate"), rel
    assert "truncated" in reasons.get("MR_truncated.dcm", "") or "cannot decode" in reasons["MR_truncated.dcm"]
    assert reasons["README.txt"] == "not a DICOM file"
    assert reasons["rtplan.dcm"] == "no pixel data"
    # Burned-in text: secondary captures, ultrasound and unknown modalities are refused by default.
    for rel in ("SC_rgb_rle_2frame.dcm", "JPEG2000.dcm", "examples_ybr_color.dcm", "ExplVR_BigEnd.dcm", "rtdose.dcm"):
        assert reasons[rel].startswith("burned-in text possible:") and "--allow-modality" in reasons[rel], rel
    assert summary.refused_burned_in == sum(r.startswith("burned-in") for r in reasons.values()) >= 40
    assert summary.converted >= 35 and summary.skipped >= 100

    def rows_of(rel: str) -> int:
        return int(per_source.get(path_key(KEY, rel), 0))

    assert reasons["ExplVR_LitEndNoMeta.dcm"] == "no pixel data"  # read without a preamble
    for rel in ("MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_bigendian.dcm"):
        assert rows_of(rel) == 1, rel
    assert _pngs(tmp_path / "out") == set(manifest["image_path"])
    # No source path anywhere in the output folder: file names, CSVs, shards.
    written = [(p.relative_to(tmp_path / "out").as_posix(), p.read_bytes()) for p in (tmp_path / "out").rglob("*") if p.is_file()]
    for name in ("SC_rgb", "examples_ybr", "MR_small", "dicomdirtests", "README"):
        assert not [n for n, data in written if name in n or name.encode() in data], name


def test_opted_in_modalities_convert_only_when_they_state_no_burned_in_text(pydicom_files, tmp_path):
    import pydicom

    src = tmp_path / "src"
    src.mkdir()
    files = ("examples_ybr_color.dcm", "SC_rgb_rle_2frame.dcm", "JPEG2000.dcm", "JPGExtended.dcm")
    for rel in files:  # each twice: stating BurnedInAnnotation NO, and saying nothing
        ds = pydicom.dcmread(pydicom_files / rel)
        ds.save_as(src / f"silent_{rel}")
        ds.BurnedInAnnotation = "NO"
        ds.save_as(src / f"clean_{rel}")
    yes = pydicom.dcmread(pydicom_files / "MR_small.dcm")
    yes.BurnedInAnnotation = "YES"
    yes.save_as(src / "mr_yes.dcm")
    with pytest.raises(UserError, match="no readable DICOM"):  # nothing passes the default policy
        ingest(src, tmp_path / "default", key=KEY, progress=False)
    summary = ingest(src, tmp_path / "out", key=KEY, progress=False, allow_modalities=["us", "SC"])
    reasons = _reasons(tmp_path / "out", src)
    manifest = pd.read_parquet(tmp_path / "out" / "manifest.parquet")
    per_source = manifest.groupby("source_key").size()

    def rows_of(name: str) -> int:
        return int(per_source.get(path_key(KEY, name), 0))

    # Multi-frame → several PNGs; compressed syntaxes decode.
    assert rows_of("clean_SC_rgb_rle_2frame.dcm") == 2
    assert rows_of("clean_JPEG2000.dcm") == 1 and rows_of("clean_JPGExtended.dcm") == 1
    # A real ultrasound that states BurnedInAnnotation NO, wrongly: the patient's name is in its pixels.
    assert reasons["clean_examples_ybr_color.dcm"] == "burned-in text found in the pixels (patient name)"
    for rel in files:
        assert "allowed, but BurnedInAnnotation is not NO" in reasons[f"silent_{rel}"], rel
    assert reasons["mr_yes.dcm"] == "burned-in text: BurnedInAnnotation is YES"
    assert (summary.converted, summary.refused_burned_in, summary.refused_pixels) == (3, 6, 1)
    # A refusal is re-examined when the user opts in later, without --retry-skipped.
    again = ingest(src, tmp_path / "default", key=KEY, progress=False, allow_modalities=["SC"])
    assert (again.converted, again.refused_burned_in, again.already_done) == (3, 3, 3)


def test_demo_archive_ingest_and_rerun_skips_everything(archive, reference):
    manifest = pd.read_parquet(reference / "manifest.parquet")
    assert len(manifest) == 60 and manifest["image_path"].is_unique
    assert set(manifest["modality"]) == {"CT", "MR", "CR"}
    assert (manifest.groupby("source_key").size() == 4).sum() >= 2  # the multi-frame MR files
    skipped = pd.read_csv(reference / "skipped.csv")  # the demo's one annotated copy, found by the scan
    assert list(skipped["reason"]) == ["burned-in text found in the pixels (patient ID)"]
    again = ingest(archive, reference, key=KEY, progress=False)
    assert again.already_done == again.seen == 52 and again.converted == 0
    assert pd.read_parquet(reference / "manifest.parquet").equals(manifest)


def test_two_workers_write_the_same_as_one(archive, reference, tmp_path):
    ingest(archive, tmp_path / "out", key=KEY, workers=2, progress=False)
    one = pd.read_parquet(reference / "manifest.parquet")
    two = pd.read_parquet(tmp_path / "out" / "manifest.parquet")
    pd.testing.assert_frame_equal(one, two)


KILL_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import medtl.training.archive.convert as c
    import medtl.training.archive.ingest as m
    real = c.process_source
    def slow(path, rel):
        time.sleep(0.15)
        return real(path, rel)
    c.process_source = slow
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
        workers = psutil.Process(proc.pid).children(recursive=True)
        assert workers, "the ingest had no worker process to orphan"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        # its decoding workers notice and exit instead of waiting for ever on a pipe nobody writes to
        gone, alive = psutil.wait_procs(workers, timeout=15)
        assert alive == [], f"{len(alive)} ingest worker(s) outlived their killed supervisor"
    finally:
        proc.kill()
    assert not (out / "manifest.parquet").exists()
    done = len(list((out / ".shards").rglob("*.json")))
    assert 12 <= done < 52
    summary = ingest(archive, out, key=KEY, progress=False)
    assert summary.already_done >= done and summary.converted + summary.skipped == 52 - summary.already_done
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
    for mode in (0o644, 0o640, 0o604, 0o660):  # like ssh with a private key: others may not read it
        outside.chmod(mode)
        with pytest.raises(DeidKeyError, match="chmod 600"):
            load_key(tmp_path / "out", key_file=outside)
    outside.chmod(0o600)
    assert load_key(tmp_path / "out", key_file=outside) == b"k" * 32
    outside.chmod(0o400)
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
    assert _reasons(tmp_path / "out2", tmp_path / "junk") == {"a.txt": "not a DICOM file", "b.dcm": "empty file"}


def test_duplicate_content_is_ingested_once_and_listed(archive, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    first = next(archive.rglob("*.dcm"))
    shutil.copy(first, src / "a.dcm")
    shutil.copy(first, src / "b.dcm")
    summary = ingest(src, tmp_path / "out", key=KEY, progress=False)
    assert (summary.converted, summary.skipped) == (1, 1)
    reasons = _reasons(tmp_path / "out", src)
    assert list(reasons) == ["b.dcm"] and "duplicate" in reasons["b.dcm"]
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


def _copy_some(archive: Path, dest: Path, n: int) -> list[str]:
    dest.mkdir()
    names = []
    for i, path in enumerate(sorted(archive.rglob("*.dcm"))[:n]):
        shutil.copy(path, dest / f"f{i:02d}.dcm")
        names.append(f"f{i:02d}.dcm")
    return names


def test_a_file_that_crashes_or_hangs_its_decoder_is_skipped(archive, tmp_path, monkeypatch):
    from medtl.training.archive import convert, workers

    names = _copy_some(archive, tmp_path / "src", 5)
    real = convert.process_source

    def faulty(path: str, rel: str) -> dict:  # runs in the forked worker processes
        if rel == names[1]:
            import faulthandler

            faulthandler.disable()  # pytest's handler would print this worker's stack
            os.kill(os.getpid(), signal.SIGSEGV)  # a decoder segfault
        if rel == names[3]:
            time.sleep(60)  # a decoder that never returns
        if rel == names[4]:
            os.kill(os.getpid(), signal.SIGKILL)  # what the kernel's OOM killer does
        return real(path, rel)

    monkeypatch.setattr(convert, "process_source", faulty)
    summary = ingest(tmp_path / "src", tmp_path / "out", key=KEY, workers=2, progress=False, decode_timeout=2)
    assert (summary.converted, summary.skipped, summary.decoder_failures) == (2, 3, 3)
    reasons = _reasons(tmp_path / "out", tmp_path / "src")
    assert reasons[names[1]] == "decoder crashed (worker exit code -11)"
    assert reasons[names[3]] == "decoder timed out after 2 s"
    assert "most likely out of memory" in reasons[names[4]]
    assert not list((tmp_path / "out" / workers.IN_PROGRESS).iterdir())
    again = ingest(tmp_path / "src", tmp_path / "out", key=KEY, progress=False, decode_timeout=2)
    assert (again.already_done, again.skipped) == (5, 0)  # passed over, not decoded again


RUN_DEATH_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import medtl.training.archive.convert as c
    import medtl.training.archive.ingest as m
    real = c.process_source
    def deadly(path, rel):
        if rel == sys.argv[4]:  # takes the whole run down with it (the supervisor included)
            os.kill(os.getppid(), signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)
        return real(path, rel)
    c.process_source = deadly
    m.ingest(Path(sys.argv[1]), Path(sys.argv[2]), key=sys.argv[3].encode(), progress=False)
    """
)


def test_a_file_that_kills_the_whole_run_is_passed_over_on_the_rerun(archive, tmp_path):
    names = _copy_some(archive, tmp_path / "src", 4)
    out = tmp_path / "out"
    for _ in range(2):  # an innocent file in flight gets one more try; a culprit kills that run too
        run = subprocess.run([sys.executable, "-c", RUN_DEATH_SCRIPT, str(tmp_path / "src"), str(out), KEY.decode(), names[2]],
                             capture_output=True, timeout=120)
        assert run.returncode == -signal.SIGKILL
    markers = list((out / ".inprogress").iterdir())
    assert [m.read_text() for m in markers] == ["2"]
    summary = ingest(tmp_path / "src", out, key=KEY, progress=False)
    assert (summary.converted + summary.already_done, summary.decoder_failures) == (3, 1)
    assert "did not finish in 2 earlier runs" in _reasons(out, tmp_path / "src")[names[2]]
    assert not list((out / ".inprogress").iterdir())


def test_unreadable_shards_are_rebuilt_and_limits_apply(archive, tmp_path):
    names = _copy_some(archive, tmp_path / "src", 3)
    out = tmp_path / "out"
    first = ingest(tmp_path / "src", out, key=KEY, progress=False)
    shards = sorted((out / ".shards").rglob("*.json"))
    assert len(shards) == 3
    shards[0].write_text('{"path_keys": ["trunc')  # a torn write from another tool, a bad disk block
    shards[1].write_bytes(b"")
    again = ingest(tmp_path / "src", out, key=KEY, progress=False)
    assert (again.converted, again.already_done) == (2, 1)
    pd.testing.assert_frame_equal(pd.read_parquet(out / "manifest.parquet").reset_index(drop=True),
                                  pd.read_parquet(out / "manifest.parquet"))
    assert len(pd.read_parquet(out / "manifest.parquet")) == first.manifest_rows
    with pytest.raises(UserError, match="no readable DICOM"):
        ingest(tmp_path / "src", tmp_path / "tiny", key=KEY, progress=False, max_pixels=1000)
    assert all("too many pixels" in r for r in _reasons(tmp_path / "tiny", tmp_path / "src").values())
    assert len(names) == 3


def test_source_paths_stay_out_of_the_folder_and_go_to_the_named_map(tmp_path):
    src = tmp_path / "DOE_JOHN_MRN123" / "20240101"
    src.mkdir(parents=True)
    (src / "doe_john_scan.txt").write_text("not dicom")
    (src / "DOE^JOHN.dcm").write_bytes(b"")
    with pytest.raises(UserError, match="inside the output folder"):
        ingest(tmp_path / "DOE_JOHN_MRN123", tmp_path / "out", key=KEY, progress=False, source_map=tmp_path / "out" / "map.csv")
    assert not (tmp_path / "out").exists()
    with pytest.raises(UserError, match="unknown --allow-modality CT"):
        ingest(tmp_path / "DOE_JOHN_MRN123", tmp_path / "out", key=KEY, progress=False, allow_modalities=["US", "ct"])
    assert not (tmp_path / "out").exists()
    with pytest.raises(UserError, match="no readable DICOM"):
        ingest(tmp_path / "DOE_JOHN_MRN123", tmp_path / "out", key=KEY, progress=False, source_map=tmp_path / "map.csv")
    mapping = pd.read_csv(tmp_path / "map.csv")
    assert sorted(mapping["source"]) == ["20240101/DOE^JOHN.dcm", "20240101/doe_john_scan.txt"]
    assert set(mapping["source_key"]) == set(pd.read_csv(tmp_path / "out" / "skipped.csv")["source_key"])
    assert (tmp_path / "map.csv").stat().st_mode & 0o777 == 0o600
    for path in (tmp_path / "out").rglob("*"):
        text = path.relative_to(tmp_path).as_posix().lower() + (path.read_bytes().decode("latin-1").lower() if path.is_file() else "")
        assert "doe" not in text.replace("out", ""), path


def test_files_without_patient_id_are_grouped_by_study(archive, tmp_path):
    import pydicom

    src = tmp_path / "src"
    src.mkdir()
    paths = sorted(archive.rglob("*.dcm"))
    by_study: dict[str, list[Path]] = {}
    for path in paths:
        by_study.setdefault(str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID), []).append(path)
    studies = [v for v in by_study.values() if len(v) >= 2][:2]
    for i, group in enumerate(studies):
        for j, path in enumerate(group[:2]):
            ds = pydicom.dcmread(path)
            for keyword in ("PatientID", "PatientName", "PatientBirthDate", "IssuerOfPatientID"):
                if keyword in ds:
                    delattr(ds, keyword)
            ds.save_as(src / f"s{i}_{j}.dcm")
    ds.StudyInstanceUID = ""
    ds.save_as(src / "orphan.dcm")
    ingest(src, tmp_path / "out", key=KEY, progress=False)
    manifest = pd.read_parquet(tmp_path / "out" / "manifest.parquet")
    per_patient = manifest.groupby("patient_key")["study_key"].nunique()
    assert len(per_patient) == 2 and (per_patient == 1).all()  # one "person" a study, not one a file
    assert "no patient or study identifier" in _reasons(tmp_path / "out", src)["orphan.dcm"]
