"""Atomic file writes: write to a temporary name in the same folder, then rename, so no reader ever sees half a file."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import stat
import tempfile
import threading
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import IO

from lib.core.errors import UserError, write_error

_deferred = threading.local()  # inside deferred_sync(): this thread's atomic writes skip their own fsync


def _file_mode(path: Path) -> int:
    """The permissions ``open(path, "w")`` would leave: those of the file it replaces, else 0666 less the umask."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary file name beside ``path`` for a writer that opens files by name (tifffile, zarr); on success the
    file is synced and replaces ``path`` in one rename, on error it is removed.

    Raises:
        UserError: the folder is missing, not writable, or the disk is full (naming the file); an error of the system
            about another file, raised inside the block, names that file and the system's reason instead.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{_temporary_stem(path.name)}.", suffix=".tmp")
    except OSError as err:
        raise write_error(path, err) from None
    try:
        os.fchmod(fd, _file_mode(path))  # mkstemp's 0600 would hide every output from other users
        os.close(fd)
        yield Path(tmp)
        _settle(Path(tmp))
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        # an error about another file (the writer's input, a scratch file) is not a failure to write this one
        other = None if err.filename is None else os.path.abspath(os.fsdecode(err.filename))
        if other is not None and other not in (os.path.abspath(tmp), os.path.abspath(path)):
            raise UserError(f"{other}: {err.strerror or err}") from None
        raise write_error(path, err) from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def temporary_name(path: Path) -> Path:
    """A fresh name beside ``path`` of the form :func:`atomic_path`'s temporaries have (``.<name>.<8 random
    characters>.tmp``), for a writer that must create the file itself (a hard link): one a kill leaves is found by
    :func:`remove_stale_temporaries`."""
    return path.with_name(f".{_temporary_stem(path.name)}.{secrets.token_hex(4)}.tmp")


# a temporary of atomic_path (mkstemp's 8 random characters) or temporary_name, for the file whose
# _temporary_stem is group 1
_TEMPORARY = re.compile(r"\.(.+)\.[a-z0-9_]{8}\.tmp")
_NAME_BYTES = 255  # the longest file name of the common file systems (ext4, XFS, APFS, NTFS in UTF-16 units)


def _fitted(name: str, room: int) -> str:
    """``name`` if it takes at most ``room`` bytes, else cut to end in ``~`` and 8 hex digits of its digest within
    them, so distinct names stay distinct."""
    raw = name.encode()
    if len(raw) <= room:
        return name
    return raw[:room - 9].decode(errors="ignore") + "~" + hashlib.sha1(raw).hexdigest()[:8]


def hidden_name(name: str, suffix: str) -> str:
    """``.<name><suffix>``, the name of a temporary of the file ``name``, within the 255 bytes a file name may take
    (whole, a name of 242 bytes or more made a temporary too long to create, and its write failed)."""
    return f".{_fitted(name, _NAME_BYTES - len('.') - len(suffix.encode()))}{suffix}"


def _temporary_stem(name: str) -> str:
    """The part of a file's name that its temporaries carry, within the room their ``.`` and ``.<8 random
    characters>.tmp`` leave."""
    return _fitted(name, _NAME_BYTES - len(".") - len(".12345678.tmp"))


def remove_stale_temporaries(path: str | Path) -> int:
    """Remove the temporary files that writes of ``path`` by :func:`atomic_path` left when killed before their rename.

    Their names are random, so no later write reuses them, and a large mask's is as large as the part written. Call
    it only where no other live process writes ``path`` (one process owns each output of a run). Returns how many.
    """
    path = Path(path)
    return remove_stale_temporaries_in(path.parent, {path.name})


def remove_stale_temporaries_in(folder: str | Path, names: Collection[str] | None) -> int:
    """:func:`remove_stale_temporaries` for the files ``names`` of one folder (None: of any file), in one listing
    of it: a run writing thousands of files into one folder would otherwise list it once per file. A missing folder
    holds none. Returns how many were removed."""
    removed = 0
    stems = None if names is None else {_temporary_stem(name) for name in names}
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return 0
    for entry in entries:
        match = _TEMPORARY.fullmatch(entry.name)
        if match and (stems is None or match.group(1) in stems) and entry.is_file():
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed += 1
    return removed


def _settle(tmp: Path) -> None:
    """Make a finished temporary file durable before its rename (unless inside :func:`deferred_sync`)."""
    if getattr(_deferred, "active", False):
        return
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())


@contextlib.contextmanager
def deferred_sync() -> Iterator[None]:
    """Atomic writes of this thread inside the block skip their own fsync; one ``os.sync()`` at its end makes them
    durable together. For jobs of thousands of small files (patches), where an fsync each cost most of the time;
    a kill still leaves only whole files, since the rename alone guarantees that. No sync follows a block left by an
    exception: the job is unfinished and a rerun rewrites what it needs.
    """
    outer = getattr(_deferred, "active", False)
    _deferred.active = True
    try:
        yield
    finally:
        _deferred.active = outer
    if not outer and hasattr(os, "sync"):  # where there is none (Windows), the writes are left to the system
        os.sync()


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success it replaces ``path`` in one rename, on error it is removed.

    Args:
        path: the final file.
        mode: ``"wb"`` or ``"w"``.

    Raises:
        UserError: the folder is missing, not writable, or the disk is full (naming the file).
    """
    with atomic_path(path) as tmp, open(tmp, mode) as handle:
        yield handle
        handle.flush()


def make_folder(path: str | Path) -> Path:
    """Create an output folder (and its parents) if missing.

    Raises:
        UserError: it cannot be created (a file in the way, no permission), naming the folder.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{path}: cannot create the output folder ({err.strerror or err})") from None
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_open`)."""
    atomic_write_bytes(path, text.encode("utf-8"))
