"""A small synthetic DICOM archive (CT, MR, CR) with fake identifying values in every PHI field.

Each (modality, body part) group has its own anatomy and intensity statistics, so pseudo-labels
can recover the groups: head = a skull-like ring around brain, chest = a body with two dark
lung lobes and a spine, hand = finger-like bone bars, knee = two long bones meeting at a joint.
CT is stored in Hounsfield units (rescale intercept -1024), MR as arbitrary signal with a bias
field, CR as 12-bit attenuation. The archive covers a multi-frame (enhanced MR) file with its
window in functional groups, MONOCHROME1 radiographs, RLE-compressed files, and series with and
without a VOI window. Every patient-identifying field holds a plausible fake value;
`planted_identifiers` reads them back so tests can scan outputs for leaks. Every 20th patient
(the 4th, 24th, ...) also has an annotated copy of one radiograph or CT slice with the patient's
name and ID drawn into the pixels and no `BurnedInAnnotation` element, as some modalities and PACS
exports write them: ingest's pixel scan refuses it, so the demo shows the scan at work.

Shared structure with the demo tasks, by construction: the anatomy is drawn from the primitives the
synthetic downstream tasks (`medtl.training.data.synthetic`) are made of — rings (skull), filled
ellipses and discs (lungs, brain, spine), bars (fingers) and blocks (bones) — on noisy, smoothly
lit backgrounds. Telling the groups apart at 32×32 pixels takes shape and texture features, the
same ones the demo tasks need, so a network pretrained on the pseudo-labels has learnt something
that transfers. This demonstrates the pipeline, not a medical finding.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medtl.atomic import atomic_dir
from medtl.errors import UserError

# (modality, BodyPartExamined) of each group; a patient gets three of them.
GROUPS: tuple[tuple[str, str], ...] = (
    ("CT", "HEAD"), ("CT", "CHEST"), ("MR", "HEAD"), ("MR", "KNEE"), ("CR", "CHEST"), ("CR", "HAND"),
)
SHAPES = {"CT": (96, 96), "MR": (96, 80), "CR": (128, 104)}
IMAGES_PER_SERIES = {"CT": 4, "MR": 4, "CR": 2}

# Keywords whose values identify a person, an institution, a date or an instance.
IDENTIFYING_KEYWORDS: tuple[str, ...] = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientAddress", "PatientTelephoneNumbers",
    "OtherPatientIDs", "PatientMotherBirthName", "AccessionNumber", "InstitutionName",
    "InstitutionAddress", "InstitutionalDepartmentName", "ReferringPhysicianName",
    "PerformingPhysicianName", "OperatorsName", "StationName", "StudyID", "StudyDate",
    "SeriesDate", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID",
)
_FAMILY = ("Kowalczyk", "Fitzgerald", "Okonkwo", "Lindqvist", "Marchetti", "Hernandez", "Takahashi", "Abernathy")
_GIVEN = ("Margarethe", "Bartholomew", "Oluwaseun", "Ingeborg", "Francesca", "Esperanza", "Hiroshi", "Cornelius")
_STREETS = ("Elmwood Avenue", "Quarry Lane", "Birchfield Road", "Harbour Street", "Juniper Court")
_HOSPITALS = ("Riverside General Hospital", "Saint Aldric Medical Centre", "Northgate University Clinic")
_PERSON_NAMES = frozenset(
    {"PatientName", "PatientMotherBirthName", "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName"}
)
_UID_PREFIX = "1.2.826.0.1.3680043.8.498."


@dataclass(frozen=True)
class DemoArchive:
    """What `write_demo_archive` wrote."""

    root: Path
    files: int
    images: int
    patients: int
    burned_in: int = 0


def _grid(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    return (yy - h / 2) / (h / 2), (xx - w / 2) / (w / 2)


def _ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def anatomy(part: str, shape: tuple[int, int], rng: np.random.Generator, phase: float) -> np.ndarray:
    """A tissue map: 0 air, 1 soft tissue, 2 bone, 3 lung / fluid, 4 brain; `phase` in [0, 1] moves the slice."""
    yy, xx = _grid(shape)
    tissue = np.zeros(shape, dtype=np.int8)
    j = rng.uniform(-0.05, 0.05, 4)
    if part == "HEAD":
        ry, rx = 0.85 - 0.2 * phase + j[0], 0.7 - 0.15 * phase + j[1]
        tissue[_ellipse(yy, xx, j[2], j[3], ry, rx)] = 2
        tissue[_ellipse(yy, xx, j[2], j[3], ry - 0.1, rx - 0.1)] = 4
        tissue[_ellipse(yy, xx, j[2] - 0.05, j[3], 0.2, 0.08)] = 3
    elif part == "CHEST":
        tissue[_ellipse(yy, xx, j[2], j[3], 0.75 + j[0], 0.92 + j[1])] = 1
        for side in (-1, 1):
            tissue[_ellipse(yy, xx, -0.05 + j[2], side * 0.42, 0.5 - 0.1 * phase, 0.3)] = 3
        tissue[_ellipse(yy, xx, 0.55 + j[2], j[3], 0.15, 0.1)] = 2
    elif part == "HAND":
        tissue[_ellipse(yy, xx, 0.3 + j[2], j[3], 0.55, 0.5 + j[0])] = 1
        for k, x0 in enumerate(np.linspace(-0.45, 0.45, 5)):
            top = -0.85 + 0.1 * abs(k - 2) + j[1]
            tissue[(np.abs(xx - x0 - j[3]) < 0.07) & (yy > top) & (yy < 0.6)] = 1
            tissue[(np.abs(xx - x0 - j[3]) < 0.035) & (yy > top + 0.05) & (yy < 0.55)] = 2
    elif part == "KNEE":
        tissue[np.abs(xx - j[3]) < 0.6 + j[0]] = 1
        gap = 0.04 + 0.03 * phase
        tissue[(np.abs(xx - j[3]) < 0.35) & (yy < -gap + j[2])] = 2
        tissue[(np.abs(xx - j[3]) < 0.3) & (yy > gap + j[2])] = 2
        tissue[_ellipse(yy, xx, j[2], j[3], gap, 0.35)] = 3
    else:
        raise ValueError(f"unknown body part {part!r}; valid: HEAD, CHEST, HAND, KNEE")
    return tissue


# Tissue value per modality: air, soft tissue, bone, lung/fluid, brain.
_VALUES = {"CT": (-1000, 40, 1100, -820, 30), "MR": (5, 420, 60, 900, 650), "CR": (150, 1500, 3300, 500, 1500)}


def render(modality: str, part: str, rng: np.random.Generator, phase: float) -> np.ndarray:
    """Stored pixel values (uint16) of one synthetic image."""
    shape = SHAPES[modality]
    tissue = anatomy(part, shape, rng, phase)
    values = np.asarray(_VALUES[modality], dtype=np.float64)[tissue]
    if modality == "CT":
        values += rng.normal(0, 18, shape)
        stored = values + 1024
    elif modality == "MR":
        yy, xx = _grid(shape)
        bias = 1.0 + 0.25 * (np.cos(1.3 * yy + rng.uniform(0, 3)) * np.sin(0.9 * xx))
        noise = rng.normal(0, 25, shape) + 1j * rng.normal(0, 25, shape)
        stored = np.abs(values * bias + noise)
    else:
        from scipy.ndimage import gaussian_filter

        stored = gaussian_filter(values, 1.2) + rng.normal(0, 40, shape)
        stored += 400 * (_grid(shape)[0] + 1)  # heel effect: a smooth exposure gradient
    return np.clip(stored, 0, 4095).astype(np.uint16)


def _uid(rng: np.random.Generator) -> str:
    return _UID_PREFIX + ".".join(str(int(v)) for v in rng.integers(1, 10**9, 3))


def _person(rng: np.random.Generator, index: int) -> dict[str, str]:
    family, given = _FAMILY[index % len(_FAMILY)], _GIVEN[(index * 3 + 1) % len(_GIVEN)]

    def digits(n: int) -> str:
        return "".join(str(d) for d in rng.integers(0, 10, n))

    return {
        "PatientName": f"{family}^{given}",
        "PatientID": f"PID{digits(7)}",
        "OtherPatientIDs": f"MRN-{digits(8)}",
        "PatientBirthDate": f"19{rng.integers(30, 99)}{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}",
        "PatientAddress": f"{rng.integers(10, 999)} {_STREETS[index % len(_STREETS)]}, Springfield",
        "PatientTelephoneNumbers": f"+1-555-{digits(7)}",
        "PatientMotherBirthName": f"{_FAMILY[(index + 3) % len(_FAMILY)]}^{_GIVEN[index % len(_GIVEN)]}",
        "InstitutionName": _HOSPITALS[index % len(_HOSPITALS)],
        "InstitutionAddress": f"{rng.integers(1, 99)} Hospital Drive, Rivertown",
        "InstitutionalDepartmentName": f"Radiology Wing {chr(65 + index % 26)}{digits(2)}",
        "ReferringPhysicianName": f"{_FAMILY[(index + 5) % len(_FAMILY)]}^Dr {_GIVEN[(index + 2) % len(_GIVEN)]}",
        "PerformingPhysicianName": f"{_FAMILY[(index + 6) % len(_FAMILY)]}^{_GIVEN[(index + 4) % len(_GIVEN)]}",
        "OperatorsName": f"Tech{digits(3)}^{_GIVEN[(index + 5) % len(_GIVEN)]}",
    }


def _dataset(modality: str, part: str, pixels: np.ndarray, tags: dict[str, Any]) -> Any:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

    sop_class = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4",
                 "CR": "1.2.840.10008.5.1.4.1.1.1"}[modality]
    if pixels.ndim == 3:
        sop_class = "1.2.840.10008.5.1.4.1.1.4.1"  # Enhanced MR Image Storage
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = tags["SOPInstanceUID"]
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    for name, value in tags.items():
        setattr(ds, name, value)
    ds.Modality, ds.BodyPartExamined = modality, part
    ds.Manufacturer = {"CT": "Acme Imaging", "MR": "Magnetix Systems", "CR": "Lumen Radiography"}[modality]
    ds.ManufacturerModelName = f"{modality}-Model 3"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelSpacing = {"CT": [0.7, 0.7], "MR": [0.9, 0.9], "CR": [0.15, 0.15]}[modality]
    if modality != "CR":
        ds.SliceThickness = {"CT": 2.5, "MR": 4.0}[modality]
    if modality == "CT":
        ds.KVP = 120
    if modality == "MR":
        ds.MagneticFieldStrength, ds.EchoTime, ds.RepetitionTime = 1.5, 15.0, 500.0
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    return ds


def write_demo_archive(out: Path, *, seed: int = 0, patients: int = 6) -> DemoArchive:
    """Write the synthetic archive under `out` (created whole, atomically; must not exist or be empty).

    Layout `patient_NN/study_N/series_N/IMnnnn.dcm`; names carry no identifying value.
    """
    from pydicom.dataset import Dataset
    from pydicom.uid import RLELossless

    out = Path(out)
    if patients < 1:
        raise UserError(f"--patients must be at least 1, got {patients}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} exists and is not an empty folder; choose a new one")
    files = images = burned = 0
    rng = np.random.default_rng(seed)
    with atomic_dir(out) as tmp:  # an empty folder is replaced too
        for p in range(patients):
            person = _person(rng, p)
            for s, g in enumerate((p, p + 1, p + 3)):
                modality, part = GROUPS[g % len(GROUPS)]
                study = {**person, "StudyInstanceUID": _uid(rng), "StudyID": f"ST{rng.integers(10**5, 10**6)}",
                         "AccessionNumber": f"ACC{rng.integers(10**7, 10**8)}",
                         "StudyDate": f"20{rng.integers(10, 24)}{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}",
                         "StudyTime": f"{rng.integers(7, 19):02d}{rng.integers(0, 60):02d}00",
                         "StationName": f"{modality}STN{rng.integers(10, 99)}"}
                series = {**study, "SeriesInstanceUID": _uid(rng), "FrameOfReferenceUID": _uid(rng),
                          "SeriesDate": study["StudyDate"], "SeriesNumber": s + 1}
                folder = tmp / f"patient_{p:02d}" / f"study_{s + 1}" / "series_1"
                folder.mkdir(parents=True)
                count = IMAGES_PER_SERIES[modality]
                stack = [render(modality, part, rng, i / max(count - 1, 1)) for i in range(count)]
                multiframe = modality == "MR" and p % 2 == 0
                batches = [np.stack(stack)] if multiframe else stack
                for i, pixels in enumerate(batches):
                    ds = _dataset(modality, part, pixels, {**series, "SOPInstanceUID": _uid(rng), "InstanceNumber": i + 1})
                    _style(ds, modality, part, p, multiframe)
                    if modality == "CR" and p % 3 == 2:
                        ds.compress(RLELossless, generate_instance_uid=False)
                    if multiframe:
                        _functional_groups(ds, Dataset)
                    ds.save_as(folder / f"IM{i + 1:04d}.dcm", enforce_file_format=True)
                    files += 1
                    images += pixels.shape[0] if pixels.ndim == 3 else 1
                    if p % BURNED_IN_EVERY == BURNED_IN_FIRST and modality != "MR" and burned == p // BURNED_IN_EVERY:
                        _annotated(ds).save_as(folder / f"IM{i + 1:04d}_annotated.dcm", enforce_file_format=True)
                        files, images, burned = files + 1, images + 1, burned + 1
    return DemoArchive(out, files, images, patients, burned)


BURNED_IN_EVERY, BURNED_IN_FIRST = 20, 3


def _annotated(ds: Any) -> Any:
    """A copy of an uncompressed single-frame image with the patient's family name and ID burned in (white)."""
    from PIL import Image, ImageDraw, ImageFont
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    copy = ds.copy()
    if copy.file_meta.TransferSyntaxUID.is_compressed:
        copy.decompress()
    copy.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    pixels = copy.pixel_array.astype(np.uint16)
    ink = Image.new("L", (pixels.shape[1], pixels.shape[0]), 0)
    family = str(copy.PatientName).split("^")[0].upper()
    ImageDraw.Draw(ink).multiline_text((3, 3), f"{family}\n{copy.PatientID}", fill=255, font=ImageFont.load_default(size=11))
    white = 0 if str(copy.PhotometricInterpretation) == "MONOCHROME1" else 4095
    pixels[np.asarray(ink) > 127] = white
    copy.PixelData = pixels.tobytes()
    copy.SOPInstanceUID = copy.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(copy.SOPInstanceUID), "annotated"])
    return copy


