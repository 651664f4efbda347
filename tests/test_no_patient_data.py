"""The whole pipeline on a hospital-style export with identifying values planted everywhere a real
one has them — every patient field, folder and file names, private tags, sequences, descriptions,
comments, and text burned into the pixels (of CR and CT files that do not say so, too): nothing it
writes (PNGs, manifests, skipped list, shards, the MLflow store, every artifact, logs, the report)
holds one, in any spelling — and no PNG shows one that OCR can read."""

from __future__ import annotations

import hashlib
import hmac
import io
import pickletools
import re
import shutil
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

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


_READER: list = []


def _pixel_text(image: Image.Image) -> list[str]:
    """The text OCR reads in an image (the scan's own engine, at the image's full resolution)."""
    import numpy as np

    from medtl.training.archive.ocr import TextReader

    if not _READER:
        _READER.append(TextReader())
    return [line.text for line in _READER[0].read(np.asarray(image.convert("L")))]


def _texts(path: Path) -> list[str]:
    """Everything human-readable a file holds: names, metadata, cells, text, pickle strings, text in pixels."""
    texts = [str(path)]
    suffix = path.suffix.lower()
    data = path.read_bytes()
    if suffix == ".png":
        with Image.open(path) as image:
            texts += [f"{k}={v}" for k, v in image.info.items()]
            texts += [str(v) for v in (image.text if hasattr(image, "text") else {}).values()]
            texts += _pixel_text(image)
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


def _burn_text(pixels, text: str, monochrome1: bool = False):
    """Draw `text` into the pixels the way a scanner's overlay does (displayed white, top left)."""
    import numpy as np
    from PIL import ImageDraw

    image = Image.fromarray((pixels.astype(np.float64) / max(1, pixels.max()) * 255).astype(np.uint8))
    ImageDraw.Draw(image).text((2, 2), text, fill=0 if monochrome1 else 255)  # MONOCHROME1 shows low values white
    return np.asarray(image).astype(np.uint16) * 16


def hospital_export(demo: Path, out: Path) -> tuple[set[str], list[Path]]:
    """The demo archive as a hospital export writes it; returns (planted values, burned-in files).

    Folders and files are named after the patient (`KOWALCZYK_MARGARETHE_PID1234567/20190417/…`),
    and every file gains a private tag, a RequestAttributesSequence, descriptions and comments
    quoting the patient. Five more files per patient carry the name in their pixels: an
    ultrasound frame, a secondary capture, a CT stating BurnedInAnnotation YES, and a CR and a CT
    that say nothing about it (only the pixel scan can refuse those two).
    """
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    planted: set[str] = set()
    burned: list[Path] = []
    done_patients: set[str] = set()
    for i, path in enumerate(sorted(demo.rglob("*.dcm"))):
        ds = pydicom.dcmread(path)
        name = str(ds.PatientName)
        family, given = (name.split("^") + [""])[:2]
        folder = out / f"{family.upper()}_{given.upper()}_{ds.PatientID}" / str(ds.StudyDate)
        folder.mkdir(parents=True, exist_ok=True)
        ds.StudyDescription = f"CT head for {given} {family}"
        ds.SeriesDescription = f"{family.lower()} series"
        ds.ImageComments = f"pt {family} {given} dob {ds.PatientBirthDate}"
        ds.PatientComments = f"Mother {ds.PatientMotherBirthName}"
        ds.StationName = f"{family.upper()}-WS"
        ds.DeviceSerialNumber = f"SN-{ds.PatientID}"
        ds.ManufacturerModelName = f"Scanner of {family}"
        block = ds.private_block(0x0011, "HOSPITAL PACS", create=True)
        block.add_new(0x01, "LO", f"{ds.PatientID}|{name}")
        request = Dataset()
        request.RequestedProcedureID = f"RP{ds.AccessionNumber}"
        request.ScheduledProcedureStepID = f"SPS-{ds.OtherPatientIDs}"
        request.RequestedProcedureDescription = f"requested for {name}"
        ds.RequestAttributesSequence = Sequence([request])
        planted |= {f"{ds.PatientID}|{name}", f"RP{ds.AccessionNumber}", f"SPS-{ds.OtherPatientIDs}",
                    f"SN-{ds.PatientID}", f"{family.upper()}-WS", str(ds.StudyDate), str(ds.PatientBirthDate)}
        target = folder / f"{family.lower()} {given.lower()} {i:03d}.dcm"
        ds.save_as(target, enforce_file_format=True)
        if ds.PatientID in done_patients or int(ds.get("NumberOfFrames") or 1) > 1:
            continue
        done_patients.add(ds.PatientID)
        ds.PixelData = _burn_text(ds.pixel_array, f"{name} {ds.PatientID}", ds.PhotometricInterpretation == "MONOCHROME1").tobytes()
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        for modality, sop, burned_flag in (("US", "1.2.840.10008.5.1.4.1.1.6.1", None),
                                           ("OT", "1.2.840.10008.5.1.4.1.1.7", None),
                                           ("CT", "1.2.840.10008.5.1.4.1.1.2", "YES"),
                                           ("CR", "1.2.840.10008.5.1.4.1.1.1", None),
                                           ("CT", "1.2.840.10008.5.1.4.1.1.2", None)):
            ds.Modality, ds.SOPClassUID = modality, sop
            ds.file_meta.MediaStorageSOPClassUID = sop
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{ds.SOPInstanceUID}.{len(burned) + 1}"
            if burned_flag:
                ds.BurnedInAnnotation = burned_flag
            elif "BurnedInAnnotation" in ds:
                del ds.BurnedInAnnotation
            burned.append(folder / f"{family}^{given} {modality} {len(burned)} capture.dcm")
            ds.save_as(burned[-1], enforce_file_format=True)
    return planted, burned


