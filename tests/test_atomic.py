"""Atomic writes leave files with the permissions a plain open() would: 0666 less the umask, or the replaced file's."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from lib.core.atomic import atomic_write_bytes, atomic_write_text


@pytest.fixture
def umask():
    """Set the process umask for one test, then restore it."""
    saved = os.umask(0o022)
    os.umask(saved)
    yield lambda value: os.umask(value)
    os.umask(saved)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600), (0o000, 0o666)])
@pytest.mark.parametrize("write", [atomic_write_bytes, atomic_write_text])
def test_a_new_file_gets_0666_less_the_umask(tmp_path, umask, mask, expected, write):
    umask(mask)
    path = tmp_path / "out.bin"
    write(path, b"data" if write is atomic_write_bytes else "data")
    assert mode(path) == expected
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]  # no temporary file left


@pytest.mark.parametrize("existing", [0o640, 0o600, 0o664])
def test_a_replaced_file_keeps_its_permissions(tmp_path, umask, existing):
    umask(0o022)
    path = tmp_path / "out.txt"
    path.write_text("old")
    path.chmod(existing)
    atomic_write_text(path, "new")
    assert path.read_text() == "new" and mode(path) == existing
