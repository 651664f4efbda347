"""Batch ingest: a DICOM folder tree → de-identified 8-bit PNGs, `manifest.parquet`, `skipped.csv`.

Crash safety. Every file is written to a temporary name, fsynced and moved into place with
`os.replace`. Each source file, once handled, leaves one shard record (`DIR/.shards/<key>.json`)
written after its PNGs; the manifest and the skipped list are compacted from all shards at the end
of a run. A run killed midway therefore loses nothing already recorded, and a rerun recovers from
the shards and skips every source whose content hash already has one; a shard that cannot be read
is treated as missing and rebuilt.

Isolation. Files are decoded in worker processes, never in the process that supervises the run,
each with a time limit and a pixel-count limit checked before decoding. A file that crashes its
worker (a decoder fault, the kernel's OOM killer) or runs past the limit is recorded as skipped
and the worker replaced. Before a file is handed out an in-progress marker (`DIR/.inprogress/`,
holding how many runs it was in flight in) is written and removed once its record exists. When
the whole run dies (the machine's OOM killer taking the supervisor, a power cut), the rerun tries
the files in flight once more, and skips a file that was in flight when `RUN_DEATHS` runs died
instead of dying on it again.

De-identification. Patient, study and series keys, shard names, PNG names and source keys are
HMAC-SHA256 digests under a secret key (`MEDTL_DEID_KEY`, a key file outside DIR that only its
owner can read, or an in-memory ephemeral key); header values reach the manifest only through
the allow-list of `dicom.header_fields`; images that may show burned-in text are refused
(`dicom.burned_in_text`). Nothing in DIR names a source path: `skipped.csv` and the shards hold a
keyed hash of it (`source_key`), and the readable mapping goes only to a file the user names
outside DIR (`source_map`). See docs/privacy.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import secrets
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medtl.errors import UserError
from medtl.training.archive import dicom

KEY_ENV = "MEDTL_DEID_KEY"
MIN_KEY_BYTES = 16
STATE_FILE = ".medtl-ingest.json"
SHARDS = ".shards"
MANIFEST = "manifest.parquet"
SKIPPED = "skipped.csv"
IN_PROGRESS = ".inprogress"
SKIPPED_COLUMNS = ("source_key", "reason")
DECODE_TIMEOUT_S = 300.0
# A file in flight when this many runs died (markers left behind) is skipped: an innocent file is
# finished early in the rerun (files before it are already done), a culprit kills the rerun again.
RUN_DEATHS = 2
MAX_PIXELS = 2**28  # 268 M samples: a 16k x 16k image, or 1000 frames of 512 x 512
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
    refused_burned_in: int = 0
    decoder_failures: int = 0
    already_done: int = 0
    dropped_frames: int = 0
    manifest_rows: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        """The one-line summary printed at the end of a run."""
        return (
            f"ingest: {self.seen} files seen, {self.converted} converted into {self.images} images, "
            f"{self.skipped} skipped ({self.refused_burned_in} for possible burned-in text, "
            f"{self.decoder_failures} crashed or timed out the decoder), "
            f"{self.already_done} already done, {self.dropped_frames} frames "
            f"dropped; manifest has {self.manifest_rows} images ({self.seconds:.1f} s)"
        )


def load_key(out: Path, *, key_file: Path | None = None, ephemeral: bool = False) -> bytes:
    """The de-identification key: ephemeral when asked, else `--key-file`, else `$MEDTL_DEID_KEY`.

    An ephemeral key is random and lives only in this process (demos: output keys cannot be
    linked to any later run). The key file must lie outside `out` and, as ssh asks of a private
    key, be neither readable nor writable by group or others. Without any source the message
    says how to set one.
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
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise DeidKeyError(
                f"key file {key_file} is accessible by others (mode {mode:03o}); "
                f"run chmod 600 {key_file} (a key others can read de-identifies nothing)"
            )
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


