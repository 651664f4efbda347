"""The OCR engine: models opened from the installed wheel, nothing downloaded (network blocked here)."""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import socket

import numpy as np
from PIL import Image, ImageDraw

from medtl.training.archive import text_set
from medtl.training.archive.ocr import (
    DETECTION_MODEL,
    RECOGNITION_MODEL,
    TextReader,
    engine_versions,
    model_dir,
)


def test_models_load_from_the_installed_wheel_with_the_network_blocked(monkeypatch):
    from rapidocr.utils.download_file import DownloadFile

    attempts: list[object] = []

    def blocked(*args, **kwargs):
        attempts.append(args[1:2])
        raise OSError("network access is blocked in this test")

    for target, name in ((socket.socket, "connect"), (socket.socket, "connect_ex"), (socket, "create_connection"),
                         (socket, "getaddrinfo")):
        monkeypatch.setattr(target, name, blocked)
    monkeypatch.setattr(DownloadFile, "run", classmethod(lambda cls, *a, **k: blocked(None, "download")))
    folder = model_dir()
    package = folder.parent
    before = {p: p.stat().st_mtime_ns for p in package.rglob("*") if p.is_file()}
    # The model files are the wheel's own: listed in its RECORD, with the hashes the wheel was built with.
    record = {str(f): f for f in importlib.metadata.files("rapidocr") or []}
    for name in (DETECTION_MODEL, RECOGNITION_MODEL):
        entry = record[f"rapidocr/models/{name}"]
        digest = base64.urlsafe_b64encode(hashlib.sha256((folder / name).read_bytes()).digest()).rstrip(b"=").decode()
        assert entry.hash is not None and entry.hash.value == digest, name
    canvas = Image.fromarray(np.full((96, 320), 40, dtype=np.uint8))
    ImageDraw.Draw(canvas).text((10, 30), "KOWALCZYK 1234567", fill=230, font=text_set.font("DejaVuSans.ttf", 22))
    lines = TextReader().read(np.asarray(canvas))
    assert [line.text.replace(" ", "") for line in lines] == ["KOWALCZYK1234567"]
    assert lines[0].score > 0.9 and lines[0].box.shape == (4, 2)
    assert attempts == []
    assert {p: p.stat().st_mtime_ns for p in package.rglob("*") if p.is_file()} == before  # nothing fetched or written


def test_engine_versions_name_the_pinned_packages_and_models():
    versions = engine_versions()
    assert versions["rapidocr"] == "3.10.0" and versions["onnxruntime"] == "1.32.0"
    assert versions["detector"] == DETECTION_MODEL and versions["recogniser"] == RECOGNITION_MODEL


def test_detector_input_is_shrunk_to_its_side_and_tiny_images_are_enlarged():
    reader = TextReader(side=256, min_side=160)
    seen: list[tuple[int, ...]] = []
    real = reader._det.run
    reader._det = type("Spy", (), {"run": lambda self, out, feed: seen.append(next(iter(feed.values())).shape) or real(out, feed)})()
    reader.detect(np.zeros((100, 60), dtype=np.uint8))  # enlarged to 160 on its long side
    reader.detect(np.zeros((200, 120), dtype=np.uint8))  # kept
    reader.detect(np.zeros((1024, 800), dtype=np.uint8))  # shrunk to 256
    assert seen == [(1, 3, 160, 96), (1, 3, 192, 128), (1, 3, 256, 192)]
