"""What may leave a DICOM header, and which images are refused for what their pixels may show.

Header values leave the archive only through `header_fields` (an allow-list of technical
fields, free text normalised to small vocabularies) and `identity` (raw identifiers meant to be
hashed at once by the caller, never written).

Burned-in text (DICOM PS3.15, "Clean Pixel Data"): the header cannot de-identify text drawn into
the pixels. `burned_in_text` refuses every image that declares it (`BurnedInAnnotation = YES`),
images that show a face or other recognisable features, document classes (encapsulated PDF/CDA),
and, unless the caller opts in *and* the file says `BurnedInAnnotation = NO`, the modalities and
SOP classes that commonly carry it: ultrasound, secondary capture / other, angiography,
fluoroscopy, endoscopy and visible-light photographs. See docs/privacy.md.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

MODALITIES = frozenset({"CT", "MR", "CR", "DX", "XA", "RF", "US", "MG", "NM", "PT", "SC", "OT"})

# Normalised body part -> words that name it (BodyPartExamined first, then descriptions).
BODY_PARTS: dict[str, frozenset[str]] = {
    "breast": frozenset({"BREAST", "MAMMA", "MAMMO"}),
    "spine": frozenset({"SPINE", "CSPINE", "TSPINE", "LSPINE", "VERTEBRA", "SACRUM", "COCCYX"}),
    "head": frozenset({"HEAD", "BRAIN", "SKULL", "CRANIUM", "CEREBRUM", "ORBIT", "SINUS", "IAC"}),
    "neck": frozenset({"NECK", "THYROID", "LARYNX"}),
    "chest": frozenset({"CHEST", "THORAX", "LUNG", "LUNGS", "HEART", "RIB", "RIBS", "CARDIAC"}),
    "abdomen": frozenset({"ABDOMEN", "ABD", "LIVER", "KIDNEY", "PANCREAS", "STOMACH", "BOWEL"}),
    "pelvis": frozenset({"PELVIS", "HIP", "BLADDER", "PROSTATE", "UTERUS"}),
    "upper_limb": frozenset(
        {"HAND", "WRIST", "FINGER", "ELBOW", "ARM", "FOREARM", "SHOULDER", "HUMERUS", "CLAVICLE", "EXTREMITY"}
    ),
    "lower_limb": frozenset({"KNEE", "LEG", "ANKLE", "FOOT", "FEMUR", "TIBIA", "TOE", "HEEL", "CALF"}),
}
UNKNOWN_BODY_PART = "unknown"

# Modality codes whose images commonly carry burned-in text (screen captures, annotated frames,
# scanned documents, photographs): refused unless opted in and `BurnedInAnnotation = NO`.
BURNED_IN_MODALITIES: dict[str, str] = {
    "US": "ultrasound", "SC": "secondary capture", "OT": "other or unknown modality",
    "XA": "angiography", "RF": "fluoroscopy", "ES": "endoscopy", "XC": "external photograph",
    "GM": "general microscopy", "SM": "slide microscopy",
}
# SOP class UID prefixes -> the code above they count as (a file's class wins over its Modality).
_BURNED_IN_SOP_PREFIXES: tuple[tuple[str, str], ...] = (
    ("1.2.840.10008.5.1.4.1.1.7", "SC"),  # secondary capture, incl. multi-frame variants
    ("1.2.840.10008.5.1.4.1.1.6.", "US"),  # ultrasound image storage
    ("1.2.840.10008.5.1.4.1.1.3.1", "US"),  # ultrasound multi-frame
    ("1.2.840.10008.5.1.4.1.1.12.1", "XA"),  # X-ray angiography (and enhanced XA)
    ("1.2.840.10008.5.1.4.1.1.12.2", "RF"),  # X-ray radiofluoroscopy
    ("1.2.840.10008.5.1.4.1.1.77.1.1", "ES"),  # VL endoscopic image / video
    ("1.2.840.10008.5.1.4.1.1.77.1.2", "GM"),  # VL microscopic
    ("1.2.840.10008.5.1.4.1.1.77.1.3", "SM"),  # VL slide-coordinates microscopic
    ("1.2.840.10008.5.1.4.1.1.77.1.4", "XC"),  # VL photographic
    ("1.2.840.10008.5.1.4.1.1.77.1.6", "SM"),  # VL whole slide microscopy
)
# Document classes: never converted (their "image" is a page of text).
_DOCUMENT_SOP_PREFIXES = ("1.2.840.10008.5.1.4.1.1.104", "1.2.840.10008.5.1.4.1.1.88")

# Manufacturer names -> one word of a fixed vocabulary; anything else is "other". Model names,
# station names and software versions are free text (a station name can name a ward or a
# person) and are not copied at all.
MANUFACTURERS: dict[str, tuple[str, ...]] = {
    "siemens": ("SIEMENS",),
    "ge": ("GE MEDICAL", "GE HEALTHCARE", "GENERAL ELECTRIC", "GEMS", "GE"),
    "philips": ("PHILIPS",),
    "canon": ("CANON", "TOSHIBA"),
    "fujifilm": ("FUJI", "FUJIFILM"),
    "agfa": ("AGFA",),
    "carestream": ("CARESTREAM", "KODAK"),
    "hologic": ("HOLOGIC", "LORAD"),
    "konica": ("KONICA",),
    "samsung": ("SAMSUNG",),
    "hitachi": ("HITACHI",),
    "shimadzu": ("SHIMADZU",),
    "united_imaging": ("UIH", "UNITED IMAGING"),
    "planmeca": ("PLANMECA",),
    "sirona": ("SIRONA", "DENTSPLY"),
    "esaote": ("ESAOTE",),
    "mindray": ("MINDRAY",),
}
PHOTOMETRIC = frozenset({
    "MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR", "YBR_FULL", "YBR_FULL_422", "YBR_ICT",
    "YBR_RCT", "YBR_PARTIAL_420",
})


def transfer_syntax_name(ds: Any) -> str:
    """The transfer syntax's standard name (never a private UID in clear)."""
    uid = ds.file_meta.get("TransferSyntaxUID")
    if uid is None:
        return "unknown"
    return uid.name if uid.is_valid and uid.name != str(uid) else "private or unknown"


