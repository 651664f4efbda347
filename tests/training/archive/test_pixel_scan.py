"""The burned-in text scan in ingest: recall per category, false refusals, mask mode, overlays, failures."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medtl.training.archive import dicom, text_rules, text_set
from medtl.training.archive.deid import path_key
from medtl.training.archive.ingest import OFF_WARNING, ingest
from medtl.training.archive.ocr import TextReader
from medtl.training.archive.pixel_scan import Mode, Scanner, Verdict, parse_mode
from tests.training.archive.conftest import SCAN_KEY

MAX_FALSE_REFUSALS = 2
"""Of the 72 clean and marker-only twins, at most this many may be refused (measured: 0)."""


def _table(title: str, counts: dict[str, tuple[int, int]]) -> str:
    rows = [f"  {name:<18} {hit:>3}/{total:<3} {hit / total:.0%}" for name, (hit, total) in sorted(counts.items())]
    return "\n".join([title, *rows])


@pytest.mark.slow  # the generated set is ingested once per session (~30 s of OCR)
def test_every_image_with_identifying_text_is_refused_recall_per_category(refused, capsys):
    identifying = [c for c in refused.cases if c.identifying]
    per_category: dict[str, tuple[int, int]] = {}
    per_modality: dict[str, tuple[int, int]] = {}
    for case in identifying:
        hit = refused.reasons.get(case.name, "").startswith("burned-in text found in the pixels (")
        for table, name in ((per_category, case.category), (per_modality, case.modality)):
            done, total = table.get(name, (0, 0))
            table[name] = (done + hit, total + 1)
    with capsys.disabled():
        print("\n" + _table("burned-in text recall (refuse), per category:", per_category))
        print(_table("per modality:", per_modality))
    assert set(per_category) == set(text_set.CATEGORIES) and all(total == 9 for _, total in per_category.values())
    assert {name: hit / total for name, (hit, total) in per_category.items()} == dict.fromkeys(text_set.CATEGORIES, 1.0)
    assert all(hit == total for hit, total in per_modality.values())
    assert not set(refused.verdicts) & {c.name for c in identifying}  # none became an image
    # Reasons name a category, never the text: no value, no word of it.
    for case in identifying:
        reason = refused.reasons[case.name].lower()
        words = [w for w in case.text.replace("^", " ").replace(",", " ").split() if len(w) >= 3]
        assert case.text.lower() not in reason and not [w for w in words if w.lower() in reason], reason
    categories = Counter(refused.reasons[c.name].split("(", 1)[1].rstrip(")") for c in identifying)
    assert categories["patient name"] >= 6 and categories["birth date"] >= 6  # matched against the header


@pytest.mark.slow  # the generated set is ingested once per session (~30 s of OCR)
def test_clean_and_marker_images_are_converted_false_refusals_bounded(refused, capsys):
    twins = [c for c in refused.cases if not c.identifying]
    false = {c.name: refused.reasons[c.name] for c in twins if c.name in refused.reasons}
    with capsys.disabled():
        print(f"\nfalse refusals: {len(false)} of {len(twins)} clean and marker-only images {sorted(false.values())}")
    assert len(false) <= MAX_FALSE_REFUSALS
    verdicts = Counter(refused.verdicts[c.name] for c in twins if c.name in refused.verdicts)
    assert set(verdicts) <= {Verdict.CLEAN.value, Verdict.ALLOWED.value}
    # Overlays of a few letters are not even read (too short to hold an identifier); longer ones are read and allowed.
    long_markers = [c for c in twins if c.category == "markers" and len(c.text) >= 5 and c.name in refused.verdicts]
    assert sum(refused.verdicts[c.name] == Verdict.ALLOWED.value for c in long_markers) >= 0.8 * len(long_markers)


@pytest.mark.slow  # the generated set is ingested once per session (~30 s of OCR)
def test_verdicts_are_counted_per_modality_and_reason_without_text(refused):
    counts = pd.read_csv(refused.out / "scan_verdicts.csv")
    assert list(counts.columns) == ["verdict", "modality", "reason", "count"]
    refusals = counts[counts["verdict"] == "refused"]
    assert refusals.groupby("modality")["count"].sum().to_dict() == {"CR": 12, "CT": 12, "DX": 12}
    categories = {category for category, _ in text_rules.HEADER_FIELDS.values()}
    assert set(refusals["reason"]) <= categories | {"date", "long number", "name pattern", "unlisted word"}
    kept = counts[counts["verdict"] != "refused"]["count"].sum()
    assert kept == len(pd.read_parquet(refused.out / "manifest.parquet")) == len(refused.verdicts)
    written = (refused.out / "scan_verdicts.csv").read_text().lower() + (refused.out / "skipped.csv").read_text().lower()
    for case in refused.cases:
        assert not case.identifying or case.text.lower() not in written


@pytest.mark.slow  # the generated set is ingested once per session (~30 s of OCR)
def test_mask_mode_keeps_masked_images_with_no_identifying_text_left(masked, capsys):
    outcome = Counter("masked" if masked.verdicts.get(c.name) == Verdict.MASKED.value else
                      "refused" if "left after masking" in masked.reasons.get(c.name, "") else "other"
                      for c in masked.cases)
    with capsys.disabled():
        print(f"\nmask mode on {len(masked.cases)} identifying images: {dict(outcome)}")
    assert outcome["other"] == 0 and outcome["masked"] >= 0.8 * len(masked.cases)
    reader = TextReader()
    manifest = pd.read_parquet(masked.out / "manifest.parquet")
    for case in masked.cases:
        if masked.verdicts.get(case.name) != Verdict.MASKED.value:
            continue
        row = manifest[manifest["source_key"] == path_key(SCAN_KEY, f"{case.name}.dcm")].iloc[0]
        png = np.asarray(Image.open(masked.out / row["image_path"]))
        values = text_rules.header_values(_dataset(case))
        found = [line.text for line in reader.read(png) if text_rules.judge(line.text, line.score, values)[0] == "identifying"]
        assert found == [], case.name


def _dataset(case: text_set.TextCase):
    from pydicom.dataset import Dataset

    ds = Dataset()
    for keyword, value in text_set.patient(case.seed).items():
        setattr(ds, keyword, value)
    return ds


def test_scan_off_converts_unscanned_and_a_later_scan_catches_up(text_cases, text_archive, tmp_path, caplog):
    src = tmp_path / "src"
    src.mkdir()
    chosen = [c for c in text_cases if c.modality == "CR" and c.category in ("patient name", "clean")][:4]
    for case in chosen:
        (src / f"{case.name}.dcm").write_bytes((text_archive / f"{case.name}.dcm").read_bytes())
    off = ingest(src, tmp_path / "out", key=SCAN_KEY, progress=False, burned_in="off")
    assert off.converted == 4 and off.scan_mode == "off"
    assert OFF_WARNING in caplog.text and "pixels not scanned" in off.line()
    assert set(pd.read_parquet(tmp_path / "out" / "manifest.parquet")["pixel_scan"]) == {"off"}
    pngs = len(list((tmp_path / "out" / "images").rglob("*.png")))
    again = ingest(src, tmp_path / "out", key=SCAN_KEY, progress=False)  # the default scan re-examines them
    names = [c for c in chosen if c.identifying]
    assert again.refused_pixels == len(names) and again.already_done == 0
    manifest = pd.read_parquet(tmp_path / "out" / "manifest.parquet")
    assert "off" not in set(manifest["pixel_scan"]) and len(manifest) == 4 - len(names)
    assert len(list((tmp_path / "out" / "images").rglob("*.png"))) == pngs - len(names)  # their PNGs are gone
    masked = ingest(src, tmp_path / "out", key=SCAN_KEY, progress=False, burned_in="mask")  # a refusal is retried in another mode
    assert masked.masked == len(names) and masked.already_done == 4 - len(names)


def test_parse_mode_lists_the_choices():
    assert parse_mode(" MASK ") is Mode.MASK
    with pytest.raises(Exception, match="unknown --burned-in 'blur'; choose from refuse, mask, off"):
        parse_mode("blur")


def _images(folder: Path) -> dict[bytes, str]:
    """The full-resolution 8-bit image of each file (as the scan sees it) -> its file name."""
    seen: dict[bytes, str] = {}
    for path in sorted(folder.glob("*.dcm")):
        def note(image: np.ndarray, name: str = path.name) -> tuple[np.ndarray, str]:
            seen[image.tobytes()] = name
            return image, ""

        for frame in dicom.iter_frames(dicom.read_dataset(path), 32, note):
            assert frame.image is not None
    return seen


def test_a_crash_a_hang_or_an_error_in_the_ocr_is_a_skipped_row(text_cases, text_archive, tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    for case in [c for c in text_cases if c.category == "clean"][:4]:
        (src / f"{case.name}.dcm").write_bytes((text_archive / f"{case.name}.dcm").read_bytes())
    names = sorted(p.name for p in src.iterdir())
    owner = _images(src)
    real = Scanner.scan

    def faulty(self, image, values):  # runs in the forked workers
        name = owner.get(image.tobytes())
        if name == names[1]:
            import faulthandler

            faulthandler.disable()
            os.kill(os.getpid(), signal.SIGSEGV)  # a fault inside onnxruntime
        if name == names[2]:
            time.sleep(60)  # an OCR that never returns
        return real(self, image, values)

    monkeypatch.setattr(Scanner, "scan", faulty)
    monkeypatch.setattr(TextReader, "read", lambda self, image: (_ for _ in ()).throw(RuntimeError("engine")) if owner.get(image.tobytes()) == names[3] else [])
    summary = ingest(src, tmp_path / "out", key=SCAN_KEY, workers=2, progress=False, decode_timeout=3)
    skipped = pd.read_csv(tmp_path / "out" / "skipped.csv")
    reasons = {k: r for k, r in zip(skipped["source_key"], skipped["reason"])}
    assert reasons[path_key(SCAN_KEY, names[1])] == "text scan crashed (worker exit code -11)"
    assert reasons[path_key(SCAN_KEY, names[2])] == "text scan timed out after 3 s"
    assert reasons[path_key(SCAN_KEY, names[3])] == "text scan failed (RuntimeError)"  # never kept unscanned
    assert (summary.converted, summary.decoder_failures) == (1, 2)


def _with_overlay(path: Path, target: Path, text: str) -> None:
    """Copy a file, adding an overlay plane (6000) that spells `text` in large letters and a graphic annotation saying it."""
    import pydicom
    from PIL import ImageDraw
    from pydicom.dataset import Dataset
    from pydicom.pixels import pack_bits

    ds = pydicom.dcmread(path)
    canvas = Image.new("1", (int(ds.Columns), int(ds.Rows)), 0)
    ImageDraw.Draw(canvas).text((8, 8), text, fill=1, font=text_set.font("DejaVuSans.ttf", 18))
    bits = np.asarray(canvas, dtype=np.uint8)
    ds.add_new(0x60000010, "US", int(ds.Rows))
    ds.add_new(0x60000011, "US", int(ds.Columns))
    ds.add_new(0x60000040, "CS", "G")
    ds.add_new(0x60000050, "SS", [1, 1])
    ds.add_new(0x60000100, "US", 1)
    ds.add_new(0x60000102, "US", 0)
    ds.add_new(0x60003000, "OW", pack_bits(bits.ravel()))
    note, annotation = Dataset(), Dataset()
    note.UnformattedTextValue, note.AnchorPointAnnotationUnits = text, "PIXEL"
    note.AnchorPoint, note.AnchorPointVisibility = [10.0, 40.0], "Y"
    annotation.GraphicLayer, annotation.TextObjectSequence = "NAMES", [note]
    ds.GraphicAnnotationSequence = [annotation]
    ds.save_as(target)


def test_overlay_planes_and_graphic_annotations_are_never_drawn_into_the_png(text_cases, text_archive, tmp_path):
    from pydicom.data import get_testdata_file

    src = tmp_path / "src"
    src.mkdir()
    clean = next(c for c in text_cases if c.category == "clean" and c.modality == "CR")
    person = text_set.patient(clean.seed)
    _with_overlay(text_archive / f"{clean.name}.dcm", src / "overlaid.dcm", person["PatientName"].replace("^", " "))
    (src / "plain.dcm").write_bytes((text_archive / f"{clean.name}.dcm").read_bytes())
    (src / "examples_overlay.dcm").write_bytes(Path(get_testdata_file("examples_overlay.dcm")).read_bytes())  # pydicom's
    ingest(src, tmp_path / "out", key=SCAN_KEY, progress=False)
    manifest = pd.read_parquet(tmp_path / "out" / "manifest.parquet").set_index("source_key")
    png = {name: (tmp_path / "out" / manifest.loc[path_key(SCAN_KEY, name), "image_path"]).read_bytes()
           for name in ("overlaid.dcm", "plain.dcm", "examples_overlay.dcm")}
    assert png["overlaid.dcm"] == png["plain.dcm"]  # the overlay's and the annotation's text are dropped, not rendered
    import pydicom

    overlay = pydicom.dcmread(src / "examples_overlay.dcm")
    assert overlay.overlay_array(0x6000).sum() > 0
    expected = next(dicom.iter_frames(dicom.read_dataset(src / "examples_overlay.dcm"))).image
    assert png["examples_overlay.dcm"] == dicom.encode_png(expected)  # pixel data only, as decoded
