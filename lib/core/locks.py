"""Folder locks: a job that writes a folder holds an exclusive ``flock`` on the folder's hidden ``.job.lock`` while it
runs, and a job that reads one a shared lock while it reads, so that readers do not exclude each other but a writer
is refused while anyone reads (it cleared the files of a folder being read); a job about to start asks whether anyone
holds it with an exclusive lock taken and released at once (after a writer's retries). The lock goes with the process
however it ends. It is advisory: where the file system has no locks (some network mounts), the system has no
``fcntl``, or the lock file is not this user's to read, nothing is locked and jobs run unguarded.
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
# the folders this process holds a lock on, and how many times: a reader nested in another (a check within a read)
# does not open the lock file again, since on NFS, where flock is emulated by POSIX locks, closing any descriptor of
# a file drops every lock the process holds on it
_held: dict[Path, int] = {}


@contextlib.contextmanager
def folder_lock(folder: Path, shared: bool = False, create: bool | None = None) -> Iterator[bool]:
    """Hold ``folder``'s lock while the body runs: exclusively to write the folder (the lock file made if missing,
    unless ``create`` is False), or shared to read it (readers do not exclude each other; a folder without a lock
    file is not locked).

    Yields:
        False where another job holds it (exclusively, or at all for an exclusive lock) after retries: the body should
        refuse the folder, holding nothing. True otherwise.

    Raises:
        UserError: the lock file cannot be made (a read-only folder, a full disk).
    """
    key = Path(folder).resolve()
    if shared and _held.get(key):  # held by this process already: not opened again (see _held)
        _held[key] += 1
        try:
            yield True
        finally:
            _held[key] -= 1
        return
    fd = _open(folder, create=not shared if create is None else create)
    try:
        for _ in range(_TRIES):
            if _take(fd, shared):
                break
            time.sleep(_PAUSE_S)
        else:
            yield False
            return
        _held[key] = _held.get(key, 0) + 1
        try:
            yield True
        finally:
            _held[key] -= 1
    finally:
        if fd is not None:
            os.close(fd)  # (releases the lock)


def held_elsewhere(folder: str | Path) -> bool:
    """Whether another job reads or writes ``folder`` now: its lock taken exclusively and released at once where it
    is free (after the retries a writer makes, so that two such checks at once do not refuse each other)."""
    with folder_lock(Path(folder), shared=False, create=False) as free:
        return not free


def _open(folder: Path, create: bool) -> int | None:
    """A descriptor of the lock file: read-write where this user may write it (an exclusive flock on NFS needs it),
    else read-only (enough elsewhere, and another user of a shared folder may lock a file they cannot write); None
    where it cannot be had (missing and not ``create``, not this user's to read, a read-only or missing folder).

    Raises:
        UserError: it cannot be made where ``create``.
    """
    path = folder / LOCK
    try:
        return os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o666)
    except OSError as err:
        if create and not isinstance(err, PermissionError):  # a full disk, a read-only file system
            raise write_error(path, err) from None
    try:
        return os.open(path, os.O_RDONLY)
    except OSError:
        return None


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
