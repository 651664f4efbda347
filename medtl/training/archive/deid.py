"""The de-identification key and the keyed hashes that stand for identifiers in ingest's output.

Patient, study and series keys, shard names, PNG names and source keys are HMAC-SHA256 digests
under a secret key (`MEDTL_DEID_KEY`, a key file outside the output folder that only its owner can
read, or an in-memory ephemeral key). See docs/privacy.md.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from medtl.errors import UserError

KEY_ENV = "MEDTL_DEID_KEY"
MIN_KEY_BYTES = 16


class DeidKeyError(UserError):
    """No usable de-identification key, or one that does not match the output folder."""


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


def path_key(key: bytes, rel: str) -> str:
    """The keyed hash that stands for a source path (relative to SRC) in everything written."""
    return keyed(key, "path", rel)
