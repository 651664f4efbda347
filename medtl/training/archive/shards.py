"""Ingest's output folder: atomic writes, one shard record per source, and their compaction.

Crash safety. Every file is written through `medtl.atomic` (a temporary name, fsynced, renamed into
place). Each source file, once handled, leaves one shard record (`DIR/.shards/<key>.json`)
written after its PNGs; the manifest and the skipped list are compacted from all shards at the end
of a run. A run killed midway therefore loses nothing already recorded, and a rerun recovers from
the shards and skips every source whose content hash already has one; a shard that cannot be read
is treated as missing and rebuilt. Nothing in DIR names a source path: the manifest, `skipped.csv`
and the shards hold one keyed hash of it (`source_key`, the same key in all three), and the readable
mapping goes only to a file the user names outside DIR (`write_source_map`). The pixel scan's verdicts
are counted per source in its shard and summed here (`verdict_counts`).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import Any

from medtl.atomic import write_atomic
from medtl.errors import UserError
from medtl.training.archive.deid import DeidKeyError, keyed

STATE_FILE = ".medtl-ingest.json"
SHARDS = ".shards"
MANIFEST = "manifest.parquet"
SKIPPED = "skipped.csv"
SKIPPED_COLUMNS = ("source_key", "reason")
VERDICTS = "scan_verdicts.csv"
VERDICT_COLUMNS = ("verdict", "modality", "reason", "count")
LEADING_COLUMNS = ("image_path", "modality", "body_part", "patient_key", "study_key", "series_key", "frame")

log = logging.getLogger(__name__)


def check_state(out: Path, key: bytes, size: int) -> None:
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
    write_atomic(path, json.dumps(state).encode())


def shard_path(out: Path, name: str) -> Path:
    """Where the shard record called `name` (a keyed hash) lives under `out`."""
    return out / SHARDS / name[:2] / f"{name}.json"


def read_shard(path: Path) -> dict[str, Any] | None:
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


def write_shard(path: Path, record: dict[str, Any]) -> None:
    """Write one shard record atomically."""
    write_atomic(path, json.dumps(record, allow_nan=True).encode())


def clean_temporaries(out: Path) -> None:
    """Remove temporaries a killed run left (ours only: `.<name>.<pid>.tmp`)."""
    leftovers = [*out.glob(".*.tmp")]
    for folder in (out / "images", out / SHARDS):
        if folder.is_dir():
            leftovers += folder.rglob(".*.tmp")
    for tmp in leftovers:
        tmp.unlink(missing_ok=True)


def records(out: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every readable shard record of `out` with its path (an unreadable one is removed and rebuilt later)."""
    found = []
    for shard in sorted((out / SHARDS).rglob("*.json")):
        record = read_shard(shard)
        if record is not None:
            found.append((shard, record))
    return found


def write_skipped(out: Path, shard_records: list[tuple[Path, dict[str, Any]]]) -> int:
    """Write `skipped.csv` (source_key, reason) from the records, atomically; returns its rows."""
    import pandas as pd

    skipped = [{"source_key": s.get("source_key", ""), "reason": s["reason"]}
               for _, record in shard_records for s in record["skipped"]]
    skipped.sort(key=lambda s: (s["source_key"], s["reason"]))
    write_atomic(out / SKIPPED, pd.DataFrame(skipped, columns=list(SKIPPED_COLUMNS)).to_csv(index=False).encode())
    return len(skipped)


def verdict_key(verdict: str, modality: str, reason: str = "") -> str:
    """How a shard counts one scan outcome in its `scan` field (`verdict_counts` reads it back)."""
    return f"{verdict}|{modality}|{reason}"


def verdict_counts(shard_records: list[tuple[Path, dict[str, Any]]]) -> list[dict[str, Any]]:
    """The pixel scan's verdicts over the records: images kept per verdict and files refused per reason.

    One dict a (verdict, modality, reason) with its count; `reason` is empty for kept images
    (`compact` writes them to `scan_verdicts.csv`).
    """
    totals: dict[tuple[str, str, str], int] = {}
    for _, record in shard_records:
        for name, count in (record.get("scan") or {}).items():
            verdict, modality, reason = (name.split("|") + ["", ""])[:3]
            totals[(verdict, modality, reason)] = totals.get((verdict, modality, reason), 0) + int(count)
    return [dict(zip(VERDICT_COLUMNS, (*k, n))) for k, n in sorted(totals.items())]


def write_verdicts(out: Path, shard_records: list[tuple[Path, dict[str, Any]]]) -> None:
    """Write `scan_verdicts.csv` (`verdict_counts` of the records), atomically."""
    import pandas as pd

    write_atomic(out / VERDICTS, pd.DataFrame(verdict_counts(shard_records), columns=list(VERDICT_COLUMNS)).to_csv(index=False).encode())


def read_verdicts(out: Path) -> list[dict[str, Any]]:
    """`scan_verdicts.csv` as `compact` wrote it: the rows of `verdict_counts`, counts as integers."""
    with open(out / VERDICTS, newline="", encoding="utf-8") as handle:
        return [{**row, "count": int(row["count"])} for row in csv.DictReader(handle)]


def compact(out: Path) -> tuple[int, int]:
    """Rebuild `manifest.parquet`, `skipped.csv` and `scan_verdicts.csv` from the shards, atomically.

    Removes PNGs that no shard references (left by a run killed between image and shard, or by a
    source refused on a later scan). Returns (manifest rows, skipped rows). Without any image, no
    manifest is written.
    """
    import pandas as pd

    shard_records = records(out)
    rows = [row for _, record in shard_records for row in record["rows"]]
    skipped = write_skipped(out, shard_records)
    write_verdicts(out, shard_records)
    referenced = {r["image_path"] for r in rows}
    for png in (out / "images").rglob("*.png") if (out / "images").is_dir() else ():
        if png.relative_to(out).as_posix() not in referenced:
            png.unlink()
    if not rows:
        (out / MANIFEST).unlink(missing_ok=True)
        return 0, skipped
    frame = pd.DataFrame(rows).sort_values(["patient_key", "study_key", "series_key", "image_path"])
    frame = frame[list(LEADING_COLUMNS) + [c for c in frame.columns if c not in LEADING_COLUMNS]]
    buffer = io.BytesIO()
    frame.reset_index(drop=True).to_parquet(buffer, index=False)
    write_atomic(out / MANIFEST, buffer.getvalue())
    return len(frame), skipped


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
    write_atomic(path, buffer.getvalue().encode(), perms=0o600)
