"""Generated CR, DX and CT files with a patient's identifiers drawn into the pixels, and their clean twins.

For the burned-in text scan's tests and benchmark. Every file's header holds a fake patient (name,
ID, birth date, accession number, institution); a `text` case draws one of those values, in one of
its common spellings, into the pixels, in one of several fonts (PIL's bundled font and, when
matplotlib is installed, its DejaVu fonts), sizes, corners, contrasts and polarities (bright text,
dark text on a bright label, MONOCHROME1 files); none declares `BurnedInAnnotation`. Each text case
has two twins with the same anatomy: `clean` (no text) and `markers` (only laterality, view and
technique overlays, which the scan allows). The anatomy is the demo archive's (`demo_archive.render`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from medtl.training.archive.demo_archive import render
from medtl.training.archive.text_rules import MONTHS

CATEGORIES = ("patient name", "patient ID", "birth date", "accession number")
MODALITIES = ("CR", "DX", "CT")
FONTS = ("pil", "DejaVuSans.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSerif.ttf")
CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")
SMALL = {"CR": (288, 240), "DX": (256, 288), "CT": (256, 256)}
"""Image shapes of the test set (rows, columns): small, so that a scan costs tens of milliseconds."""
_SOP = {"CR": "1.2.840.10008.5.1.4.1.1.1", "DX": "1.2.840.10008.5.1.4.1.1.1.1", "CT": "1.2.840.10008.5.1.4.1.1.2"}
_PART = {"CR": "CHEST", "DX": "HAND", "CT": "HEAD"}
_PEOPLE = (("Kowalczyk", "Margarethe"), ("Fitzgerald", "Bartholomew"), ("Okonkwo", "Oluwaseun"),
           ("Lindqvist", "Ingeborg"), ("Marchetti", "Francesca"), ("Hernandez", "Esperanza"))
_MARKERS = ("L", "R", "AP", "PA", "PA ERECT", "AP SUPINE", "R  80 kV  2.5 mAs", "L PORTABLE", "LAT", "W:400 L:40")


@dataclass(frozen=True)
class TextCase:
    """One generated file: what its pixels show and how."""

    name: str
    modality: str
    category: str  # one of CATEGORIES, or `clean`, or `markers`
    text: str
    font: str
    size: int  # font size in pixels
    corner: str
    contrast: float  # text intensity above (or below) its background, as a fraction of the display range
    polarity: str  # `bright` text, or `dark` text on a bright label
    monochrome1: bool
    shape: tuple[int, int]
    seed: int

    @property
    def identifying(self) -> bool:
        """Whether the pixels show a patient identifier (the scan must refuse or mask the file)."""
        return self.category in CATEGORIES


def patient(seed: int) -> dict[str, str]:
    """The fake patient of the files with this seed (header values; the same ones drawn into the pixels)."""
    rng = np.random.default_rng(seed)
    family, given = _PEOPLE[seed % len(_PEOPLE)]
    birth = f"19{rng.integers(30, 99)}{rng.integers(1, 13):02d}{rng.integers(10, 29):02d}"
    return {"PatientName": f"{family}^{given}", "PatientID": f"PID{rng.integers(10**6, 10**7)}",
            "PatientBirthDate": birth, "AccessionNumber": f"ACC{rng.integers(10**7, 10**8)}",
            "InstitutionName": "Riverside General Hospital", "StudyDate": f"20{rng.integers(10, 24)}0{rng.integers(1, 10)}15"}


def spelling(category: str, person: dict[str, str], variant: int) -> str:
    """One of the common ways a scanner or PACS writes the value of `category` into an image."""
    family, given = person["PatientName"].split("^")
    y, m, d = person["PatientBirthDate"][:4], person["PatientBirthDate"][4:6], person["PatientBirthDate"][6:]
    digits = re.sub(r"\D", "", person["PatientID"])
    accession = re.sub(r"\D", "", person["AccessionNumber"])
    forms = {
        "patient name": (f"{family.upper()}^{given.upper()}", f"{family}, {given}", f"{given} {family}".upper()),
        "patient ID": (person["PatientID"], f"ID: {digits}", f"MRN {digits}"),
        "birth date": (f"{d}.{m}.{y}", f"DOB {y}-{m}-{d}", f"{m}/{d}/{y}", f"{d} {MONTHS[int(m) - 1]} {y}"),
        "accession number": (person["AccessionNumber"], f"Acc# {accession}", f"A {accession}"),
    }[category]
    return forms[variant % len(forms)]


def text_cases(shapes: dict[str, tuple[int, int]] = SMALL, *, variants: int = 3, sizes: tuple[int, ...] = (10, 13, 16),
               contrasts: tuple[float, ...] = (1.0, 0.6)) -> list[TextCase]:
    """Text cases over modality x category x `variants`, cycling fonts, sizes, corners, contrasts and polarities.

    Every level of each factor appears in every modality; CR and DX files are MONOCHROME1 one time in three.
    """
    cases = []
    i = 0
    for modality in MODALITIES:
        for category in CATEGORIES:
            for v in range(variants):
                seed = 100 + i
                cases.append(TextCase(
                    name=f"{modality}_{category.replace(' ', '_')}_{v}", modality=modality, category=category,
                    text=spelling(category, patient(seed), v), font=FONTS[i % len(FONTS)], size=sizes[i % len(sizes)],
                    corner=CORNERS[(i // 2) % len(CORNERS)], contrast=contrasts[(i // 3) % len(contrasts)],
                    polarity=("bright", "dark")[(i // 5) % 2], monochrome1=modality != "CT" and i % 3 == 1,
                    shape=shapes[modality], seed=seed))
                i += 1
    return cases


def twins(cases: list[TextCase]) -> list[TextCase]:
    """For each text case, a `clean` twin (no text) and a `markers` twin (overlays only), same anatomy."""
    out = []
    for k, case in enumerate(cases):
        out.append(replace(case, name=f"{case.name}_clean", category="clean", text=""))
        out.append(replace(case, name=f"{case.name}_markers", category="markers", text=_MARKERS[k % len(_MARKERS)]))
    return out


def font(name: str, size: int) -> Any:
    """A PIL font: PIL's bundled one (`pil`), or a TTF shipped with matplotlib (PIL's when it is absent)."""
    from PIL import ImageFont

    if name != "pil":
        try:
            import matplotlib

            return ImageFont.truetype(str(Path(matplotlib.__file__).parent / "mpl-data" / "fonts" / "ttf" / name), size)
        except (ImportError, OSError):
            pass
    return ImageFont.load_default(size=size)


def display_image(case: TextCase) -> np.ndarray:
    """The image as it is displayed (float, 0 = black, 1 = white), with the case's text drawn in."""
    from PIL import Image, ImageDraw
    from scipy.ndimage import zoom

    rng = np.random.default_rng(case.seed)
    base = render("CR" if case.modality == "DX" else case.modality, _PART[case.modality], rng, 0.5).astype(np.float64)
    big = zoom(base, (case.shape[0] / base.shape[0], case.shape[1] / base.shape[1]), order=1)
    low, high = np.percentile(big, (1, 99))
    shown = np.clip((big - low) / max(high - low, 1e-6), 0, 1) * 0.85 + 0.05
    shown = np.clip(shown + rng.normal(0, 0.02, shown.shape), 0, 1)
    if not case.text:
        return shown
    ink = Image.new("L", case.shape[::-1], 0)
    draw = ImageDraw.Draw(ink)
    typeface = font(case.font, case.size)
    left, top, right, bottom = draw.textbbox((0, 0), case.text, font=typeface)
    margin = max(3, case.shape[1] // 40)
    x = margin if "left" in case.corner else case.shape[1] - margin - (right - left)
    y = margin if "top" in case.corner else case.shape[0] - margin - (bottom - top)
    draw.text((x - left, y - top), case.text, fill=255, font=typeface)
    alpha = np.asarray(ink, dtype=np.float64) / 255.0
    region = (slice(max(0, y - 2), y + bottom - top + 2), slice(max(0, x - 2), x + right - left + 2))
    if case.polarity == "dark":  # dark letters on a bright label box
        label = 0.92
        shown[region] = label
        value = label - case.contrast * label
    else:
        value = min(1.0, float(np.median(shown[region])) + case.contrast * (1 - float(np.median(shown[region]))))
    return shown * (1 - alpha) + value * alpha


def write_case(case: TextCase, folder: Path) -> Path:
    """Write the case as a DICOM file `folder/<name>.dcm` (stored values whose VOI window shows `display_image`)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    shown = display_image(case)
    stored_range = 4095.0
    stored = np.round((1.0 - shown if case.monochrome1 else shown) * stored_range).astype(np.uint16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = _SOP[case.modality]
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid(entropy_srcs=[case.name])
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for keyword, value in patient(case.seed).items():
        setattr(ds, keyword, value)
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[case.name, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[case.name, "series"])
    ds.Modality, ds.BodyPartExamined = case.modality, _PART[case.modality]
    ds.Rows, ds.Columns = case.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1" if case.monochrome1 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if case.modality == "CT":  # Hounsfield units through the rescale; the window shows the whole stored range
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.WindowCenter, ds.WindowWidth = stored_range / 2 - 1024 + 0.5, stored_range + 1
    else:
        ds.WindowCenter, ds.WindowWidth = stored_range / 2 + 0.5, stored_range + 1
    ds.PixelData = stored.tobytes()
    path = Path(folder) / f"{case.name}.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
