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


CI_VARIABLES = ("CI", "GITHUB_ACTIONS", "GITLAB_CI", "CIRCLECI", "TF_BUILD", "BUILD_BUILDID", "JENKINS_URL", "TRAVIS")


def test_onnxruntime_sends_no_telemetry_and_writes_nothing_in_the_home_folder(tmp_path):
    """onnxruntime >= 1.29 keeps a device id and an upload cache in ~/.cache/Microsoft unless told not to
    (it stays quiet by itself only where a CI variable is set, so the child runs without them)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in CI_VARIABLES and k != "ORT_DISABLE_TELEMETRY"}
    env.update(HOME=str(tmp_path), XDG_CACHE_HOME=str(tmp_path / ".cache"))
    script = ("import numpy as np\nfrom medtl.training.archive.ocr import TextReader\n"
              "TextReader().read(np.full((200, 300), 40, np.uint8))\nprint('read')\n")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "read" in done.stdout
    assert [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if "Microsoft" in p.as_posix()] == []
