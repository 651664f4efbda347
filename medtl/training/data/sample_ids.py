"""De-identified sample ids: keyed ids for datasets marked by `medtl data deidentify PATH`.

Sample ids are file paths relative to the dataset (they reach `predictions/test.csv` in MLflow),
and hospital exports name files after patients. A dataset whose root holds `.medtl-deid-ids`
gets keyed ids instead: HMAC-SHA256 of the plain id under `$MEDTL_DEID_KEY`, 32 hex characters,
the same on every machine that has the key; a loader refuses to run without it (never falls back
to paths). The marker travels with the data, so every worker of a sweep behaves alike. The
readable mapping is written only on request (`medtl data splits ... --source-map CSV`). See
docs/privacy.md.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from medtl.atomic import write_atomic
from medtl.training.archive.deid import KEY_ENV, MIN_KEY_BYTES, keyed, path_key
from medtl.training.data.base import DataError

DEID_MARKER = ".medtl-deid-ids"
# Plain id of every keyed id handed out in this process (for `--source-map`, never logged).
_ID_MAP: dict[str, str] = {}


def _env_key() -> bytes:
    key = os.environ.get(KEY_ENV, "").encode()
    if len(key) < MIN_KEY_BYTES:
        raise DataError(
            f"de-identified sample ids need a key: set {KEY_ENV} (at least {MIN_KEY_BYTES} bytes, "
            f"e.g. export {KEY_ENV}=$(openssl rand -hex 32)) on every machine that reads the data"
        )
    return key


def write_deid_marker(root: Path) -> Path:
    """Mark the dataset at `root` for de-identified sample ids under the key in `$MEDTL_DEID_KEY`.

    Raises:
        DataError: no usable key, or `root` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a dataset folder")
    marker = root / DEID_MARKER
    record = {"version": 1, "key_check": keyed(_env_key(), "key-check", "medtl")}
    write_atomic(marker, json.dumps(record))
    return marker


def deid_key(root: Path) -> bytes | None:
    """The key for de-identified sample ids when `root` is marked for them, else None.

    Raises:
        DataError: the dataset is marked but `$MEDTL_DEID_KEY` is missing or is not the marker's key.
    """
    marker = Path(root) / DEID_MARKER
    if not marker.is_file():
        return None
    key = _env_key()
    try:
        expected = json.loads(marker.read_text()).get("key_check")
    except (OSError, ValueError, AttributeError):
        raise DataError(f"{marker} is unreadable; write it again with `medtl data deidentify {root}`") from None
    if expected != keyed(key, "key-check", "medtl"):
        raise DataError(f"{root} was marked for de-identified ids under a different key than ${KEY_ENV}")
    return key


def keyed_sample_ids(key: bytes, ids: Sequence[str]) -> list[str]:
    """The keyed id of each plain sample id, remembered for `sample_id_map`."""
    out = [keyed(key, "sample", i) for i in ids]
    _ID_MAP.update(zip(out, ids, strict=True))
    return out


def keyed_paths(key: bytes, names: Sequence[str]) -> list[str]:
    """File names (relative to the dataset) as keyed hashes, for notes that would otherwise name them."""
    return [path_key(key, n) for n in names]


def sample_id_map() -> dict[str, str]:
    """Keyed sample id -> plain id for every de-identified sample loaded in this process."""
    return dict(_ID_MAP)
