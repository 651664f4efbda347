"""The one atomic write: whole file or previous file, never a half-written one, no temporary left behind."""

from __future__ import annotations

import stat

import pytest

from medtl.atomic import atomic_dir, atomic_open, atomic_path, write_atomic


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_write_atomic_replaces_the_file_whole_with_the_asked_permissions(tmp_path):
    target = tmp_path / "sub" / "out.json"
    write_atomic(target, "first")
    write_atomic(target, b"second", perms=0o600)
    assert target.read_bytes() == b"second"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert _leftovers(target.parent) == []


@pytest.mark.parametrize("opener", ["atomic_open", "atomic_path"])
def test_a_failing_writer_keeps_the_previous_file_and_leaves_no_temporary(tmp_path, opener):
    target = tmp_path / "table.csv"
    target.write_text("old\n")

    with pytest.raises(RuntimeError, match="disk full"):
        if opener == "atomic_open":
            with atomic_open(target, "w") as handle:
                handle.write("new, half")
                raise RuntimeError("disk full")
        else:
            with atomic_path(target) as tmp:
                tmp.write_text("new, half")
                raise RuntimeError("disk full")
    assert target.read_text() == "old\n"
    assert _leftovers(tmp_path) == []


def test_atomic_path_hands_a_library_a_path_beside_the_target(tmp_path):
    target = tmp_path / "model.bin"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        tmp.write_bytes(b"\x00" * 10)
        assert not target.exists()  # nothing visible until the block ends
    assert target.read_bytes() == b"\x00" * 10
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_atomic_open_text_mode_is_utf8_and_refuses_other_modes(tmp_path):
    with atomic_open(tmp_path / "a.txt", "w", newline="") as handle:
        handle.write("Ω\r\n")
    assert (tmp_path / "a.txt").read_bytes() == "Ω\r\n".encode()
    with pytest.raises(ValueError, match="valid: 'wb', 'w'"), atomic_open(tmp_path / "b", "a"):
        pass


def test_atomic_dir_publishes_a_whole_folder_or_nothing(tmp_path):
    out = tmp_path / "packet"
    out.mkdir()  # an empty folder is replaced
    with atomic_dir(out) as build:
        (build / "x").write_text("1")
        assert not (out / "x").exists()
    assert (out / "x").read_text() == "1"

    failed = tmp_path / "failed"
    with pytest.raises(KeyError), atomic_dir(failed) as build:
        (build / "y").write_text("2")
        raise KeyError("boom")
    assert not failed.exists()
    assert _leftovers(tmp_path) == []


def test_atomic_dir_refuses_to_replace_a_folder_with_content(tmp_path):
    out = tmp_path / "kept"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OSError), atomic_dir(out) as build:
        (build / "z").write_text("3")
    assert (out / "keep.txt").read_text() == "mine"
    assert _leftovers(tmp_path) == []
