"""The pixel pipeline and header allow-list of one DICOM file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medtl.training.archive import dicom, header
from medtl.training.archive.demo_archive import planted_identifiers, write_demo_archive


def make_ds(pixels: np.ndarray, photometric: str = "MONOCHROME2", **tags) -> Dataset:
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    for name, value in tags.items():
        setattr(ds, name, value)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    return ds


def ramp(h: int = 64, w: int = 64, top: int = 4000) -> np.ndarray:
    return np.tile(np.linspace(0, top, w), (h, 1)).astype(np.uint16)


def test_rescale_then_file_window_maps_hounsfield_units():
    hu = np.array([[-1000, -160, 40, 240, 1000]] * 5)
    ds = make_ds(hu + 1024, RescaleIntercept=-1024, RescaleSlope=1, WindowCenter=40, WindowWidth=401)
    image, source = dicom.to_uint8(hu + 1024, ds, 0)
    assert source == "file"
    assert image[0].tolist() == [0, 0, 128, 255, 255]


def test_percentile_window_when_the_file_has_none():
    pixels = ramp()
    pixels[0, 0] = 65000  # one outlier must not squash the range
    image, source = dicom.to_uint8(pixels, make_ds(pixels), 0)
    assert source == "percentile"
    assert image.min() == 0 and image.max() == 255
    assert np.median(image) == pytest.approx(128, abs=8)


def test_monochrome1_is_inverted_and_keeps_ordering_reversed():
    pixels = ramp()
    normal, _ = dicom.to_uint8(pixels, make_ds(pixels), 0)
    inverted, _ = dicom.to_uint8(pixels, make_ds(pixels, "MONOCHROME1"), 0)
    assert np.array_equal(inverted.astype(int), 255 - normal.astype(int))
    row = inverted[0].astype(int)
    assert row[0] > row[-1] and np.all(np.diff(row) <= 0)  # higher stored value -> darker


def test_inverse_presentation_lut_flips_monochrome2():
    pixels = ramp()
    image, _ = dicom.to_uint8(pixels, make_ds(pixels, PresentationLUTShape="INVERSE"), 0)
    assert image[0, 0] == 255 and image[0, -1] == 0


def test_letterbox_keeps_aspect_ratio_with_zero_padding():
    image = np.full((50, 100), 200, dtype=np.uint8)
    out = dicom.letterbox(image, 224)
    assert out.shape == (224, 224)
    filled = np.flatnonzero(out[:, 112])
    assert len(filled) == 112 and filled[0] == 56  # 2:1 → 112 rows, centred
    assert out[:56].max() == 0 and out[168:].max() == 0


@pytest.mark.parametrize(
    ("image", "reason"),
    [
        (np.full((64, 64), 90, np.uint8), "nearly constant pixels"),
        (np.random.default_rng(0).integers(0, 255, (4, 100), dtype=np.uint8), "aspect ratio below 0.1"),
    ],
)
def test_degenerate_frames_are_named(image, reason):
    assert dicom.degenerate(image) == reason


def test_multiframe_gives_one_image_per_frame_and_drops_constant_ones():
    frames = np.stack([ramp(), ramp()[:, ::-1], np.full((64, 64), 7)])
    ds = make_ds(frames)
    out = list(dicom.iter_frames(ds, size=32))
    assert [f.index for f in out] == [0, 1, 2]
    assert out[0].image.shape == (32, 32) and not np.array_equal(out[0].image, out[1].image)
    assert out[2].image is None and out[2].reason == "nearly constant pixels"


def test_window_in_shared_functional_groups_is_used():
    pixels = np.stack([ramp(), ramp()])
    ds = make_ds(pixels)
    voi, shared = Dataset(), Dataset()
    voi.WindowCenter, voi.WindowWidth = 1000, 1001
    shared.FrameVOILUTSequence = [voi]
    ds.SharedFunctionalGroupsSequence = [shared]
    image, source = dicom.to_uint8(pixels[1], ds, 1)
    assert source == "file"
    assert (image == 255).mean() > 0.6  # values above 1500 saturate under this window


@pytest.mark.parametrize(
    ("texts", "expected"),
    [(("HEAD",), "head"), (("", "CT Thorax low dose"), "chest"), (("L-SPINE",), "spine"),
     (("Knee left",), "lower_limb"), (("HAND",), "upper_limb"), (("", None), "unknown")],
)
def test_body_part_vocabulary(texts, expected):
    assert header.normalise_body_part(*texts) == expected


def test_read_dataset_reasons(tmp_path: Path):
    (tmp_path / "empty.dcm").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not an image at all\n" * 20)
    no_pixels = make_ds(ramp())
    del no_pixels.PixelData
    no_pixels.save_as(tmp_path / "nopix.dcm", enforce_file_format=True)
    reasons = {}
    for name in ("empty.dcm", "notes.txt", "nopix.dcm"):
        with pytest.raises(dicom.SkipFile) as err:
            dicom.read_dataset(tmp_path / name)
        reasons[name] = str(err.value)
    assert reasons == {"empty.dcm": "empty file", "notes.txt": "not a DICOM file", "nopix.dcm": "no pixel data"}


def test_header_fields_hold_no_identifying_value(tmp_path: Path):
    write_demo_archive(tmp_path / "a", patients=2)
    planted = planted_identifiers(tmp_path / "a")
    assert len(planted) > 40
    for path in sorted((tmp_path / "a").rglob("*.dcm")):
        fields = header.header_fields(dicom.read_dataset(path))
        text = " ".join(str(v) for v in fields.values())
        assert not [p for p in planted if p in text]
        assert fields["body_part"] in {*header.BODY_PARTS, header.UNKNOWN_BODY_PART}
    assert "patient" not in " ".join(fields)


def _header(**tags) -> Dataset:
    ds = Dataset()
    for name, value in tags.items():
        setattr(ds, name, value)
    return ds


@pytest.mark.parametrize(
    ("tags", "allowed", "reason"),
    [
        ({"Modality": "CT"}, (), None),
        ({"Modality": "CT", "BurnedInAnnotation": "YES"}, (), "burned-in text: BurnedInAnnotation is YES"),
        ({"Modality": "MR", "RecognizableVisualFeatures": "YES"}, (), "RecognizableVisualFeatures is YES"),
        ({"Modality": "US"}, (), "US (ultrasound) images commonly carry it; convert with --allow-modality US"),
        ({"Modality": "US", "BurnedInAnnotation": "NO"}, (), "--allow-modality US"),
        ({"Modality": "US"}, ("US",), "US (ultrasound) allowed, but BurnedInAnnotation is not NO"),
        ({"Modality": "US", "BurnedInAnnotation": "NO"}, ("US",), None),
        ({"Modality": "US", "BurnedInAnnotation": "YES"}, ("US",), "BurnedInAnnotation is YES"),
        ({"Modality": "CT", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.7"}, (), "SC (secondary capture)"),
        ({"Modality": "MR", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.7.4"}, ("US",), "--allow-modality SC"),
        ({"Modality": "XA"}, (), "XA (angiography)"),
        ({"Modality": "RF"}, (), "RF (fluoroscopy)"),
        ({"Modality": "ES"}, (), "ES (endoscopy)"),
        ({"Modality": "DOC", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.104.1", "BurnedInAnnotation": "NO"}, ("OT",),
         "document or report SOP class"),
        ({}, (), "OT (other or unknown modality)"),
        ({"Modality": "RTDOSE"}, (), "OT (other or unknown modality)"),
    ],
)
def test_burned_in_text_policy(tags, allowed, reason):
    found = header.burned_in_text(_header(**tags), frozenset(allowed))
    assert found == reason if reason is None else reason in found
    if found is not None:
        assert "burned-in text" in found


def test_free_text_fields_pass_through_vocabularies_only():
    assert header.normalise_manufacturer("GE MEDICAL SYSTEMS") == "ge"
    assert header.normalise_manufacturer("TOSHIBA_MEC") == "canon"
    assert header.normalise_manufacturer("Dr Kowalczyk's private clinic, ward 3") == "other"
    assert header.normalise_manufacturer("") == "unknown"
    assert header.normalise_photometric("MONOCHROME2 ") == "MONOCHROME2"
    assert header.normalise_photometric("Kowalczyk") == "other"
    ds = make_ds(np.arange(64, dtype=np.uint16).reshape(8, 8), Manufacturer="Siemens Healthineers",
                 ManufacturerModelName="Room of Dr Kowalczyk", StationName="KOWALCZYK-PC")
    fields = header.header_fields(ds)
    assert fields["manufacturer"] == "siemens" and "manufacturer_model" not in fields
    assert "kowalczyk" not in " ".join(map(str, fields.values())).lower()


def test_pixel_count_limit_applies_before_decoding():
    ds = _header(Rows=4096, Columns=4096, NumberOfFrames=20)
    with pytest.raises(dicom.SkipFile, match="too many pixels"):
        dicom.check_pixel_count(ds, 2**28)
    dicom.check_pixel_count(_header(Rows=512, Columns=512, NumberOfFrames=20), 2**28)
