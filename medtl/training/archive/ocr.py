"""Offline text detection and recognition: the PP-OCR ONNX models inside the `rapidocr` wheel, on onnxruntime.

Nothing is downloaded: the model files are opened by path from the installed package (rapidocr's own
loader would fetch a missing model, and its result drawing fetches a font, so neither is used); only
its detection post-processing and its CTC decoding are borrowed. Detection runs on a copy of the
8-bit image whose long side is at most `side` pixels (and at least `min_side`: tiny images are
enlarged, as small text is found only then); recognition runs only on the regions detection found,
cut from the full-resolution image and batched. See docs/privacy.md for what this finds and misses.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medtl.errors import UserError

TELEMETRY_ENV = "ORT_DISABLE_TELEMETRY"
"""onnxruntime >= 1.29 sends usage telemetry from Linux too (a device id and an event cache under
~/.cache/Microsoft/DeveloperTools, uploads to Microsoft) unless this is set before its first session;
medtl sets it to 1 (a user who sets it to 0 opts back in). Ingest runs where patient data lives: no
outbound connection, nothing written outside the output folder."""

DETECTOR_SIDE = 512
"""Long side of the detector's input in pixels (`Det.limit_type: max`): larger images are shrunk to it."""
DETECTOR_MIN_SIDE = 160
"""Smaller images are enlarged to this long side for detection: it misses 10-pixel text in a 96-pixel image
that it finds at 1.5 times the size (ingest raises it to the output size, so the scan never looks at
fewer pixels than the PNG it lets out)."""
DETECTION_MODEL = "PP-OCRv6_det_small.onnx"
RECOGNITION_MODEL = "PP-OCRv6_rec_small.onnx"
REC_HEIGHT, REC_MIN_WIDTH = 48, 320
REC_BATCH = 16
MIN_ELONGATION = 1.5
"""Regions whose long side is under this many times their short side hold at most two characters (a
laterality marker, or an edge of anatomy taken for a letter) and are not read: no identifier is that short."""
# DB post-processing: pixel threshold, mean score a region needs, how far a region is grown.
DET_THRESH, DET_BOX_THRESH, DET_UNCLIP = 0.3, 0.5, 1.6


class OcrUnavailable(UserError):
    """The OCR engine or its models are not installed."""


@dataclass(frozen=True)
class TextLine:
    """One detected text region: its corners (4 x 2, image pixels), the text read and its confidence."""

    box: np.ndarray
    text: str
    score: float


