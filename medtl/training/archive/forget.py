"""`medtl ingest --forget KEY...`: remove sources' images from an existing ingest output, for good.

For a reader who finds text the scan missed: the image's manifest row names its source (`source_key`,
the key the `--source-map` file resolves), and forgetting that key removes every image of the source.
The steps run in the order that keeps the folder safe at every instant: first each source's shard
becomes a tombstone (a rerun of ingest never converts it again, and a crash from here on is finished
by the next ingest or forget), then its PNGs are deleted, then the manifest is rewritten without its
rows (other columns, such as pseudo-labels, kept) and `skipped.csv` lists it as forgotten. Cluster
mosaics that may show a removed image are deleted (rerun `medtl pseudolabel` to draw them again).
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medtl.atomic import write_atomic
from medtl.errors import UserError
from medtl.training.archive.pseudolabel import MOSAICS
from medtl.training.archive.shards import (
    MANIFEST,
    STATE_FILE,
    records,
    shard_path,
    verdict_key,
    write_shard,
    write_skipped,
    write_verdicts,
)

FORGOTTEN = "forgotten (removed with --forget; never converted into this folder again)"
FORGOTTEN_VERDICT = "forgotten"
"""The scan-verdict name of a forgotten image (`scan_verdicts.csv`, the `scan_forgotten` metrics)."""


@dataclass(frozen=True)
class Forgotten:
    """What `forget` removed."""

    sources: int
    images: int
    mosaics: int


def _check_keys(keys: list[str]) -> list[str]:
    cleaned = [str(k).strip().lower() for k in keys]
    bad = [k for k in cleaned if not re.fullmatch(r"[0-9a-f]{32}", k)]
    if not cleaned or bad:
        raise UserError(f"--forget takes source keys (32 hex characters, as in the manifest's source_key, "
                        f"skipped.csv or the --source-map file); got {bad[0] if bad else 'none'!r}")
    return sorted(set(cleaned))


def forget(out: Path, keys: list[str]) -> Forgotten:
    """Remove the sources named by `keys` (their images, rows and PNGs) from the ingest output `out`.

    Raises:
        UserError: `out` is not an ingest output, a key is malformed, or a key names no source of `out`
            (nothing is changed then).
    """
    import pandas as pd

    out = Path(out)
    if not (out / STATE_FILE).is_file():
        raise UserError(f"{out} is not a medtl ingest output (no {STATE_FILE}); name the folder ingest wrote")
    wanted = _check_keys(keys)
    shard_records = records(out)
    holders: dict[str, list[tuple[Path, dict[str, Any]]]] = {}
    for shard, record in shard_records:
        for pkey in record["path_keys"]:
            holders.setdefault(pkey, []).append((shard, record))
    unknown = [k for k in wanted if k not in holders]
    if unknown:
        raise UserError(f"source key {unknown[0]} is not in {out} ({len(unknown)} of {len(wanted)} unknown); "
                        "nothing was removed")
    by_path = dict(shard_records)
    targets: dict[Path, dict[str, Any]] = {}
    for pkey in wanted:
        for shard, record in holders[pkey]:
            targets[shard] = record
            if record.get("duplicate_of"):  # the same pixels, converted under the first path's key
                content = shard_path(out, record["duplicate_of"])
                if content in by_path:
                    targets[content] = by_path[content]
    manifest = pd.read_parquet(out / MANIFEST) if (out / MANIFEST).is_file() else None
    sources = {k for record in targets.values() for k in record["path_keys"]}
    images = {row["image_path"] for record in targets.values() for row in record["rows"]}
    if manifest is not None and "source_key" in manifest:
        images |= set(manifest.loc[manifest["source_key"].isin(sources), "image_path"])
    tombstones: dict[Path, dict[str, Any]] = {}
    for shard, record in targets.items():  # 1. tombstones: from here on the sources never come back
        counts: dict[str, int] = {}
        for row in record["rows"]:
            name = verdict_key(FORGOTTEN_VERDICT, row.get("modality", "OT"))
            counts[name] = counts.get(name, 0) + 1
        tombstones[shard] = {"path_keys": record["path_keys"], "rows": [], "forgotten": True, "refused": None,
                             "scan_mode": record.get("scan_mode"), "scan": counts,
                             "skipped": [{"source_key": k, "reason": FORGOTTEN} for k in record["path_keys"]]}
        write_shard(shard, tombstones[shard])
    for rel in sorted(images):  # 2. the pixels
        (out / rel).unlink(missing_ok=True)
    mosaics = 0
    if manifest is not None:  # 3. the manifest, keeping its other columns
        removed = manifest["image_path"].isin(images)
        mosaics = _drop_mosaics(out, manifest.loc[removed, "label"] if "label" in manifest else None)
        kept = manifest.loc[~removed].reset_index(drop=True)
        if len(kept):
            buffer = io.BytesIO()
            kept.to_parquet(buffer, index=False)
            write_atomic(out / MANIFEST, buffer.getvalue())
        else:
            (out / MANIFEST).unlink(missing_ok=True)
    updated = [(shard, tombstones.get(shard, record)) for shard, record in shard_records]  # 4. the lists
    write_skipped(out, updated)
    write_verdicts(out, updated)
    return Forgotten(len(sources), len(images), mosaics)


def _drop_mosaics(out: Path, labels: Any) -> int:
    """Delete the cluster mosaics that may show a removed image (all of them when a label is unknown)."""
    folder = out / MOSAICS
    if labels is None or not len(labels) or not folder.is_dir():
        return 0
    values = {int(v) for v in labels}
    paths = sorted(folder.glob("cluster_*.png")) if min(values) < 0 else [folder / f"cluster_{v:02d}.png" for v in values]
    existing = [p for p in paths if p.is_file()]
    for path in existing:
        path.unlink()
    return len(existing)
