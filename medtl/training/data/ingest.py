"""Batch ingest: a DICOM folder tree → de-identified 8-bit PNGs, `manifest.parquet`, `skipped.csv`.

Crash safety. Every file is written to a temporary name and moved into place with `os.replace`.
Each source file, once handled, leaves one shard record (`DIR/.shards/<key>.json`) written after
its PNGs; the manifest and the skipped list are compacted from all shards at the end of a run.
A run killed midway therefore loses nothing already recorded, and a rerun recovers from the
shards and skips every source whose content hash already has one.

De-identification. Patient, study and series keys, shard names and PNG names are HMAC-SHA256
digests under a secret key (`MEDTL_DEID_KEY`, a key file outside DIR, or an in-memory ephemeral
key); header values reach the manifest only through the allow-list of `dicom.header_fields`.
`skipped.csv` holds source paths relative to SRC and reasons, never header values.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import sys
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medtl.errors import UserError
from medtl.training.data import dicom

KEY_ENV = "MEDTL_DEID_KEY"
MIN_KEY_BYTES = 16
STATE_FILE = ".medtl-ingest.json"
SHARDS = ".shards"
MANIFEST = "manifest.parquet"
SKIPPED = "skipped.csv"
LEADING_COLUMNS = ("image_path", "modality", "body_part", "patient_key", "study_key", "series_key", "frame")
DUPLICATE = "duplicate of another source file's content (ingested once)"

log = logging.getLogger(__name__)


class DeidKeyError(UserError):
    """No usable de-identification key, or one that does not match the output folder."""


@dataclass
class IngestSummary:
    """Counts of one ingest run (sources are files; images are output PNGs)."""

    seen: int = 0
    converted: int = 0
    images: int = 0
    skipped: int = 0
    already_done: int = 0
    dropped_frames: int = 0
    manifest_rows: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        """The one-line summary printed at the end of a run."""
        return (
            f"ingest: {self.seen} files seen, {self.converted} converted into {self.images} images, "
            f"{self.skipped} skipped, {self.already_done} already done, {self.dropped_frames} frames "
            f"dropped; manifest has {self.manifest_rows} images ({self.seconds:.1f} s)"
        )


def load_key(out: Path, *, key_file: Path | None = None, ephemeral: bool = False) -> bytes:
    """The de-identification key: ephemeral when asked, else `--key-file`, else `$MEDTL_DEID_KEY`.

    An ephemeral key is random and lives only in this process (demos: output keys cannot be
    linked to any later run). The key file must lie outside `out`. Without any source the
    message says how to set one.
    """
    if ephemeral and key_file is not None:
        raise DeidKeyError("--ephemeral-key and --key-file exclude each other; choose one")
    if ephemeral:
        return secrets.token_bytes(32)
    if key_file is not None:
        path = Path(key_file).resolve()
        if path.is_relative_to(Path(out).resolve()):
            raise DeidKeyError(f"key file {key_file} lies inside the output folder {out}; keep keys away from the data")
        if not path.is_file():
            raise DeidKeyError(f"key file {key_file} does not exist")
        key = path.read_bytes().strip()
    elif os.environ.get(KEY_ENV):
        key = os.environ[KEY_ENV].encode()
    else:
        raise DeidKeyError(
            f"no de-identification key: set {KEY_ENV} (e.g. export {KEY_ENV}=$(openssl rand -hex 32)) "
            "or pass --key-file PATH outside the output folder (--ephemeral-key for throw-away demos)"
        )
    if len(key) < MIN_KEY_BYTES:
        raise DeidKeyError(f"de-identification key too short: {len(key)} bytes, need at least {MIN_KEY_BYTES}")
    return key


def keyed(key: bytes, kind: str, value: str) -> str:
    """HMAC-SHA256 of `value` in the namespace `kind`, as 32 hex characters."""
    return hmac.new(key, f"{kind}\0{value}".encode(), hashlib.sha256).hexdigest()[:32]


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _check_state(out: Path, key: bytes, size: int) -> None:
    """Refuse to mix keys or image sizes in one output folder; record them on first use."""
    state = {"key_check": keyed(key, "key-check", "medtl"), "image_size": size, "version": 1}
    path = out / STATE_FILE
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("key_check") != state["key_check"]:
            raise DeidKeyError(f"{out} was written under a different de-identification key; use that key or a new folder")
        if old.get("image_size") != size:
            raise UserError(f"{out} holds {old.get('image_size')}-pixel images, not {size}; use a new folder")
        return
    _atomic_write(path, json.dumps(state).encode())


def iter_sources(src: Path) -> Iterator[tuple[Path, str]]:
    """(path, path relative to the root) of every file under `src` in sorted order, lazily.

    When `src` is a DICOMDIR file, its referenced files (those inside its folder) instead.
    """
    if src.is_file():
        yield from _dicomdir_sources(src)
        return
    for root, dirs, files in os.walk(src):
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            if path.is_file():
                yield path, path.relative_to(src).as_posix()


def _dicomdir_sources(path: Path) -> Iterator[tuple[Path, str]]:
    import pydicom

    try:
        records = pydicom.dcmread(path).get("DirectoryRecordSequence") or []
    except Exception:
        raise UserError(f"{path} is neither a folder nor a readable DICOMDIR") from None
    root = path.parent.resolve()
    for record in records:
        parts = record.get("ReferencedFileID")
        if not parts:
            continue
        parts = [parts] if isinstance(parts, str) else list(parts)
        target = root.joinpath(*parts).resolve()
        if target.is_relative_to(root) and target.is_file():
            yield target, target.relative_to(root).as_posix()


@contextlib.contextmanager
def _quiet_pydicom() -> Iterator[None]:
    """pydicom's warnings and log lines quote header values: keep them out of every output."""
    logger = logging.getLogger("pydicom")
    saved = logger.level, logger.propagate
    logger.setLevel(logging.CRITICAL + 1)
    logger.propagate = False
    try:
        yield
    finally:
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