def _atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write `data` to a temporary file, fsync it, and rename it onto `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def _fsync_dir(folder: Path) -> None:
    """Make the renames inside `folder` durable (best effort where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_allowed(codes: Iterator[str] | list[str] | tuple[str, ...] | None) -> frozenset[str]:
    """The `--allow-modality` codes, upper-cased; unknown codes raise a `UserError` listing the valid ones."""
    allowed = frozenset(str(c).strip().upper() for c in codes or ())
    unknown = sorted(allowed - set(dicom.BURNED_IN_MODALITIES))
    if unknown:
        raise UserError(
            f"unknown --allow-modality {', '.join(unknown)}; choose from {', '.join(sorted(dicom.BURNED_IN_MODALITIES))} "
            "(other modalities are converted without opting in)"
        )
    return allowed


def check_source_map(path: Path | None, out: Path, src: Path) -> None:
    """Refuse a source-map file inside the output folder (or inside the source archive)."""
    if path is None:
        return
    target = Path(path).resolve()
    if target.is_relative_to(Path(out).resolve()):
        raise UserError(f"source map {path} lies inside the output folder {out}; the folder must not name sources")
    if Path(src).is_dir() and target.is_relative_to(Path(src).resolve()):
        raise UserError(f"source map {path} lies inside the source {src}; choose a path outside it")
    if target.is_dir():
        raise UserError(f"source map {path} is a folder; name a CSV file")


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


def _init_worker(
    out: str, key: bytes, size: int, retry_skipped: bool,
    allowed: frozenset[str] = frozenset(), max_pixels: int = MAX_PIXELS,
) -> None:
    _WORKER.update(out=Path(out), key=key, size=size, retry_skipped=retry_skipped, allowed=allowed,
                   max_pixels=max_pixels)
    logging.getLogger("pydicom").setLevel(logging.CRITICAL + 1)
    logging.getLogger("pydicom").propagate = False


def _shard_path(out: Path, name: str) -> Path:
    return out / SHARDS / name[:2] / f"{name}.json"


def process_source(path: str, rel: str) -> dict[str, Any]:
    """Convert one source file (in a worker) and record it; returns its status and counts."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's warnings quote header values
        return _process(path, rel)


def path_key(key: bytes, rel: str) -> str:
    """The keyed hash that stands for a source path (relative to SRC) in everything written."""
    return keyed(key, "path", rel)


def _read_shard(path: Path) -> dict[str, Any] | None:
    """A shard's record, or None when it is missing or unreadable (it is then rebuilt)."""
    try:
        record = json.loads(path.read_text())
        if not isinstance(record, dict) or not {"path_keys", "rows", "skipped"} <= record.keys():
            raise ValueError("incomplete record")
        return record
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        log.warning("shard %s is unreadable: rebuilding it", path.name)
        path.unlink(missing_ok=True)
        return None


def _process(path: str, rel: str) -> dict[str, Any]:
    out, key, size = _WORKER["out"], _WORKER["key"], _WORKER["size"]
    allowed: frozenset[str] = _WORKER.get("allowed", frozenset())
    pkey = path_key(key, rel)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        _write_shard(_shard_path(out, keyed(key, "unreadable", rel)), {
            "path_keys": [pkey], "rows": [],
            "skipped": [{"source_key": pkey, "reason": f"unreadable file ({type(exc).__name__})"}]})
        return {"status": "skipped"}
    digest = hashlib.sha256(data).hexdigest() if data else f"empty:{pkey}"
    source_key = keyed(key, "source", digest)
    shard = _shard_path(out, source_key)
    record = _read_shard(shard)
    if record is not None:
        earlier_refusal = record.get("refused")  # a burned-in code the user may have allowed since
        retry = not record["rows"] and (_WORKER["retry_skipped"] or (earlier_refusal is not None and earlier_refusal in allowed))
        if not retry:
            if pkey in record["path_keys"]:
                return {"status": "done"}
            dup = _shard_path(out, keyed(key, "duplicate", rel))
            if _read_shard(dup) is not None:
                return {"status": "done"}
            _write_shard(dup, {"path_keys": [pkey], "rows": [], "skipped": [{"source_key": pkey, "reason": DUPLICATE}]})
            return {"status": "skipped"}
    rows, skipped, pngs = [], [], []
    refused: str | None = None
    burned_in = False
    try:
        ds = dicom.read_dataset(Path(path), data)
        reason = dicom.burned_in_text(ds, allowed)
        if reason is not None:
            burned_in, refused = True, dicom.burned_in_code(ds)
            raise dicom.SkipFile(reason)
        dicom.check_pixel_count(ds, _WORKER.get("max_pixels", MAX_PIXELS))
        header = dicom.header_fields(ds)
        patient, study, series = dicom.identity(ds)
        if not patient and not study:
            raise dicom.SkipFile(
                "no patient or study identifier: the image could not be kept in the same split as "
                "the patient's other images"
            )
        keys = {
            # Without a patient identifier the study stands for the person, so that one study's
            # images never straddle splits (`split_patients` groups by patient_key).
            "patient_key": keyed(key, "patient", patient or f"study:{study}"),
            "study_key": keyed(key, "study", study or f"source:{digest}"),
            "series_key": keyed(key, "series", series or f"source:{digest}"),
        }
        for frame in dicom.iter_frames(ds, size):
            if frame.image is None:
                skipped.append({"source_key": pkey, "reason": f"frame {frame.index}: {frame.reason}"})
                continue
            name = keyed(key, "image", f"{digest}:{frame.index}")
            image_path = f"images/{name[:2]}/{name}.png"
            pngs.append((out / image_path, dicom.encode_png(frame.image)))
            rows.append({"image_path": image_path, **keys, "frame": frame.index, **header,
                         "window_source": frame.window_source, "source_key": source_key})
        if not rows:
            reasons = sorted({s["reason"].split(": ", 1)[1] for s in skipped})
            skipped = [{"source_key": pkey, "reason": "no usable frame: " + "; ".join(reasons)}]
    except dicom.SkipFile as exc:
        rows, skipped, pngs = [], [{"source_key": pkey, "reason": str(exc)}], []
    except Exception as exc:  # any other failure of one file must not stop the batch
        rows, skipped, pngs = [], [{"source_key": pkey, "reason": f"failed while converting ({type(exc).__name__})"}], []
    for target, png in pngs:  # a failing write (disk full) stops the run: nothing is recorded wrongly
        _atomic_write(target, png)
    _write_shard(shard, {"path_keys": [pkey], "rows": rows, "skipped": skipped, "refused": refused})
    return {"status": "converted" if rows else "skipped", "images": len(rows),
            "dropped": len(skipped) if rows else 0, "burned_in": burned_in}


def _write_shard(path: Path, record: dict[str, Any]) -> None:
    _atomic_write(path, json.dumps(record, allow_nan=True).encode())


def _serve(conn: multiprocessing.connection.Connection, init: tuple) -> None:
    """A decoding worker: converts the files it is sent until it is sent None."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when workers stop
    _init_worker(*init)
    with contextlib.suppress(EOFError, BrokenPipeError, ConnectionResetError):  # the supervisor is gone
        while True:
            task = conn.recv()
            if task is None:
                return
            conn.send(process_source(*task))


class _Worker:
    """One decoding process and the file it is working on."""

    def __init__(self, ctx: Any, init: tuple) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, init), daemon=True)
        self.proc.start()
        child.close()
        self.task: tuple[str, str, str] | None = None  # (path, rel, path key)
        self.started = 0.0

    def give(self, path: str, rel: str, pkey: str) -> None:
        self.task, self.started = (path, rel, pkey), time.monotonic()
        self.conn.send((path, rel))

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.conn.send(None)
        self.proc.join(2)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(2)
        self.conn.close()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join(5)
        self.conn.close()


def _context() -> Any:
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def _crash_reason(exitcode: int | None) -> str:
    """A skip reason for a worker that died: SIGKILL is, in practice, the kernel's OOM killer."""
    if exitcode == -9:
        return "decoder crashed (worker exit code -9: killed, most likely out of memory)"
    return f"decoder crashed (worker exit code {exitcode})"


def _attempts(marker: Path) -> int:
    try:
        return int(marker.read_text() or 1)
    except (OSError, ValueError):
        return 1


def _record_failure(out: Path, key: bytes, rel: str, reason: str) -> None:
    pkey = path_key(key, rel)
    _write_shard(_shard_path(out, keyed(key, "crashed", rel)), {
        "path_keys": [pkey], "rows": [], "skipped": [{"source_key": pkey, "reason": reason}], "refused": None})


def _results(
    sources: Iterator[tuple[Path, str]], workers: int, init: tuple, timeout: float, seen_keys: dict[str, str]
) -> Iterator[dict[str, Any]]:
    """Results in completion order from `workers` isolated decoding processes, one file each at a time.

    A worker that dies or runs past `timeout` seconds on a file is replaced and the file recorded
    as skipped. `seen_keys` collects path key -> relative path of every source (for the source map).
    """
    out, key, retry = Path(init[0]), init[1], init[3]
    markers = out / IN_PROGRESS
    markers.mkdir(exist_ok=True)
    stale = {m.name: _attempts(m) for m in markers.iterdir()}
    ctx = _context()
    idle = [_Worker(ctx, init) for _ in range(workers)]
    busy: list[_Worker] = []
    sources = iter(sources)
    exhausted = False
    try:
        while True:
            while idle and not exhausted:
                item = next(sources, None)
                if item is None:
                    exhausted = True
                    break
                path, rel = item
                pkey = path_key(key, rel)
                seen_keys[pkey] = rel
                crashed = _shard_path(out, keyed(key, "crashed", rel))
                attempts = stale.pop(pkey, 0)
                if attempts >= RUN_DEATHS and not retry:
                    _record_failure(out, key, rel, f"decoder did not finish in {attempts} earlier runs (the file "
                                    "crashed or hung the whole run); --retry-skipped tries it again")
                    (markers / pkey).unlink(missing_ok=True)
                    yield {"status": "skipped", "decoder_failure": True}
                    continue
                if crashed.exists():
                    if not retry and _read_shard(crashed) is not None:
                        yield {"status": "done"}
                        continue
                    crashed.unlink(missing_ok=True)
                (markers / pkey).write_text(str(attempts + 1))
                worker = idle.pop()
                worker.give(str(path), rel, pkey)
                busy.append(worker)
            if not busy:
                break
            now = time.monotonic()
            wait_s = max(0.01, min(w.started + timeout - now for w in busy))
            ready = set(multiprocessing.connection.wait(
                [w.conn for w in busy] + [w.proc.sentinel for w in busy], timeout=wait_s))
            for worker in list(busy):
                assert worker.task is not None
                _, rel, pkey = worker.task
                reason = None
                if worker.conn in ready:
                    try:
                        result = worker.conn.recv()
                    except (EOFError, OSError):
                        worker.proc.join(1)
                        reason = _crash_reason(worker.proc.exitcode)
                    else:
                        busy.remove(worker)
                        idle.append(worker)
                        (markers / pkey).unlink(missing_ok=True)
                        yield result
                        continue
                elif worker.proc.sentinel in ready or not worker.proc.is_alive():
                    worker.proc.join(1)
                    reason = _crash_reason(worker.proc.exitcode)
                elif time.monotonic() - worker.started > timeout:
                    reason = f"decoder timed out after {timeout:g} s"
                if reason is None:
                    continue
                worker.kill()
                busy.remove(worker)
                idle.append(_Worker(ctx, init))
                _record_failure(out, key, rel, reason)
                (markers / pkey).unlink(missing_ok=True)
                log.warning("ingest: source %s skipped: %s", pkey, reason)
                yield {"status": "skipped", "decoder_failure": True}
    finally:
        for worker in busy:
            worker.kill()
            if worker.task is not None:  # interrupted, not the file's fault: no marker survives
                (markers / worker.task[2]).unlink(missing_ok=True)
        for worker in idle:
            worker.stop()
    for name in stale:  # markers of sources no longer under SRC
        (markers / name).unlink(missing_ok=True)


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
        record = _read_shard(shard)  # an unreadable one is removed: its source converts on the next run
        if record is None:
            continue
        rows.extend(record["rows"])
        skipped.extend({"source_key": s.get("source_key", ""), "reason": s["reason"]} for s in record["skipped"])
    skipped.sort(key=lambda s: (s["source_key"], s["reason"]))
    buffer = pd.DataFrame(skipped, columns=list(SKIPPED_COLUMNS)).to_csv(index=False).encode()
    _atomic_write(out / SKIPPED, buffer)
    referenced = {r["image_path"] for r in rows}
    for png in (out / "images").rglob("*.png") if (out / "images").is_dir() else ():
        if png.relative_to(out).as_posix() not in referenced:
            png.unlink()
    if not rows:
        return 0, len(skipped)
    frame = pd.DataFrame(rows).sort_values(["patient_key", "study_key", "series_key", "image_path"])
    frame = frame[list(LEADING_COLUMNS) + [c for c in frame.columns if c not in LEADING_COLUMNS]]
    buffer = io.BytesIO()
    frame.reset_index(drop=True).to_parquet(buffer, index=False)
    _atomic_write(out / MANIFEST, buffer.getvalue())
    _fsync_dir(out)
    return len(frame), len(skipped)


def write_source_map(path: Path, mapping: dict[str, str]) -> None:
    """Merge `mapping` (source key -> path relative to SRC) into the CSV at `path`, mode 0600."""
    import csv

    path = Path(path)
    merged: dict[str, str] = {}
    if path.is_file():
        with path.open(newline="") as handle:
            merged = {r["source_key"]: r["source"] for r in csv.DictReader(handle) if "source_key" in r}
    merged.update(mapping)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["source_key", "source"])
    writer.writerows(sorted(merged.items(), key=lambda kv: kv[1]))
    _atomic_write(path, buffer.getvalue().encode(), mode=0o600)


def ingest(
    src: Path,
    out: Path,
    *,
    key: bytes,
    workers: int = 1,
    size: int = dicom.IMAGE_SIZE,
    retry_skipped: bool = False,
    progress: bool = True,
    allow_modalities: tuple[str, ...] | list[str] = (),
    source_map: Path | None = None,
    decode_timeout: float = DECODE_TIMEOUT_S,
    max_pixels: int = MAX_PIXELS,
) -> IngestSummary:
    """Convert every DICOM file under `src` into PNGs under `out` and (re)write the manifest.

    Args:
        src: a folder (walked recursively) or a DICOMDIR file.
        out: the output folder (created); reruns skip sources already recorded there.
        key: the de-identification key (see `load_key`).
        workers: isolated processes decoding files (at least 1; this process never decodes).
        size: side of the square output images.
        retry_skipped: convert again sources recorded as skipped (e.g. after installing a decoder).
        progress: show a progress bar on stderr.
        allow_modalities: codes of `dicom.BURNED_IN_MODALITIES` to convert when a file says
            `BurnedInAnnotation = NO` (refused otherwise: they commonly carry burned-in text).
        source_map: CSV file (outside `out`) that receives source key -> source path.
        decode_timeout: seconds one file may take before its worker is killed and it is skipped.
        max_pixels: files with more samples than this are skipped before decoding.

    Raises:
        UserError: `src` does not exist, no readable DICOM image was found in it, an unknown
            `allow_modalities` code, or a source map inside `out`.
    """
    from tqdm import tqdm

    src, out = Path(src), Path(out)
    if not src.exists():
        raise UserError(f"source {src} does not exist")
    if out.resolve().is_relative_to(src.resolve()) and src.is_dir():
        raise UserError(f"output folder {out} lies inside the source {src}; choose a folder outside it")
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    if decode_timeout <= 0 or max_pixels < 1:
        raise UserError(f"--decode-timeout and --max-pixels must be positive, got {decode_timeout} and {max_pixels}")
    allowed = check_allowed(allow_modalities)
    check_source_map(source_map, out, src)
    total = sum(1 for _ in iter_sources(src))
    if total == 0:
        raise UserError(f"no files under {src}: nothing to ingest")
    out.mkdir(parents=True, exist_ok=True)
    _check_state(out, key, size)
    _clean_temporaries(out)
    summary, start = IngestSummary(), time.perf_counter()
    init = (str(out), key, size, retry_skipped, allowed, max_pixels)
    seen_keys: dict[str, str] = {}
    with _quiet_pydicom(), tqdm(total=total, unit="file", file=sys.stderr, disable=not progress,
                                 desc="ingest", mininterval=0.5) as bar:
        for result in _results(iter_sources(src), workers, init, decode_timeout, seen_keys):
            summary.seen += 1
            status = result["status"]
            if status == "converted":
                summary.converted += 1
                summary.images += result["images"]
                summary.dropped_frames += result["dropped"]
            elif status == "skipped":
                summary.skipped += 1
                summary.refused_burned_in += bool(result.get("burned_in"))
                summary.decoder_failures += bool(result.get("decoder_failure"))
            else:
                summary.already_done += 1
            bar.update(1)
            bar.set_postfix(images=summary.images, skipped=summary.skipped, refresh=False)
    if source_map is not None:
        write_source_map(source_map, seen_keys)
    summary.manifest_rows, _ = compact(out)
    summary.seconds = time.perf_counter() - start
    if summary.manifest_rows == 0:
        raise UserError(f"no readable DICOM image under {src} ({summary.seen} files; reasons in {out / SKIPPED})")
    return summary
