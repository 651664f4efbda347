"""Preprocessing cache: decoded, resized uint8 arrays stored once and memory-mapped by every run.

An entry is a folder `$MEDTL_CACHE_DIR/<kind>/<key>/` holding one `.npy` per array and a
`meta.json` written last. The key hashes the dataset kind, the source digest (relative paths, sizes
and modification times of the source files), the image size and the loader's options, so a changed
file, another copy of a dataset or another size never reuses an entry. Files are written to a
temporary name in the same folder and moved into place (`medtl.atomic`); a lock file makes a
second worker wait for the first and then reuse its entry. `MEDTL_CACHE_DIR=off` disables caching.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medtl.atomic import atomic_open, write_atomic

log = logging.getLogger(__name__)

CACHE_VERSION = 1
_DISABLED = {"off", "none", "0", "false", "no"}


@dataclass(frozen=True)
class CacheEntry:
    """Arrays of one decoded dataset (memory maps once cached) and JSON-able metadata."""

    arrays: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)


def cache_root() -> Path | None:
    """The cache folder: `$MEDTL_CACHE_DIR`, default `~/.cache/medtl`; None when set to `off`."""
    raw = os.environ.get("MEDTL_CACHE_DIR", "").strip()
    if raw.lower() in _DISABLED:
        return None
    return Path(raw).expanduser() if raw else Path.home() / ".cache" / "medtl"


def source_digest(root: Path, files: Iterable[Path]) -> str:
    """Cheap fingerprint of source files: a hash of relative paths, sizes and mtimes (no contents).

    Args:
        root: folder the paths are made relative to.
        files: the files a loader reads; missing ones are hashed as missing.

    Returns:
        16 hex characters.
    """
    entries = []
    for path in files:
        try:
            rel = path.relative_to(root).as_posix()
        except ValueError:
            rel = path.as_posix()
        try:
            st = path.stat()
            entries.append(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}")
        except OSError:
            entries.append(f"{rel}\0missing")
    h = hashlib.sha256()
    for line in sorted(entries):
        h.update(line.encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def entry_key(kind: str, params: dict[str, Any]) -> str:
    """Stable hash of a dataset kind and a loader's options (must include the source digest)."""
    blob = json.dumps({"v": CACHE_VERSION, "kind": kind, **params}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: atomic replaces alone keep entries whole
        yield
        return
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _load_array(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError:  # an empty array cannot be memory-mapped
        return np.load(path, allow_pickle=False)


def _read(folder: Path) -> CacheEntry | None:
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        arrays = {name: _load_array(folder / f"{name}.npy") for name in meta["arrays"]}
    except (OSError, ValueError, KeyError) as exc:
        log.warning("cache entry %s unreadable (%s); rebuilding", folder, exc)
        return None
    return CacheEntry(arrays=arrays, meta=meta["meta"])


def _write(folder: Path, entry: CacheEntry, params: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in entry.arrays.items():
        with atomic_open(folder / f"{name}.npy") as handle:
            np.save(handle, np.ascontiguousarray(array))
    record = {"arrays": sorted(entry.arrays), "meta": entry.meta, "params": params}
    write_atomic(folder / "meta.json", json.dumps(record, sort_keys=True, default=str))


def _prune_stale(kind_dir: Path, keep: Path, params: dict[str, Any]) -> None:
    """Remove entries of the same source and size whose source digest differs (older versions)."""
    for other in kind_dir.iterdir():
        if other == keep or not other.is_dir():
            continue
        try:
            old = json.loads((other / "meta.json").read_text())["params"]
        except (OSError, ValueError, KeyError):
            continue
        same_place = old.get("source") == params.get("source") and old.get("size") == params.get(
            "size"
        )
        if same_place and old.get("digest") != params.get("digest"):
            shutil.rmtree(other, ignore_errors=True)


def load_or_build(
    kind: str, params: dict[str, Any], build: Callable[[], CacheEntry]
) -> tuple[CacheEntry, bool]:
    """Return the cached entry for (`kind`, `params`), building and storing it on a miss.

    Args:
        kind: dataset kind, e.g. "grazpedwri"; names a sub-folder of the cache.
        params: everything the arrays depend on; must hold `source`, `digest` and `size`.
        build: decodes the source files into a CacheEntry (in-memory arrays).

    Returns:
        (entry, hit): arrays memory-mapped read-only from the cache, and whether it was a hit.
        With the cache disabled the freshly built entry is returned and `hit` is False.
    """
    root = cache_root()
    if root is None:
        return build(), False
    kind_dir = root / kind
    folder = kind_dir / entry_key(kind, params)
    found = _read(folder)
    if found is not None:
        return found, True
    kind_dir.mkdir(parents=True, exist_ok=True)
    with _locked(kind_dir / f".{folder.name}.lock"):
        found = _read(folder)  # another worker may have filled it while we waited
        if found is not None:
            return found, True
        entry = build()
        _write(folder, entry, params)
        _prune_stale(kind_dir, folder, params)
    stored = _read(folder)
    if stored is None:
        return entry, False
    return stored, False
