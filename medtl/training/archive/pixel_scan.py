"""Ingest's burned-in text scan: read the text in each image's pixels, then keep, mask or refuse the image.

It runs inside ingest's isolated workers on the windowed 8-bit image at full resolution, before the
resize (text read at 512 pixels is lost at 224). `text_rules` decides what each line of text is:
identifying (a header value, or an identifier pattern), allowed (an anatomical or technical overlay)
or unread (a region the recogniser could not read with confidence). Mode `refuse` (the default)
refuses an image with identifying text; mode `mask` blacks out the identifying regions and scans
again, keeping the image only when the second scan finds no identifying text; mode `off` does not
scan. Unread regions (often edges of anatomy taken for a letter) neither refuse nor get masked.
A refusal names a category (`patient name`, `date`, ...), never the text. See docs/privacy.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from medtl.errors import UserError
from medtl.training.archive.dicom import SkipFile
from medtl.training.archive.ocr import DETECTOR_MIN_SIDE, DETECTOR_SIDE, TextLine, TextReader
from medtl.training.archive.text_rules import HeaderValues, judge

REASON = "burned-in text found in the pixels"
MASK_MARGIN = 0.2
"""Each masked region grows by this fraction of its height on every side (at least 2 pixels)."""


class Mode(StrEnum):
    """`--burned-in`: what ingest does with an image whose pixels hold identifying text."""

    REFUSE = "refuse"
    MASK = "mask"
    OFF = "off"


class Verdict(StrEnum):
    """The manifest's `pixel_scan` column: what the scan found in a kept image."""

    CLEAN = "clean"  # no text read
    ALLOWED = "allowed-text"  # only anatomical or technical overlays
    MASKED = "masked"  # identifying regions masked, and the second scan found no identifying text
    OFF = "off"  # not scanned (--burned-in off)


REFUSED = "refused"
"""The verdict counted for a file refused for the text in its pixels (it has no manifest row)."""


class BurnedInText(SkipFile):
    """An image whose pixels hold identifying text; `category` names what it matched, never the text."""

    def __init__(self, category: str, *, after_mask: bool = False) -> None:
        self.category = category
        where = ", left after masking" if after_mask else ""
        super().__init__(f"{REASON} ({category}{where})")


def parse_mode(value: str | Mode) -> Mode:
    """The scan mode named by `value`; an unknown name raises a `UserError` listing the valid ones."""
    try:
        return Mode(str(value).strip().lower())
    except ValueError:
        raise UserError(f"unknown --burned-in {value!r}; choose from {', '.join(m.value for m in Mode)}") from None


def mask_regions(image: np.ndarray, boxes: list[np.ndarray]) -> np.ndarray:
    """A copy of `image` with each (grown) region filled black."""
    import cv2

    out = image.copy()
    for box in boxes:
        (cx, cy), (w, h), angle = cv2.minAreaRect(box.astype(np.float32))
        pad = max(2.0, MASK_MARGIN * min(w, h))
        corners = cv2.boxPoints(((cx, cy), (w + 2 * pad, h + 2 * pad), angle))
        cv2.fillPoly(out, [np.round(corners).astype(np.int32)], 0)
    return out


@dataclass
class Scanner:
    """The scan of one worker process: its mode and detector settings; the OCR models load on first use.

    Args:
        mode: refuse, mask or off.
        side: long side of the detector's input in pixels (larger images are shrunk to it).
        threads: onnxruntime threads per model.
        min_side: smaller images are enlarged to this long side for detection.
    """

    mode: Mode = Mode.REFUSE
    side: int = DETECTOR_SIDE
    threads: int = 1
    min_side: int = DETECTOR_MIN_SIDE
    _reader: TextReader | None = field(default=None, repr=False)

    def load(self) -> TextReader | None:
        """Load the OCR models now (they load on first use otherwise); None in mode `off`."""
        if self._reader is None and self.mode is not Mode.OFF:
            self._reader = TextReader(self.side, self.threads, self.min_side)
        return self._reader

    def _read(self, image: np.ndarray) -> list[TextLine]:
        reader = self.load()
        return reader.read(image) if reader is not None else []

    def scan(self, image: np.ndarray, values: HeaderValues) -> tuple[np.ndarray, Verdict]:
        """The image to keep (masked in mode `mask`) and its verdict.

        Raises:
            BurnedInText: identifying text (mode refuse), or text left after masking (mode mask).
            SkipFile: the OCR engine failed on the image (the file is skipped, never kept unscanned).
        """
        if self.mode is Mode.OFF:
            return image, Verdict.OFF
        try:
            judged = self._judge(image, values)
            found = [(line, category) for line, kind, category in judged if kind == "identifying"]
            if not found:
                return image, Verdict.ALLOWED if any(kind == "allowed" for _, kind, _ in judged) else Verdict.CLEAN
            if self.mode is Mode.REFUSE:
                raise BurnedInText(_first([category for _, category in found]))
            masked = mask_regions(image, [line.box for line, _ in found])
            left = [category for _, kind, category in self._judge(masked, values) if kind == "identifying"]
            if left:
                raise BurnedInText(_first(left), after_mask=True)
            return masked, Verdict.MASKED
        except SkipFile:
            raise
        except Exception as exc:  # an OCR failure must not let the image through unscanned
            raise SkipFile(f"text scan failed ({type(exc).__name__})") from None

    def _judge(self, image: np.ndarray, values: HeaderValues) -> list[tuple[TextLine, str, str | None]]:
        return [(line, *judge(line.text, line.score, values)) for line in self._read(image)]


_PATTERNS = ("date", "long number", "name pattern", "unlisted word")


def _first(categories: list[str | None]) -> str:
    """The category a reason names: header values before patterns (the more specific finding)."""
    return sorted((c or "unlisted word" for c in categories), key=lambda c: c in _PATTERNS)[0]
