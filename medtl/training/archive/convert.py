"""One source file → de-identified PNGs and its shard record; runs inside an ingest worker process.

Header values reach the manifest only through the allow-list of `header.header_fields`; images
that may show burned-in text are refused (`header.burned_in_text`) unless their modality was
allowed and the file says `BurnedInAnnotation = NO`, and every image is then scanned for text in
its pixels (`pixel_scan`) before it is resized. A source whose content was already recorded is not
converted again (unless it was refused or left unscanned under another `--burned-in` mode); another
path with the same content is recorded as a duplicate; a source removed with `--forget` never
comes back. Every row and skipped entry names its source by the keyed hash of its path.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from pathlib import Path
from typing import Any

from medtl.atomic import write_atomic
from medtl.training.archive import dicom, header, text_rules
from medtl.training.archive.deid import keyed, path_key
from medtl.training.archive.pixel_scan import REFUSED, BurnedInText, Mode, Scanner, Verdict
from medtl.training.archive.shards import read_shard, shard_path, verdict_key, write_shard

MAX_PIXELS = 2**28  # 268 M samples: a 16k x 16k image, or 1000 frames of 512 x 512
DUPLICATE = "duplicate of another source file's content (ingested once)"
# What a worker is doing, for the supervisor to name in the reason when it dies or hangs.
STAGE_DECODING, STAGE_SCANNING = 0, 1

_WORKER: dict[str, Any] = {}


def init_worker(
    out: str, key: bytes, size: int, retry_skipped: bool,
    allowed: frozenset[str] = frozenset(), max_pixels: int = MAX_PIXELS,
    scanner: Scanner | None = None, stage: Any = None,
) -> None:
    """Set this worker process's run settings (as `ingest` passes them) and silence pydicom.

    `scanner` is the pixel scan (None: not scanned); `stage` a shared integer the worker sets to
    `STAGE_SCANNING` while the scan runs.
    """
    _WORKER.update(out=Path(out), key=key, size=size, retry_skipped=retry_skipped, allowed=allowed,
                   max_pixels=max_pixels, scanner=scanner or Scanner(Mode.OFF), stage=stage)
    logging.getLogger("pydicom").setLevel(logging.CRITICAL + 1)
    logging.getLogger("pydicom").propagate = False


def warm_up() -> None:
    """Load the scan's OCR models in this worker (nothing when the scan is off)."""
    _WORKER["scanner"].load()


def _set_stage(value: int) -> None:
    if _WORKER.get("stage") is not None:
        _WORKER["stage"].value = value


def _retry(record: dict[str, Any], mode: Mode, allowed: frozenset[str]) -> bool:
    """Whether a recorded source is converted again in this run."""
    if record.get("forgotten"):
        return False
    scanned_as = record.get("scan_mode", Mode.OFF.value)  # records older than the scan were not scanned
    if record["rows"]:
        return scanned_as == Mode.OFF.value and mode is not Mode.OFF
    earlier_refusal = record.get("refused")  # a burned-in code the user may have allowed since
    return bool(_WORKER["retry_skipped"] or (earlier_refusal is not None and earlier_refusal in allowed)
                or (record.get("scan_refused") and scanned_as != mode.value))


