"""Atomic writes leave files with the permissions a plain open() would: 0666 less the umask, or the replaced file's;
inside ``deferred_sync`` they skip their own fsync and one sync follows the block."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

import lib.core.atomic as atomic
from lib.core.atomic import atomic_write_bytes, atomic_write_text, deferred_sync


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


@pytest.fixture
def syncs(monkeypatch):
    """Counts of os.fsync and os.sync calls made through lib.core.atomic."""
    counts = {"fsync": 0, "sync": 0}
    real_fsync = os.fsync

    def fsync(fd):
        counts["fsync"] += 1
        real_fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    monkeypatch.setattr(atomic.os, "sync", lambda: counts.__setitem__("sync", counts["sync"] + 1))
    return counts


@pytest.mark.parametrize("files", [1, 5])
def test_deferred_writes_skip_their_fsync_and_sync_once_at_the_end(tmp_path, syncs, files):
    with deferred_sync():
        with deferred_sync():  # nested: still one sync, at the outer end
            for k in range(files):
                atomic_write_text(tmp_path / f"f{k}.txt", str(k))
        assert syncs == {"fsync": 0, "sync": 0}
        assert sorted(p.name for p in tmp_path.iterdir()) == [f"f{k}.txt" for k in range(files)]
    assert syncs == {"fsync": 0, "sync": 1}
    atomic_write_text(tmp_path / "after.txt", "x")  # outside the block: durable on its own again
    assert syncs == {"fsync": 1, "sync": 1}


def test_deferring_is_per_thread_and_a_failed_block_does_not_sync(tmp_path, syncs):
    with deferred_sync():
        other = threading.Thread(target=atomic_write_text, args=(tmp_path / "other.txt", "x"))
        other.start()
        other.join()
    assert syncs == {"fsync": 1, "sync": 1}
    with pytest.raises(RuntimeError), deferred_sync():
        raise RuntimeError("failed job")
    assert syncs == {"fsync": 1, "sync": 1}


# (file present in the folder, removed): temporaries of the named files go, whatever else is there stays
STALE = [
    (".a.png.k3j_9x0a.tmp", True),  # a temporary of a.png (mkstemp's 8 characters)
    (".b.tif.0123abcd.tmp", True),  # one of b.tif
    (".a.png.v2.png.zzzzzzzz.tmp", False),  # of another file, a.png.v2.png
    (".c.png.k3j_9x0a.tmp", False),  # of a file not named
    (".a.png.notours.tmp", False),  # 7 characters: not a temporary of ours
    ("a.png", False),  # the file itself
]


def test_stale_temporaries_of_many_files_go_in_one_listing(tmp_path, monkeypatch):
    for name, _ in STALE:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / ".b.tif.ffffffff.tmp").mkdir()  # a folder of that name is no temporary file
    listings = []
    real_scandir = os.scandir
    monkeypatch.setattr(os, "scandir", lambda path: listings.append(path) or real_scandir(path))
    assert atomic.remove_stale_temporaries_in(tmp_path, {"a.png", "b.tif"}) == 2
    assert listings == [tmp_path]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [".b.tif.ffffffff.tmp"] + [name for name, removed in STALE if not removed])
    assert atomic.remove_stale_temporaries_in(tmp_path / "missing", {"a.png"}) == 0


def _fill_disk(tmp: Path) -> None:
    raise OSError(28, "No space left on device")


def _fill_disk_at_the_temporary(tmp: Path) -> None:
    raise OSError(28, "No space left on device", str(tmp))


def _read_a_missing_input(tmp: Path) -> None:
    open(tmp.parent / "missing_input.png", "rb")


def _fill_disk_at_the_output(tmp: Path) -> None:
    raise OSError(28, "No space left on device", str(tmp.parent / "out.tif"))


def _fill_disk_at_the_temporary_spelt_relatively(tmp: Path) -> None:
    raise OSError(28, "No space left on device", os.path.relpath(tmp))


@pytest.mark.parametrize("body, message", [
    (_fill_disk, r"out\.tif: cannot write \(No space left on device\)$"),
    (_fill_disk_at_the_temporary, r"out\.tif: cannot write \(No space left on device\)$"),
    (_fill_disk_at_the_output, r"out\.tif: cannot write \(No space left on device\)$"),
    (_fill_disk_at_the_temporary_spelt_relatively, r"out\.tif: cannot write \(No space left on device\)$"),
    # an error about another file inside the block is not this file's write failing: it names that file
    (_read_a_missing_input, r"missing_input\.png: No such file or directory$"),
])
def test_an_error_inside_the_block_names_the_file_it_is_about_and_leaves_nothing(tmp_path, body, message):
    (tmp_path / "out.tif").write_bytes(b"old")
    with pytest.raises(atomic.UserError, match=message), atomic.atomic_path(tmp_path / "out.tif") as tmp:
        tmp.write_bytes(b"half")
        body(tmp)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tif"]
    assert (tmp_path / "out.tif").read_bytes() == b"old"


@pytest.mark.parametrize("name", ["a" * 251 + ".png", "é" * 125 + ".tif", "x.png"])
def test_a_file_of_the_longest_name_is_written_and_its_stale_temporaries_found(tmp_path, name):
    """A temporary took the whole name and 14 bytes more: a name of 242 bytes or more could not be written."""
    atomic_write_text(tmp_path / name, "whole")
    assert (tmp_path / name).read_text() == "whole" and os.listdir(tmp_path) == [name]
    left = atomic.temporary_name(tmp_path / name)  # as a kill between creating and renaming it leaves it
    left.write_text("part")
    assert len(left.name.encode()) <= 255
    assert atomic.remove_stale_temporaries(tmp_path / name) == 1 and os.listdir(tmp_path) == [name]


def test_long_names_that_share_their_start_have_temporaries_apart():
    first, second = "a" * 300 + "1.png", "a" * 300 + "2.png"
    assert atomic.hidden_name(first, ".tmp") != atomic.hidden_name(second, ".tmp")
    assert len(atomic.hidden_name(first, ".tmp").encode()) == 255
