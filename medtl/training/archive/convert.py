"""One source file → de-identified PNGs and its shard record; runs inside an ingest worker process.

Header values reach the manifest only through the allow-list of `header.header_fields`; images
that may show burned-in text are refused (`header.burned_in_text`) unless their modality was
allowed and the file says `BurnedInAnnotation = NO`. A source whose content was already recorded
is not converted again; another path with the same content is recorded as a duplicate.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from pathlib import Path
from typing import Any

from medtl.atomic import write_atomic
from medtl.training.archive import dicom, header
from medtl.training.archive.deid import keyed, path_key
from medtl.training.archive.shards import read_shard, shard_path, write_shard

MAX_PIXELS = 2**28  # 268 M samples: a 16k x 16k image, or 1000 frames of 512 x 512
DUPLICATE = "duplicate of another source file's content (ingested once)"

_WORKER: dict[str, Any] = {}


def init_worker(
    out: str, key: bytes, size: int, retry_skipped: bool,
    allowed: frozenset[str] = frozenset(), max_pixels: int = MAX_PIXELS,
) -> None:
    """Set this worker process's run settings (as `ingest` passes them) and silence pydicom."""
    _WORKER.update(out=Path(out), key=key, size=size, retry_skipped=retry_skipped, allowed=allowed,
                   max_pixels=max_pixels)
    logging.getLogger("pydicom").setLevel(logging.CRITICAL + 1)
    logging.getLogger("pydicom").propagate = False


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
    if record is not None:
        earlier_refusal = record.get("refused")  # a burned-in code the user may have allowed since
        retry = not record["rows"] and (_WORKER["retry_skipped"] or (earlier_refusal is not None and earlier_refusal in allowed))
        if not retry:
            if pkey in record["path_keys"]:
                return {"status": "done"}
            dup = shard_path(out, keyed(key, "duplicate", rel))
            if read_shard(dup) is not None:
                return {"status": "done"}
            write_shard(dup, {"path_keys": [pkey], "rows": [], "skipped": [{"source_key": pkey, "reason": DUPLICATE}]})
            return {"status": "skipped"}
    rows, skipped, pngs = [], [], []
    refused: str | None = None
    burned_in = False
    try:
        ds = dicom.read_dataset(Path(path), data)
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
        for frame in dicom.iter_frames(ds, size):
            if frame.image is None:
                skipped.append({"source_key": pkey, "reason": f"frame {frame.index}: {frame.reason}"})
                continue
            name = keyed(key, "image", f"{digest}:{frame.index}")
            image_path = f"images/{name[:2]}/{name}.png"
            pngs.append((out / image_path, dicom.encode_png(frame.image)))
            rows.append({"image_path": image_path, **keys, "frame": frame.index, **fields,
                         "window_source": frame.window_source, "source_key": source_key})
        if not rows:
            reasons = sorted({s["reason"].split(": ", 1)[1] for s in skipped})
            skipped = [{"source_key": pkey, "reason": "no usable frame: " + "; ".join(reasons)}]
    except dicom.SkipFile as exc:
        rows, skipped, pngs = [], [{"source_key": pkey, "reason": str(exc)}], []
    except Exception as exc:  # any other failure of one file must not stop the batch
        rows, skipped, pngs = [], [{"source_key": pkey, "reason": f"failed while converting ({type(exc).__name__})"}], []
    for target, png in pngs:  # a failing write (disk full) stops the run: nothing is recorded wrongly
        write_atomic(target, png)
    write_shard(shard, {"path_keys": [pkey], "rows": rows, "skipped": skipped, "refused": refused})
    return {"status": "converted" if rows else "skipped", "images": len(rows),
            "dropped": len(skipped) if rows else 0, "burned_in": burned_in}
