"""Folder locks: a job that writes a folder holds an exclusive ``flock`` on the folder's hidden ``.job.lock`` while it
runs; a reader, or a job about to start, asks whether one is held with a shared lock taken and released at once, so
that readers checking together do not take each other for writers. The lock goes with the process however it ends.
It is advisory: where the file system has no locks (some network mounts), the system has no ``fcntl``, or the lock
file is not this user's to read, nothing is locked and jobs run unguarded.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX
    fcntl = None

from lib.core.errors import write_error

LOCK = ".job.lock"  # kept after the job: removing it would let a job waiting on the old file and a new one both lock
# a writer's tries before it gives up: a reader's shared lock lasts microseconds, a writer's the whole job
_TRIES, _PAUSE_S = 20, 0.01


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[bool]:
    """Hold ``folder``'s lock exclusively while the body runs (the lock file made if missing).

    Yields:
        False where another job holds it (the body should refuse the folder, holding nothing), True otherwise.

    Raises:
        UserError: the lock file cannot be made (a read-only folder, a full disk).
    """
    fd = _open(folder, create=True)
    try:
        for _ in range(_TRIES):
            if _take(fd, shared=False):
                break
            time.sleep(_PAUSE_S)
        else:
            yield False
            return
        yield True
    finally:
        if fd is not None:
            os.close(fd)  # (releases the lock)


def held_elsewhere(folder: str | Path) -> bool:
    """Whether a job holds ``folder``'s lock now: a shared lock taken and released at once where it is free."""
    fd = _open(Path(folder), create=False)
    try:
        return not _take(fd, shared=True)
    finally:
        if fd is not None:
            os.close(fd)


def _open(folder: Path, create: bool) -> int | None:
    """A read-only descriptor of the lock file (flock needs no more, and another user of a shared folder may lock a
    file they cannot write), or None where it cannot be had: missing and not ``create``, or not this user's to read.

    Raises:
        UserError: it cannot be made.
    """
    try:
        return os.open(folder / LOCK, os.O_RDONLY | (os.O_CREAT if create else 0), 0o666)
    except OSError as err:
        if isinstance(err, PermissionError) or (isinstance(err, FileNotFoundError) and not create):
            return None
        raise write_error(folder / LOCK, err) from None


def _take(fd: int | None, shared: bool) -> bool:
    """Lock ``fd`` without waiting: False where another holds it (exclusively, or at all for an exclusive lock); True
    where it is taken, or no lock can be had (see the module docstring)."""
    if fd is None or fcntl is None:
        return True
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        pass
    return True