def normalise_body_part(*texts: str | None) -> str:
    """Map free-text body part / descriptions to the small vocabulary of `BODY_PARTS`."""
    for text in texts:
        words = set(re.split(r"[^A-Z]+", str(text or "").upper())) - {""}
        for part, names in BODY_PARTS.items():
            if words & names:
                return part
    return UNKNOWN_BODY_PART


def normalise_modality(value: str | None) -> str:
    """The modality code, or `OT` when it is missing or outside `MODALITIES`."""
    code = str(value or "").strip().upper()
    return code if code in MODALITIES else "OT"


def burned_in_code(ds: Any) -> str | None:
    """The `BURNED_IN_MODALITIES` code a file falls under (SOP class first, then Modality), or None.

    A missing or unrecognised Modality counts as `OT`: nothing says the image is clean.
    """
    sop = str(ds.get("SOPClassUID") or "")
    for prefix, code in _BURNED_IN_SOP_PREFIXES:
        if sop.startswith(prefix):
            return code
    raw = str(ds.get("Modality") or "").strip().upper()
    if raw in BURNED_IN_MODALITIES:
        return raw
    return None if raw in MODALITIES else "OT"


def burned_in_text(ds: Any, allowed: frozenset[str] = frozenset()) -> str | None:
    """Why the file's pixels may show identifying text or features (a skip reason), or None.

    Args:
        ds: the dataset (header only is read).
        allowed: codes of `BURNED_IN_MODALITIES` the user opted into; they pass only when the file
            states `BurnedInAnnotation = NO` (and no recognisable visual features).
    """
    burned = str(ds.get("BurnedInAnnotation") or "").strip().upper()
    if burned == "YES":
        return "burned-in text: BurnedInAnnotation is YES"
    if str(ds.get("RecognizableVisualFeatures") or "").strip().upper() == "YES":
        return "burned-in text policy: RecognizableVisualFeatures is YES (e.g. a face)"
    sop = str(ds.get("SOPClassUID") or "")
    if sop.startswith(_DOCUMENT_SOP_PREFIXES):
        return "burned-in text: document or report SOP class (never converted)"
    code = burned_in_code(ds)
    if code is None:
        return None
    what = f"{code} ({BURNED_IN_MODALITIES[code]})"
    if code not in allowed:
        return (f"burned-in text possible: {what} images commonly carry it; convert with "
                f"--allow-modality {code} when their BurnedInAnnotation is NO")
    if burned != "NO":
        return f"burned-in text possible: {what} allowed, but BurnedInAnnotation is not NO"
    return None