def spellings(value: str) -> set[str]:
    """The forms a value takes when a tool reformats it, lower-cased for a case-blind scan."""
    forms = {value}
    if "^" in value:
        parts = [p for p in value.split("^") if p]
        forms |= {" ".join(parts), " ".join(reversed(parts)), "_".join(parts), ", ".join(parts)}
    if re.fullmatch(r"(19|20)\d{6}", value):
        y, m, d = value[:4], value[4:6], value[6:]
        forms |= {f"{y}-{m}-{d}", f"{d}.{m}.{y}", f"{m}/{d}/{y}", f"{y}/{m}/{d}"}
    return {f.lower() for f in forms if len(f) >= 4}


def test_hospital_export_pipeline_leaks_no_planted_identifier(tmp_path):
    medtl = [sys.executable, "-m", "medtl.mlops.cli"]
    (tmp_path / "study.yaml").write_text(STUDY)
    key = tmp_path / "key"
    key.write_text("0" * 64)
    key.chmod(0o600)
    private = tmp_path / "private"  # the user's own side of the data: never shared, not scanned
    private.mkdir()
    logs = tmp_path / "logs"
    logs.mkdir()
    demo = subprocess.run([*medtl, "demo-archive", "--out", str(private / "demo"), "--planted-out", str(private / "planted.txt")],
                          capture_output=True, text=True, timeout=300)
    assert demo.returncode == 0, demo.stderr
    planted, burned = hospital_export(private / "demo", private / "export")
    planted |= {v for v in (private / "planted.txt").read_text().splitlines() if len(v) >= 4}
    shutil.rmtree(private / "demo")
    names = {p.name for p in (private / "export").iterdir()} | {p.stem for p in (private / "export").rglob("*.dcm")}
    planted |= names  # folder and file names
    steps = [
        ["ingest", str(private / "export"), "--out", "set", "--key-file", str(key), "--no-progress",
         "--source-map", str(private / "sources.csv")],
        ["pseudolabel", "set", "--clusters", "6"],
        ["sweep", "--study", "study.yaml"],
        ["promote", "--study", "leak"],
        ["evaluate", "--study", "leak", "--out", "report"],
    ]
    for i, step in enumerate(steps):
        result = subprocess.run([*medtl, "-v", *step], cwd=tmp_path, capture_output=True, text=True, timeout=900)
        (logs / f"{i}-{step[0]}.log").write_text(result.stdout + result.stderr)
        assert result.returncode == 0, (step, result.stderr[-3000:])
    assert len(planted) > 300  # names, IDs, dates, addresses, institutions, UIDs, paths, private tags
    forms = {form: value for value in planted for form in spellings(value)}
    scanned = 0
    hits = []
    for path in sorted(tmp_path.rglob("*")):
        if not path.is_file() or private in path.parents or path == key:
            continue
        blob = "\n".join(_texts(path)).replace(str(tmp_path), "<tmp>").lower()
        scanned += 1
        hits += [(str(path.relative_to(tmp_path)), value) for form, value in forms.items() if form in blob]
    assert scanned > 40
    kinds = {p.suffix for p in tmp_path.rglob("*") if p.is_file()}
    assert {".png", ".parquet", ".db", ".csv", ".json", ".html", ".log", ".pt"} <= kinds, kinds
    assert hits == []
    # Every file that may show burned-in text was refused with that reason, and none became an image.
    sources = dict(pd.read_csv(private / "sources.csv").itertuples(index=False))  # source_key -> path
    reasons = {sources[k]: r for k, r in pd.read_csv(tmp_path / "set" / "skipped.csv").itertuples(index=False)}
    export = private / "export"
    for path in burned:
        assert "burned-in text" in reasons[path.relative_to(export).as_posix()], path
    digests = {hmac.new(key.read_bytes().strip(), f"source\0{hashlib.sha256(p.read_bytes()).hexdigest()}".encode(),
                        hashlib.sha256).hexdigest()[:32] for p in burned}
    assert not digests & set(pd.read_parquet(tmp_path / "set" / "manifest.parquet")["source_key"])
    assert len(burned) == 30 and len(reasons) >= len(burned)
    pixel_refusals = [p for p in burned if reasons[p.relative_to(export).as_posix()].startswith("burned-in text found in the pixels")]
    assert len(pixel_refusals) == 12  # every CR and CT without a BurnedInAnnotation element