def model_dir() -> Path:
    """The folder of the installed `rapidocr` wheel that holds its ONNX models (found without importing it).

    Raises:
        OcrUnavailable: rapidocr or onnxruntime is not installed, or the wheel lacks a model.
    """
    spec = importlib.util.find_spec("rapidocr")
    if spec is None or not spec.submodule_search_locations or importlib.util.find_spec("onnxruntime") is None:
        raise OcrUnavailable(
            "the burned-in text scan needs the packages rapidocr and onnxruntime (pip install medtl installs "
            "them); or pass --burned-in off to convert without scanning pixels"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    missing = [name for name in (DETECTION_MODEL, RECOGNITION_MODEL) if not (folder / name).is_file()]
    if missing:
        raise OcrUnavailable(f"the installed rapidocr wheel lacks {', '.join(missing)} in {folder}; reinstall rapidocr")
    return folder


def engine_versions() -> dict[str, str]:
    """Versions of the OCR packages and the model files used, for the run's parameters."""
    versions = {"detector": DETECTION_MODEL, "recogniser": RECOGNITION_MODEL}
    for package in ("rapidocr", "onnxruntime"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "missing"
    return versions


class TextReader:
    """Finds and reads text in 8-bit grayscale images (one per process; sessions are not fork-safe).

    Args:
        side: long side of the detector's input; larger images are shrunk to it.
        threads: onnxruntime intra-op threads per session.
        min_side: images with a shorter long side are enlarged to it for detection.
    """

    def __init__(self, side: int = DETECTOR_SIDE, threads: int = 1, min_side: int = DETECTOR_MIN_SIDE) -> None:
        os.environ.setdefault(TELEMETRY_ENV, "1")  # before onnxruntime creates its environment
        import onnxruntime as ort

        logging.getLogger("RapidOCR").setLevel(logging.CRITICAL + 1)
        from rapidocr.ch_ppocr_det.utils import DBPostProcess
        from rapidocr.ch_ppocr_rec.utils import CTCLabelDecode

        folder = model_dir()
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.log_severity_level = 4
        providers = ["CPUExecutionProvider"]
        self.side, self.threads, self.min_side = side, threads, min(min_side, side)
        self._det = ort.InferenceSession(str(folder / DETECTION_MODEL), options, providers=providers)
        self._rec = ort.InferenceSession(str(folder / RECOGNITION_MODEL), options, providers=providers)
        self._det_input = self._det.get_inputs()[0].name
        self._rec_input = self._rec.get_inputs()[0].name
        characters = self._rec.get_modelmeta().custom_metadata_map["character"].splitlines()
        self._decode = CTCLabelDecode(character=characters)
        self._post = DBPostProcess(thresh=DET_THRESH, box_thresh=DET_BOX_THRESH, unclip_ratio=DET_UNCLIP,
                                   use_dilation=True, score_mode="fast")

    def detect(self, image: np.ndarray) -> np.ndarray:
        """Corners (n x 4 x 2, float32, full-resolution pixels) of the text regions of a 2-D uint8 image."""
        import cv2

        h, w = image.shape
        ratio = min(max(max(h, w), self.min_side), self.side) / max(h, w)
        rh, rw = (max(32, int(round(v * ratio / 32)) * 32) for v in (h, w))
        small = cv2.resize(image, (rw, rh), interpolation=cv2.INTER_AREA if ratio < 1 else cv2.INTER_CUBIC)
        x = small.astype(np.float32) * (2.0 / 255.0) - 1.0
        batch = np.ascontiguousarray(np.broadcast_to(x, (1, 3, rh, rw)))
        pred = self._det.run(None, {self._det_input: batch})[0]
        boxes, _ = self._post(pred, (h, w))
        return np.asarray(boxes, dtype=np.float32).reshape(-1, 4, 2)

    def recognise(self, image: np.ndarray, boxes: np.ndarray) -> list[tuple[str, float]]:
        """(text, confidence) of each region, cut from `image` and read in batches of similar width."""
        import cv2

        crops = [_crop(image, box) for box in boxes]
        ratios = [c.shape[1] / max(1, c.shape[0]) for c in crops]
        order = np.argsort(ratios)
        results: list[tuple[str, float]] = [("", 0.0)] * len(crops)
        for start in range(0, len(crops), REC_BATCH):
            chunk = order[start : start + REC_BATCH]
            width = int(REC_HEIGHT * max(REC_MIN_WIDTH / REC_HEIGHT, max(ratios[i] for i in chunk)))
            batch = np.zeros((len(chunk), 3, REC_HEIGHT, width), dtype=np.float32)
            for row, i in enumerate(chunk):
                cw = min(width, max(1, math.ceil(REC_HEIGHT * ratios[i])))
                line = cv2.resize(crops[i], (cw, REC_HEIGHT)).astype(np.float32) * (2.0 / 255.0) - 1.0
                batch[row, :, :, :cw] = line
            preds = self._rec.run(None, {self._rec_input: batch})[0]
            for i, (text, score) in zip(chunk, self._decode(preds)[0]):
                results[int(i)] = (str(text), float(score))
        return results

    def read(self, image: np.ndarray) -> list[TextLine]:
        """Every text region of a 2-D uint8 image long enough to hold an identifier, with what it says.

        Recognition runs only where detection fired, on regions at least `MIN_ELONGATION` times as
        long as they are high (none: no recognition at all).
        """
        boxes = [box for box in self.detect(image) if _elongation(box) >= MIN_ELONGATION]
        if not boxes:
            return []
        return [TextLine(box, text, score) for box, (text, score) in zip(boxes, self.recognise(image, np.stack(boxes)))]


def _elongation(box: np.ndarray) -> float:
    sides = (np.linalg.norm(box[0] - box[1]), np.linalg.norm(box[1] - box[2]))
    return float(max(sides) / max(min(sides), 1.0))


def _crop(image: np.ndarray, box: np.ndarray) -> Any:
    """The region inside `box`, straightened (a perspective warp), as height x width uint8."""
    import cv2

    width = int(max(np.linalg.norm(box[0] - box[1]), np.linalg.norm(box[2] - box[3]), 1))
    height = int(max(np.linalg.norm(box[0] - box[3]), np.linalg.norm(box[1] - box[2]), 1))
    target = np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float32)
    matrix = cv2.getPerspectiveTransform(box.astype(np.float32), target)
    crop = cv2.warpPerspective(image, matrix, (width, height), borderMode=cv2.BORDER_REPLICATE, flags=cv2.INTER_CUBIC)
    if crop.shape[0] >= 1.5 * crop.shape[1]:  # a vertical line of text: read it turned
        crop = np.rot90(crop)
    return crop
