"""Folder locks: a writer excludes others; readers checking together do not take each other for writers."""

from __future__ import annotations

import fcntl
import os
import threading

from lib.core.locks import LOCK, folder_lock, held_elsewhere


def _hold(folder, mode: int) -> int:
    fd = os.open(folder / LOCK, os.O_RDONLY | os.O_CREAT, 0o666)
    fcntl.flock(fd, mode | fcntl.LOCK_NB)
    return fd


def test_readers_share_a_folder_and_a_job_that_would_write_it_sees_them(tmp_path):
    """Readers probed with an exclusive lock: two checking one folder at once each saw the other as a writer
    (77 and 2387 false answers in 20000 checks each, a review). A job about to write must see readers too (a first
    shared probe did not, and generation replaced a split that was being read)."""
    assert not held_elsewhere(tmp_path)  # no lock file: nothing held
    reader = _hold(tmp_path, fcntl.LOCK_SH)  # another reader, at this moment
    with folder_lock(tmp_path, shared=True) as free:
        assert free  # readers do not exclude each other
    assert held_elsewhere(tmp_path)  # but a writer is told
    os.close(reader)
    assert not held_elsewhere(tmp_path)
    with folder_lock(tmp_path) as held:
        assert held and held_elsewhere(tmp_path)
    writer = _hold(tmp_path, fcntl.LOCK_EX)  # another job, writing
    with folder_lock(tmp_path) as second, folder_lock(tmp_path, shared=True) as read:
        assert not second and not read
    os.close(writer)
    assert not held_elsewhere(tmp_path)


def test_a_writer_waits_out_a_reader_s_check(tmp_path):
    reader = _hold(tmp_path, fcntl.LOCK_SH)
    threading.Timer(0.05, os.close, [reader]).start()  # a check lasts microseconds; this one 50 ms
    with folder_lock(tmp_path) as held:
        assert held


def test_a_read_nested_in_a_read_of_this_process_opens_no_second_descriptor(tmp_path, monkeypatch):
    """On NFS (flock emulated by POSIX locks) closing any descriptor of the lock file drops all of the process's
    locks on it: a check within a read (read_manifest inside PatchDataset) released the reader's lock (a review)."""
    import lib.core.locks as locks

    opened = []
    real_open = locks._open
    monkeypatch.setattr(locks, "_open", lambda *args, **kwargs: opened.append(args) or real_open(*args, **kwargs))
    os.close(_hold(tmp_path, fcntl.LOCK_SH))  # (a lock file, as a job leaves one)
    with folder_lock(tmp_path, shared=True) as outer:
        with folder_lock(tmp_path, shared=True) as inner, folder_lock(tmp_path / ".", shared=True) as again:
            assert outer and inner and again
        assert len(opened) == 1 and held_elsewhere(tmp_path)  # (the probe: a writer would still be refused)
    assert not held_elsewhere(tmp_path) and not locks._held.get(tmp_path.resolve())
