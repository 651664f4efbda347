"""Read one DICOM file and turn its pixel data into square 8-bit grayscale images.

The pixel pipeline, per frame: modality LUT (rescale slope/intercept or a Modality LUT
Sequence) → the file's VOI window (a VOI LUT, or a robust 0.5–99.5 percentile window when the
file has none) → 8 bits → inversion for MONOCHROME1 (or an INVERSE presentation LUT) → fit into
a `size × size` square keeping the aspect ratio, padded with zeros. Degenerate frames (aspect
ratio below 0.1, nearly constant pixels) are dropped with a reason.

What a header may give away, and which images are refused for burned-in text, is `header`'s.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medtl.training.archive.header import number, transfer_syntax_name

IMAGE_SIZE = 224
MIN_ASPECT = 0.1
MIN_STD = 1.0  # 8-bit standard deviation below which a frame counts as nearly constant
PERCENTILES = (0.5, 99.5)


class SkipFile(Exception):
    """A source file that yields no image; `str(exc)` is a reason free of header values."""


@dataclass(frozen=True)
class Frame:
    """One 2D image of a file: `image` (size × size uint8) or the `reason` it was dropped."""

    index: int
    image: np.ndarray | None
    reason: str | None = None
    window_source: str = ""
    scan: str = ""


FrameScan = Callable[[np.ndarray], tuple[np.ndarray, str]]
"""A check of each kept frame at full resolution before the resize: returns the image to keep (e.g.
masked) and a verdict, or raises `SkipFile` to refuse the whole file."""


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


def check_pixel_count(ds: Any, limit: int) -> None:
    """Raise `SkipFile` when rows × columns × frames × samples exceeds `limit` (before decoding)."""
    count = 1
    for name in ("Rows", "Columns", "NumberOfFrames", "SamplesPerPixel"):
        count *= max(1, int(number(ds.get(name)) or 1))
    if count > limit:
        raise SkipFile(f"too many pixels to decode safely ({count} > limit {limit}; see --max-pixels)")


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
    slope = number(source.get("RescaleSlope")) if source is not None else None
    intercept = number(source.get("RescaleIntercept")) if source is not None else None
    out = arr.astype(np.float64)
    return out * (1.0 if slope is None else slope) + (0.0 if intercept is None else intercept)


def window(ds: Any, index: int) -> tuple[float, float] | None:
    """The file's (center, width) for frame `index`, or None when it has no usable window."""
    source = ds if "WindowCenter" in ds else _frame_item(ds, index, "FrameVOILUTSequence")
    if source is None:
        return None
    center, width = number(source.get("WindowCenter")), number(source.get("WindowWidth"))
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


def iter_frames(ds: Any, size: int = IMAGE_SIZE, scan: FrameScan | None = None) -> Iterator[Frame]:
    """Decode frame by frame (memory stays one frame), yielding kept or dropped `Frame`s.

    `scan` sees each kept frame as the windowed 8-bit image at full resolution, before the resize.
    Only the pixel data is rendered: overlay planes (60xx), graphic annotations and presentation
    states are never drawn in, and pydicom masks bits above BitsStored (where retired overlays
    lived). Raises `SkipFile` when the pixel data cannot be decoded, or the one `scan` raised.
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
                    verdict = ""
                    if reason is None and scan is not None:
                        image, verdict = scan(image)
                    yield Frame(index, None if reason else letterbox(image, size), reason, source, verdict)
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