_WORKER: dict[str, Any] = {}


def _init_worker(out: str, key: bytes, size: int, retry_skipped: bool) -> None:
    _WORKER.update(out=Path(out), key=key, size=size, retry_skipped=retry_skipped)
    logging.getLogger("pydicom").setLevel(logging.CRITICAL + 1)
    logging.getLogger("pydicom").propagate = False


def _shard_path(out: Path, name: str) -> Path:
    return out / SHARDS / name[:2] / f"{name}.json"


def process_source(path: str, rel: str) -> dict[str, Any]:
    """Convert one source file (in a worker) and record it; returns its status and counts."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's warnings quote header values
        return _process(path, rel)


def _process(path: str, rel: str) -> dict[str, Any]:
    out, key, size = _WORKER["out"], _WORKER["key"], _WORKER["size"]
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        _write_shard(_shard_path(out, keyed(key, "unreadable", rel)), {
            "path_keys": [keyed(key, "path", rel)], "rows": [],
            "skipped": [{"source": rel, "reason": f"unreadable file ({type(exc).__name__})"}]})
        return {"status": "skipped"}
    digest = hashlib.sha256(data).hexdigest() if data else f"empty:{rel}"
    source_key = keyed(key, "source", digest)
    path_key = keyed(key, "path", rel)
    shard = _shard_path(out, source_key)
    if shard.exists():
        record = json.loads(shard.read_text())
        retry = _WORKER["retry_skipped"] and not record["rows"]
        if not retry:
            if path_key in record["path_keys"]:
                return {"status": "done"}
            dup = _shard_path(out, keyed(key, "duplicate", rel))
            if dup.exists():
                return {"status": "done"}
            _write_shard(dup, {"path_keys": [path_key], "rows": [], "skipped": [{"source": rel, "reason": DUPLICATE}]})
            return {"status": "skipped"}
    rows, skipped, pngs = [], [], []
    try:
        ds = dicom.read_dataset(Path(path), data)
        header = dicom.header_fields(ds)
        patient, study, series = dicom.identity(ds)
        keys = {
            "patient_key": keyed(key, "patient", patient or f"source:{digest}"),
            "study_key": keyed(key, "study", study or f"source:{digest}"),
            "series_key": keyed(key, "series", series or f"source:{digest}"),
        }
        for frame in dicom.iter_frames(ds, size):
            if frame.image is None:
                skipped.append({"source": rel, "reason": f"frame {frame.index}: {frame.reason}"})
                continue
            name = keyed(key, "image", f"{digest}:{frame.index}")
            image_path = f"images/{name[:2]}/{name}.png"
            pngs.append((out / image_path, dicom.encode_png(frame.image)))
            rows.append({"image_path": image_path, **keys, "frame": frame.index, **header,
                         "window_source": frame.window_source, "source_key": source_key})
        if not rows:
            reasons = sorted({s["reason"].split(": ", 1)[1] for s in skipped})
            skipped = [{"source": rel, "reason": "no usable frame: " + "; ".join(reasons)}]
    except dicom.SkipFile as exc:
        rows, skipped, pngs = [], [{"source": rel, "reason": str(exc)}], []
    except Exception as exc:  # any other failure of one file must not stop the batch
        rows, skipped, pngs = [], [{"source": rel, "reason": f"failed while converting ({type(exc).__name__})"}], []
    for target, png in pngs:  # a failing write (disk full) stops the run: nothing is recorded wrongly
        _atomic_write(target, png)
    _write_shard(shard, {"path_keys": [path_key], "rows": rows, "skipped": skipped})
    return {"status": "converted" if rows else "skipped", "images": len(rows),
            "dropped": len(skipped) if rows else 0}


def _write_shard(path: Path, record: dict[str, Any]) -> None:
    _atomic_write(path, json.dumps(record, allow_nan=True).encode())


def _results(sources: Iterator[tuple[Path, str]], workers: int, init: tuple) -> Iterator[dict[str, Any]]:
    """Results in completion order; at most 2 × workers files in flight (memory stays flat)."""
    if workers <= 1:
        _init_worker(*init)
        for path, rel in sources:
            yield process_source(str(path), rel)
        return
    with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker, initargs=init) as pool:
        pending: set[Future] = set()
        for path, rel in sources:
            pending.add(pool.submit(process_source, str(path), rel))
            if len(pending) >= 2 * workers:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                yield from (f.result() for f in done)
        for future in pending:
            yield future.result()


def _clean_temporaries(out: Path) -> None:
    """Remove temporaries a killed run left (ours only: `.<name>.<pid>.tmp`)."""
    leftovers = [*out.glob(".*.tmp")]
    for folder in (out / "images", out / SHARDS):
        if folder.is_dir():
            leftovers += folder.rglob(".*.tmp")
    for tmp in leftovers:
        tmp.unlink(missing_ok=True)


def compact(out: Path) -> tuple[int, int]:
    """Rebuild `manifest.parquet` and `skipped.csv` from the shards, atomically.

    Removes PNGs that no shard references (left by a run killed between image and shard).
    Returns (manifest rows, skipped rows). Without any image, no manifest is written.
    """
    import pandas as pd

    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    for shard in sorted((out / SHARDS).rglob("*.json")):
        record = json.loads(shard.read_text())
        rows.extend(record["rows"])
        skipped.extend(record["skipped"])
    skipped.sort(key=lambda s: (s["source"], s["reason"]))
    buffer = pd.DataFrame(skipped, columns=["source", "reason"]).to_csv(index=False).encode()
    _atomic_write(out / SKIPPED, buffer)
    referenced = {r["image_path"] for r in rows}
    for png in (out / "images").rglob("*.png") if (out / "images").is_dir() else ():
        if png.relative_to(out).as_posix() not in referenced:
            png.unlink()
    if not rows:
        return 0, len(skipped)
    frame = pd.DataFrame(rows).sort_values(["patient_key", "study_key", "series_key", "image_path"])
    frame = frame[list(LEADING_COLUMNS) + [c for c in frame.columns if c not in LEADING_COLUMNS]]
    tmp = out / f".{MANIFEST}.{os.getpid()}.tmp"
    frame.reset_index(drop=True).to_parquet(tmp, index=False)
    os.replace(tmp, out / MANIFEST)
    return len(frame), len(skipped)


def ingest(
    src: Path,
    out: Path,
    *,
    key: bytes,
    workers: int = 1,
    size: int = dicom.IMAGE_SIZE,
    retry_skipped: bool = False,
    progress: bool = True,
) -> IngestSummary:
    """Convert every DICOM file under `src` into PNGs under `out` and (re)write the manifest.

    Args:
        src: a folder (walked recursively) or a DICOMDIR file.
        out: the output folder (created); reruns skip sources already recorded there.
        key: the de-identification key (see `load_key`).
        workers: processes converting files; 1 converts in this process.
        size: side of the square output images.
        retry_skipped: convert again sources recorded as skipped (e.g. after installing a decoder).
        progress: show a progress bar on stderr.

    Raises:
        UserError: `src` does not exist, or no readable DICOM image was found in it.
    """
    from tqdm import tqdm

    src, out = Path(src), Path(out)
    if not src.exists():
        raise UserError(f"source {src} does not exist")
    if out.resolve().is_relative_to(src.resolve()) and src.is_dir():
        raise UserError(f"output folder {out} lies inside the source {src}; choose a folder outside it")
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    total = sum(1 for _ in iter_sources(src))
    if total == 0:
        raise UserError(f"no files under {src}: nothing to ingest")
    out.mkdir(parents=True, exist_ok=True)
    _check_state(out, key, size)
    _clean_temporaries(out)
    summary, start = IngestSummary(), time.perf_counter()
    init = (str(out), key, size, retry_skipped)
    with _quiet_pydicom(), tqdm(total=total, unit="file", file=sys.stderr, disable=not progress,
                                 desc="ingest", mininterval=0.5) as bar:
        for result in _results(iter_sources(src), workers, init):
            summary.seen += 1
            status = result["status"]
            if status == "converted":
                summary.converted += 1
                summary.images += result["images"]
                summary.dropped_frames += result["dropped"]
            elif status == "skipped":
                summary.skipped += 1
            else:
                summary.already_done += 1
            bar.update(1)
            bar.set_postfix(images=summary.images, skipped=summary.skipped, refresh=False)
    summary.manifest_rows, _ = compact(out)
    summary.seconds = time.perf_counter() - start
    if summary.manifest_rows == 0:
        raise UserError(f"no readable DICOM image under {src} ({summary.seen} files; reasons in {out / SKIPPED})")
    return summary