def _style(ds: Any, modality: str, part: str, patient: int, multiframe: bool) -> None:
    """Photometric interpretation, rescale and window per modality (some with none)."""
    ds.PhotometricInterpretation = "MONOCHROME2"
    if modality == "CT":
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.WindowCenter, ds.WindowWidth = (40, 120) if part == "HEAD" else (-500, 1600)
    elif modality == "MR" and patient % 3 == 1 and not multiframe:
        ds.WindowCenter, ds.WindowWidth = 500, 1000
    elif modality == "CR":
        if patient % 2 == 1:  # MONOCHROME1: stored values inverted, displayed the same way
            arr = 4095 - np.frombuffer(ds.PixelData, dtype=np.uint16)
            ds.PixelData = arr.astype(np.uint16).tobytes()
            ds.PhotometricInterpretation = "MONOCHROME1"
            ds.WindowCenter, ds.WindowWidth = 4095 - 1900, 3200
        elif patient % 3 == 0:
            ds.WindowCenter, ds.WindowWidth = 1900, 3200


def _functional_groups(ds: Any, dataset: type) -> None:
    """Move the multi-frame file's rescale and window into the shared functional groups."""
    voi, transform, shared = dataset(), dataset(), dataset()
    voi.WindowCenter, voi.WindowWidth = 450, 900
    transform.RescaleIntercept, transform.RescaleSlope, transform.RescaleType = 0, 1, "US"
    shared.FrameVOILUTSequence = [voi]
    shared.PixelValueTransformationSequence = [transform]
    ds.SharedFunctionalGroupsSequence = [shared]


def planted_identifiers(archive_dir: Path) -> set[str]:
    """Every identifying value in the archive's files (and each name component of 4+ letters).

    Read back from the DICOM files themselves, so the set is exactly what a leak would show.
    """
    import pydicom

    found: set[str] = set()
    for path in sorted(Path(archive_dir).rglob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for keyword in IDENTIFYING_KEYWORDS:
            value = ds.get(keyword)
            if value in (None, ""):
                continue
            text = str(value)
            found.add(text)
            if keyword in _PERSON_NAMES:
                found.update(p for p in text.replace("^", " ").split() if len(p) >= 4 and p.isalpha())
    return {value for value in found if len(value) >= 4}
