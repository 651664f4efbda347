"""Batch ingest: a DICOM folder tree → de-identified 8-bit PNGs, `manifest.parquet`, `skipped.csv`.

The run is put together from one module per concept: `deid` (the key and the keyed hashes that
stand for every identifier), `convert` (one file → PNGs and its shard record, inside a worker),
`workers` (the isolated decoding processes that survive crashing and hanging files) and `shards`
(atomic writes, the shard records and their compaction into the manifest), with `pixel_scan` (the
burned-in text scan, in the workers) and `forget` (removing a source afterwards). Nothing in DIR
names a source path; the readable mapping goes only to a file the user names outside DIR
(`source_map`). See docs/privacy.md.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from medtl.errors import UserError
from medtl.training.archive import dicom, header, ocr, shards
from medtl.training.archive.convert import MAX_PIXELS
from medtl.training.archive.pixel_scan import Mode, Scanner, parse_mode
from medtl.training.archive.workers import DECODE_TIMEOUT_S, isolated_results

log = logging.getLogger(__name__)
OFF_WARNING = ("ingest: --burned-in off: the pixels are not scanned for burned-in text; names, IDs and dates "
               "drawn into CR, DX or CT images will be copied into the output. Review every image before sharing it")


@dataclass
class IngestSummary:
    """Counts of one ingest run (sources are files; images are output PNGs)."""

    seen: int = 0
    converted: int = 0
    images: int = 0
    skipped: int = 0
    refused_burned_in: int = 0
    refused_pixels: int = 0
    masked: int = 0
    decoder_failures: int = 0
    already_done: int = 0
    dropped_frames: int = 0
    manifest_rows: int = 0
    seconds: float = 0.0
    scan_mode: str = Mode.REFUSE.value

    def line(self) -> str:
        """The one-line summary printed at the end of a run."""
        scan = ("pixels not scanned (--burned-in off)" if self.scan_mode == Mode.OFF.value else
                f"{self.refused_pixels} of them found by the pixel scan, {self.masked} images masked")
        return (
            f"ingest: {self.seen} files seen, {self.converted} converted into {self.images} images, "
            f"{self.skipped} skipped ({self.refused_burned_in} for burned-in text: {scan}; "
            f"{self.decoder_failures} crashed or timed out the decoder or the text scan), "
            f"{self.already_done} already done, {self.dropped_frames} frames "
            f"dropped; manifest has {self.manifest_rows} images ({self.seconds:.1f} s)"
        )


def check_allowed(codes: Iterator[str] | list[str] | tuple[str, ...] | None) -> frozenset[str]:
    """The `--allow-modality` codes, upper-cased; unknown codes raise a `UserError` listing the valid ones."""
    allowed = frozenset(str(c).strip().upper() for c in codes or ())
    unknown = sorted(allowed - set(header.BURNED_IN_MODALITIES))
    if unknown:
        raise UserError(
            f"unknown --allow-modality {', '.join(unknown)}; choose from {', '.join(sorted(header.BURNED_IN_MODALITIES))} "
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
    burned_in: Mode | str = Mode.REFUSE,
    scan_side: int = ocr.DETECTOR_SIDE,
    scan_threads: int = 1,
) -> IngestSummary:
    """Convert every DICOM file under `src` into PNGs under `out` and (re)write the manifest.

    Args:
        src: a folder (walked recursively) or a DICOMDIR file.
        out: the output folder (created); reruns skip sources already recorded there.
        key: the de-identification key (see `deid.load_key`).
        workers: isolated processes decoding files (at least 1; this process never decodes).
        size: side of the square output images.
        retry_skipped: convert again sources recorded as skipped (e.g. after installing a decoder).
        progress: show a progress bar on stderr.
        allow_modalities: codes of `header.BURNED_IN_MODALITIES` to convert when a file says
            `BurnedInAnnotation = NO` (refused otherwise: they commonly carry burned-in text).
        source_map: CSV file (outside `out`) that receives source key -> source path.
        decode_timeout: seconds one file may take (decoding and scanning) before its worker is
            killed and it is skipped.
        max_pixels: files with more samples than this are skipped before decoding.
        burned_in: the pixel scan (`pixel_scan.Mode`): `refuse` images with identifying text in
            their pixels, `mask` it (kept only when a second scan finds nothing), or `off`.
        scan_side: long side in pixels of the text detector's input (larger images are shrunk to it;
            never below `size`).
        scan_threads: onnxruntime threads of each worker's OCR models.

    Raises:
        UserError: `src` does not exist, no readable DICOM image was found in it, an unknown
            `allow_modalities` code or scan mode, a source map inside `out`, or the OCR engine is
            missing while the scan is on.
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
    mode = parse_mode(burned_in)
    if scan_side < 64 or scan_threads < 1:
        raise UserError(f"--scan-side must be at least 64 and --scan-threads at least 1, got {scan_side} and {scan_threads}")
    if mode is Mode.OFF:
        log.warning(OFF_WARNING)
    else:
        ocr.model_dir()  # the engine and its models are installed, before any worker starts
    total = sum(1 for _ in iter_sources(src))
    if total == 0:
        raise UserError(f"no files under {src}: nothing to ingest")
    out.mkdir(parents=True, exist_ok=True)
    shards.check_state(out, key, size)
    shards.clean_temporaries(out)
    summary, start = IngestSummary(scan_mode=mode.value), time.perf_counter()
    # The scan never looks at fewer pixels than the PNG it lets out: small images are enlarged to the
    # output size, and the detector's side is at least the output size.
    scanner = Scanner(mode, max(scan_side, size), scan_threads, min_side=max(ocr.DETECTOR_MIN_SIDE, size))
    init = (str(out), key, size, retry_skipped, allowed, max_pixels, scanner)
    seen_keys: dict[str, str] = {}
    with _quiet_pydicom(), tqdm(total=total, unit="file", file=sys.stderr, disable=not progress,
                                 desc="ingest", mininterval=0.5) as bar:
        for result in isolated_results(iter_sources(src), workers, init, decode_timeout, seen_keys):
            summary.seen += 1
            status = result["status"]
            if status == "converted":
                summary.converted += 1
                summary.images += result["images"]
                summary.dropped_frames += result["dropped"]
                summary.masked += result.get("masked", 0)
            elif status == "skipped":
                summary.skipped += 1
                summary.refused_burned_in += bool(result.get("burned_in"))
                summary.refused_pixels += bool(result.get("pixel_refusal"))
                summary.decoder_failures += bool(result.get("decoder_failure"))
            else:
                summary.already_done += 1
            bar.update(1)
            bar.set_postfix(images=summary.images, skipped=summary.skipped, refresh=False)
    if source_map is not None:
        shards.write_source_map(source_map, seen_keys)
    summary.manifest_rows, _ = shards.compact(out)
    summary.seconds = time.perf_counter() - start
    if summary.manifest_rows == 0:
        raise UserError(f"no readable DICOM image under {src} ({summary.seen} files; reasons in {out / shards.SKIPPED})")
    return summary
