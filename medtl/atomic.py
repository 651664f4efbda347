"""The one way medtl replaces a file: a temporary file beside it, fsync, rename; the temporary removed on failure.

A reader (another process, a crashed run's resume, a user's tool) sees either the old file or the whole new
one, never a half-written file, and a failed write leaves no `.tmp` behind. Every writer in medtl goes
through this module (tests/test_boundaries.py checks that no other module calls `os.replace`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_dir", "atomic_open", "atomic_path", "write_atomic"]


def _fsync_dir(folder: Path) -> None:
    """Make a rename inside `folder` durable (best effort where a folder cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    with contextlib.suppress(OSError):
        os.fsync(fd)
    os.close(fd)


def _temporary(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    return Path(tmp)


def _publish(tmp: Path, path: Path, perms: int) -> None:
    os.chmod(tmp, perms)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_path(path: str | Path, *, perms: int = 0o644) -> Iterator[Path]:
    """A temporary path beside `path` for a library that writes to a path (torch.save, to_parquet, PIL).

    On a clean exit the file is fsynced and renamed onto `path` with permissions `perms`; on an exception
    it is removed and the exception propagates, so `path` keeps its previous content.
    """
    path = Path(path)
    tmp = _temporary(path)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        _publish(tmp, path, perms)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(
    path: str | Path, mode: str = "wb", *, perms: int = 0o644, newline: str | None = None
) -> Iterator[IO[Any]]:
    """An open handle on a temporary file that becomes `path` when the block ends without an exception.

    Args:
        path: the file to replace.
        mode: "wb" or "w" (text, UTF-8).
        perms: permissions of the published file (0o600 for files only their owner may read).
        newline: passed to `open` in text mode (`""` for the csv module).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open mode {mode!r}; valid: 'wb', 'w'")
    path = Path(path)
    tmp = _temporary(path)
    try:
        kwargs: dict[str, Any] = {} if mode == "wb" else {"encoding": "utf-8", "newline": newline}
        with open(tmp, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        _publish(tmp, path, perms)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: str | Path, data: bytes | str, *, perms: int = 0o644) -> None:
    """Replace `path` with `data` (str is written as UTF-8) atomically and durably."""
    with atomic_open(path, "wb", perms=perms) as handle:
        handle.write(data.encode() if isinstance(data, str) else data)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """A temporary folder beside `path` that becomes `path` when the block ends without an exception.

    `path` must not exist, or be an empty folder (it is replaced). On an exception the temporary folder
    and everything in it are removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield build
        if path.exists():
            path.rmdir()  # only an empty folder; OSError otherwise, and the build is removed
        os.replace(build, path)
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