def process_source(path: str, rel: str) -> dict[str, Any]:
    """Convert one source file (in a worker) and record it; returns its status and counts."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's warnings quote header values
        return _process(path, rel)


def _process(path: str, rel: str) -> dict[str, Any]:
    out, key, size = _WORKER["out"], _WORKER["key"], _WORKER["size"]
    allowed: frozenset[str] = _WORKER.get("allowed", frozenset())
    pkey = path_key(key, rel)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        write_shard(shard_path(out, keyed(key, "unreadable", rel)), {
            "path_keys": [pkey], "rows": [],
            "skipped": [{"source_key": pkey, "reason": f"unreadable file ({type(exc).__name__})"}]})
        return {"status": "skipped"}
    digest = hashlib.sha256(data).hexdigest() if data else f"empty:{pkey}"
    source_key = keyed(key, "source", digest)
    shard = shard_path(out, source_key)
    record = read_shard(shard)
    scanner: Scanner = _WORKER["scanner"]
    if record is not None and not _retry(record, scanner.mode, allowed):
        if pkey in record["path_keys"]:
            return {"status": "done"}
        dup = shard_path(out, keyed(key, "duplicate", rel))
        if read_shard(dup) is not None:
            return {"status": "done"}
        write_shard(dup, {"path_keys": [pkey], "rows": [], "duplicate_of": source_key,
                          "skipped": [{"source_key": pkey, "reason": DUPLICATE}]})
        return {"status": "skipped"}
    if record is not None and record["path_keys"]:
        pkey = record["path_keys"][0]  # a source converted again keeps the key its rows had
    rows, skipped, pngs = [], [], []
    refused: str | None = None
    burned_in = pixel_refused = False
    scan_counts: dict[str, int] = {}
    modality = "OT"
    try:
        ds = dicom.read_dataset(Path(path), data)
        modality = header.normalise_modality(ds.get("Modality"))
        reason = header.burned_in_text(ds, allowed)
        if reason is not None:
            burned_in, refused = True, header.burned_in_code(ds)
            raise dicom.SkipFile(reason)
        dicom.check_pixel_count(ds, _WORKER.get("max_pixels", MAX_PIXELS))
        fields = header.header_fields(ds)
        patient, study, series = header.identity(ds)
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
        values = text_rules.header_values(ds) if scanner.mode is not Mode.OFF else None

        def scan(image: Any) -> tuple[Any, str]:
            _set_stage(STAGE_SCANNING)
            try:
                return scanner.scan(image, values)
            finally:
                _set_stage(STAGE_DECODING)

        for frame in dicom.iter_frames(ds, size, scan):
            if frame.image is None:
                skipped.append({"source_key": pkey, "reason": f"frame {frame.index}: {frame.reason}"})
                continue
            name = keyed(key, "image", f"{digest}:{frame.index}")
            image_path = f"images/{name[:2]}/{name}.png"
            pngs.append((out / image_path, dicom.encode_png(frame.image)))
            rows.append({"image_path": image_path, **keys, "frame": frame.index, **fields,
                         "window_source": frame.window_source, "pixel_scan": frame.scan, "source_key": pkey})
            verdict = verdict_key(frame.scan, fields["modality"])
            scan_counts[verdict] = scan_counts.get(verdict, 0) + 1
        if not rows:
            reasons = sorted({s["reason"].split(": ", 1)[1] for s in skipped})
            skipped = [{"source_key": pkey, "reason": "no usable frame: " + "; ".join(reasons)}]
    except BurnedInText as exc:  # the whole file: one identifying frame is enough
        rows, skipped, pngs, burned_in, pixel_refused = [], [{"source_key": pkey, "reason": str(exc)}], [], True, True
        scan_counts = {verdict_key(REFUSED, modality, exc.category): 1}
    except dicom.SkipFile as exc:
        rows, skipped, pngs, scan_counts = [], [{"source_key": pkey, "reason": str(exc)}], [], {}
    except Exception as exc:  # any other failure of one file must not stop the batch
        rows, skipped, pngs, scan_counts = [], [{"source_key": pkey, "reason": f"failed while converting ({type(exc).__name__})"}], [], {}
    for target, png in pngs:  # a failing write (disk full) stops the run: nothing is recorded wrongly
        write_atomic(target, png)
    write_shard(shard, {"path_keys": [pkey], "rows": rows, "skipped": skipped, "refused": refused,
                        "scan_mode": scanner.mode.value, "scan_refused": pixel_refused,
                        "scan": scan_counts})
    return {"status": "converted" if rows else "skipped", "images": len(rows),
            "dropped": len(skipped) if rows else 0, "burned_in": burned_in,
            "pixel_refusal": pixel_refused,
            "masked": sum(row["pixel_scan"] == Verdict.MASKED.value for row in rows)}