def normalise_manufacturer(value: str | None) -> str:
    """The manufacturer as one word of `MANUFACTURERS`, `other`, or `unknown` when missing."""
    text = " ".join(re.split(r"[^A-Z]+", str(value or "").upper())).strip()
    if not text:
        return "unknown"
    padded = f" {text} "
    for name, spellings in MANUFACTURERS.items():
        if any(f" {s} " in padded for s in spellings):
            return name
    return "other"


def normalise_photometric(value: str | None) -> str:
    """The photometric interpretation when it is a defined term, else `other`."""
    text = str(value or "").strip().upper()
    return text if text in PHOTOMETRIC else "other"


def number(value: Any, index: int = 0) -> float | None:
    """A header value (the `index`-th of a multi-value) as a finite float, or None."""
    try:
        if value is None or value == "":
            return None
        if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
            value = value[index] if len(value) > index else None
        parsed = None if value is None else float(value)
        return parsed if parsed is not None and np.isfinite(parsed) else None
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def header_fields(ds: Any) -> dict[str, Any]:
    """The allow-listed technical header fields of a dataset, normalised; nothing that identifies.

    Modality, body part, manufacturer and photometric interpretation come out as words of small
    vocabularies, UIDs as their standard names; no names, IDs, dates, addresses, institutions,
    model or station names are read.
    """
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    sop = ds.get("SOPClassUID")
    return {
        "modality": normalise_modality(ds.get("Modality")),
        "body_part": normalise_body_part(
            ds.get("BodyPartExamined"), ds.get("StudyDescription"), ds.get("SeriesDescription"),
            ds.get("ProtocolName"),
        ),
        "rows": int(number(ds.get("Rows")) or 0),
        "columns": int(number(ds.get("Columns")) or 0),
        "number_of_frames": int(number(ds.get("NumberOfFrames")) or 1),
        "pixel_spacing_row": number(spacing, 0),
        "pixel_spacing_col": number(spacing, 1),
        "slice_thickness": number(ds.get("SliceThickness")),
        "kvp": number(ds.get("KVP")),
        "magnetic_field_strength": number(ds.get("MagneticFieldStrength")),
        "echo_time": number(ds.get("EchoTime")),
        "repetition_time": number(ds.get("RepetitionTime")),
        "manufacturer": normalise_manufacturer(ds.get("Manufacturer")),
        "photometric_interpretation": normalise_photometric(ds.get("PhotometricInterpretation")),
        "bits_allocated": int(number(ds.get("BitsAllocated")) or 0),
        "bits_stored": int(number(ds.get("BitsStored")) or 0),
        "pixel_representation": int(number(ds.get("PixelRepresentation")) or 0),
        "samples_per_pixel": int(number(ds.get("SamplesPerPixel")) or 1),
        "transfer_syntax": transfer_syntax_name(ds),
        "sop_class": sop.name if sop is not None and sop.is_valid and sop.name != str(sop) else "other",
    }


def identity(ds: Any) -> tuple[str, str, str]:
    """Raw (patient, study, series) identity strings, for keyed hashing by the caller only.

    Empty parts stay empty; the caller falls back to the file's content hash.
    """
    patient = "|".join(str(ds.get(k) or "") for k in ("IssuerOfPatientID", "PatientID"))
    if not str(ds.get("PatientID") or "").strip():
        patient = "|".join(str(ds.get(k) or "") for k in ("PatientName", "PatientBirthDate"))
    study = str(ds.get("StudyInstanceUID") or "")
    series = str(ds.get("SeriesInstanceUID") or "")
    return patient.strip("|"), study, series
