"""Read one DICOM file and turn its pixel data into square 8-bit grayscale images.

The pixel pipeline, per frame: modality LUT (rescale slope/intercept or a Modality LUT
Sequence) → the file's VOI window (a VOI LUT, or a robust 0.5–99.5 percentile window when the
file has none) → 8 bits → inversion for MONOCHROME1 (or an INVERSE presentation LUT) → fit into
a `size × size` square keeping the aspect ratio, padded with zeros. Degenerate frames (aspect
ratio below 0.1, nearly constant pixels) are dropped with a reason.

Header values leave this module only through `header_fields` (an allow-list of technical
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

import io
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_SIZE = 224
MIN_ASPECT = 0.1
MIN_STD = 1.0  # 8-bit standard deviation below which a frame counts as nearly constant
PERCENTILES = (0.5, 99.5)

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


class SkipFile(Exception):
    """A source file that yields no image; `str(exc)` is a reason free of header values."""


@dataclass(frozen=True)
class Frame:
    """One 2D image of a file: `image` (size × size uint8) or the `reason` it was dropped."""

    index: int
    image: np.ndarray | None
    reason: str | None = None
    window_source: str = ""


def read_dataset(path: Path, data: bytes | None = None) -> Any:
    """Read a DICOM file with pixel data, or raise `SkipFile` saying why it cannot be used.

    `data` are the file's bytes when the caller already holds them. Files without the DICOM
    preamble are accepted when they parse as a dataset with pixel data (the transfer syntax is
    then inferred from the encoding).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    data = path.read_bytes() if data is None else data
    if not data:
        raise SkipFile("empty file")
    if path.name.upper() == "DICOMDIR":
        raise SkipFile("DICOMDIR index (its referenced files are ingested on their own)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(io.BytesIO(data))
        except InvalidDicomError:
            ds = _read_forced(data)
        except Exception as exc:  # truncated or malformed element structure
            raise SkipFile(f"corrupt DICOM ({type(exc).__name__})") from None
    if getattr(ds.file_meta, "MediaStorageSOPClassUID", "") == "1.2.840.10008.1.3.10":
        raise SkipFile("DICOMDIR index (its referenced files are ingested on their own)")
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise SkipFile("no pixel data")
    if "TransferSyntaxUID" not in ds.file_meta:
        _infer_transfer_syntax(ds)
    return ds


def _read_forced(data: bytes) -> Any:
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        ok = "SOPClassUID" in ds or "Modality" in ds or ("Rows" in ds and "Columns" in ds)
    except Exception:
        ok = False
    if not ok:
        raise SkipFile("not a DICOM file")
    return ds


def _infer_transfer_syntax(ds: Any) -> None:
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    implicit, little = ds.original_encoding
    if implicit is None:
        raise SkipFile("no transfer syntax and encoding unknown")
    ds.file_meta.TransferSyntaxUID = (
        ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    )


def transfer_syntax_name(ds: Any) -> str:
    """The transfer syntax's standard name (never a private UID in clear)."""
    uid = ds.file_meta.get("TransferSyntaxUID")
    if uid is None:
        return "unknown"
    return uid.name if uid.is_valid and uid.name != str(uid) else "private or unknown"


def check_decodable(ds: Any) -> None:
    """Raise `SkipFile` when no installed decoder handles the file's transfer syntax."""
    from pydicom.pixels import get_decoder

    uid = ds.file_meta.TransferSyntaxUID
    if not uid.is_encapsulated:
        return
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        raise SkipFile(f"unsupported transfer syntax ({transfer_syntax_name(ds)})") from None
    if not decoder.is_available:
        raise SkipFile(f"no decoder installed for {transfer_syntax_name(ds)}")


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


def check_pixel_count(ds: Any, limit: int) -> None:
    """Raise `SkipFile` when rows × columns × frames × samples exceeds `limit` (before decoding)."""
    count = 1
    for name in ("Rows", "Columns", "NumberOfFrames", "SamplesPerPixel"):
        count *= max(1, int(_num(ds.get(name)) or 1))
    if count > limit:
        raise SkipFile(f"too many pixels to decode safely ({count} > limit {limit}; see --max-pixels)")


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


def _num(value: Any, index: int = 0) -> float | None:
    try:
        if value is None or value == "":
            return None
        if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
            value = value[index] if len(value) > index else None
        number = None if value is None else float(value)
        return number if number is not None and np.isfinite(number) else None
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
        "rows": int(_num(ds.get("Rows")) or 0),
        "columns": int(_num(ds.get("Columns")) or 0),
        "number_of_frames": int(_num(ds.get("NumberOfFrames")) or 1),
        "pixel_spacing_row": _num(spacing, 0),
        "pixel_spacing_col": _num(spacing, 1),
        "slice_thickness": _num(ds.get("SliceThickness")),
        "kvp": _num(ds.get("KVP")),
        "magnetic_field_strength": _num(ds.get("MagneticFieldStrength")),
        "echo_time": _num(ds.get("EchoTime")),
        "repetition_time": _num(ds.get("RepetitionTime")),
        "manufacturer": normalise_manufacturer(ds.get("Manufacturer")),
        "photometric_interpretation": normalise_photometric(ds.get("PhotometricInterpretation")),
        "bits_allocated": int(_num(ds.get("BitsAllocated")) or 0),
        "bits_stored": int(_num(ds.get("BitsStored")) or 0),
        "pixel_representation": int(_num(ds.get("PixelRepresentation")) or 0),
        "samples_per_pixel": int(_num(ds.get("SamplesPerPixel")) or 1),
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


def _frame_item(ds: Any, index: int, sequence: str) -> Any | None:
    """An item of a functional-group sequence for one frame (per-frame first, then shared)."""
    for groups, i in (("PerFrameFunctionalGroupsSequence", index), ("SharedFunctionalGroupsSequence", 0)):
        seq = ds.get(groups)
        inner = seq[i].get(sequence) if seq is not None and len(seq) > i else None
        if inner:
            return inner[0]
    return None


def rescale(arr: np.ndarray, ds: Any, index: int) -> np.ndarray:
    """Apply the modality LUT of frame `index`: slope/intercept (top level or functional groups)."""
    if "ModalityLUTSequence" in ds:
        from pydicom.pixels import apply_modality_lut

        return np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    source = ds if "RescaleSlope" in ds or "RescaleIntercept" in ds else _frame_item(
        ds, index, "PixelValueTransformationSequence"
    )
    slope = _num(source.get("RescaleSlope")) if source is not None else None
    intercept = _num(source.get("RescaleIntercept")) if source is not None else None
    out = arr.astype(np.float64)
    return out * (1.0 if slope is None else slope) + (0.0 if intercept is None else intercept)


def window(ds: Any, index: int) -> tuple[float, float] | None:
    """The file's (center, width) for frame `index`, or None when it has no usable window."""
    source = ds if "WindowCenter" in ds else _frame_item(ds, index, "FrameVOILUTSequence")
    if source is None:
        return None
    center, width = _num(source.get("WindowCenter")), _num(source.get("WindowWidth"))
    if center is None or width is None or width < 1:
        return None
    return center, width


def apply_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM linear VOI function (PS3.3 C.11.2.1.2) onto [0, 255] as float."""
    low = center - 0.5 - (width - 1) / 2
    span = max(width - 1, 1e-6)
    return np.clip((values - low) / span, 0.0, 1.0) * 255.0


def to_uint8(arr: np.ndarray, ds: Any, index: int) -> tuple[np.ndarray, str]:
    """One decoded frame (grayscale 2D, or RGB) → 8-bit grayscale; returns (image, window source)."""
    if arr.ndim == 3:  # colour: luminance of the (already RGB-converted) samples
        top = float(2 ** int(ds.get("BitsStored") or 8) - 1)
        gray = arr[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        return np.clip(gray / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "colour"
    values = rescale(arr, ds, index)
    win = window(ds, index)
    if win is not None:
        out, source = apply_window(values, *win), "file"
    elif "VOILUTSequence" in ds:
        from pydicom.pixels import apply_voi_lut

        lut = np.asarray(apply_voi_lut(arr, ds), dtype=np.float64)
        low, high = float(lut.min()), float(lut.max())
        out, source = (lut - low) / max(high - low, 1e-6) * 255.0, "voi_lut"
    else:
        low, high = np.percentile(values, PERCENTILES)
        if high <= low:
            low, high = float(values.min()), float(values.max())
        out = np.clip((values - low) / max(high - low, 1e-6), 0, 1) * 255.0
        source = "percentile"
    inverted = str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1"
    if str(ds.get("PresentationLUTShape", "")).strip() == "INVERSE":
        inverted = not inverted
    if inverted:
        out = 255.0 - out
    return np.clip(out + 0.5, 0, 255).astype(np.uint8), source


def letterbox(image: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """Fit `image` into a `size × size` square keeping its aspect ratio; zero padding, centred."""
    from PIL import Image

    h, w = image.shape
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    resized = np.asarray(Image.fromarray(image).resize((nw, nh), Image.Resampling.BILINEAR))
    out = np.zeros((size, size), dtype=np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top : top + nh, left : left + nw] = resized
    return out


def degenerate(image: np.ndarray) -> str | None:
    """Why an 8-bit frame is unusable (aspect ratio, nearly constant), or None."""
    h, w = image.shape
    if min(h, w) / max(h, w) < MIN_ASPECT:
        return f"aspect ratio below {MIN_ASPECT}"
    if float(image.std()) < MIN_STD:
        return "nearly constant pixels"
    return None


def iter_frames(ds: Any, size: int = IMAGE_SIZE) -> Iterator[Frame]:
    """Decode frame by frame (memory stays one frame), yielding kept or dropped `Frame`s.

    Raises `SkipFile` when the pixel data cannot be decoded.
    """
    from pydicom.pixels import iter_pixels

    check_decodable(ds)
    index = 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for arr in iter_pixels(ds):
                frames = _split(np.asarray(arr), ds)
                for frame in frames:
                    if frame.ndim not in (2, 3) or 0 in frame.shape[:2]:
                        raise SkipFile("pixel data has an unexpected shape")
                    image, source = to_uint8(frame, ds, index)
                    reason = degenerate(image)
                    yield Frame(index, None if reason else letterbox(image, size), reason, source)
                    index += 1
    except SkipFile:
        raise
    except Exception as exc:
        where = f" at frame {index}" if index else ""
        raise SkipFile(f"cannot decode pixel data{where} ({transfer_syntax_name(ds)}, {type(exc).__name__})") from None


def _split(arr: np.ndarray, ds: Any) -> list[np.ndarray]:
    """Frames of one decoded array: a 3D grayscale array is a volume (slices along axis 0)."""
    colour = int(ds.get("SamplesPerPixel") or 1) > 1
    if (arr.ndim == 3 and not colour) or arr.ndim == 4:
        return list(arr)
    return [arr]


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an 8-bit grayscale image, with no text chunks."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()
