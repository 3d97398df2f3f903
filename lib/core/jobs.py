"""Output folders that survive a kill: a marker says a folder is being written or is complete.

``.in_progress.json`` is written before the first file and replaced by ``.complete.json`` after the last. Every file in
between is written atomically, so a killed job leaves only whole files; rerunning the same job (same signature) resumes
it, and a finished folder is never overwritten or mixed into without ``overwrite``. While a job runs it holds the
folder's lock (:mod:`lib.core.locks`), so that a second job started on it meanwhile is refused (two prepare runs
started together, with different seeds, left one's patches under the other's marker), and so are its readers.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

from lib.core.atomic import atomic_write_text, make_folder, remove_stale_temporaries_in
from lib.core.errors import UserError
from lib.core.locks import LOCK, folder_lock, held_elsewhere

IN_PROGRESS = ".in_progress.json"
COMPLETE = ".complete.json"


def is_complete(folder: str | Path) -> bool:
    """Whether a job finished writing ``folder``."""
    return (Path(folder) / COMPLETE).is_file()


def finished_signature(folder: str | Path) -> dict | None:
    """What the job that finished ``folder`` was run with (its completion marker's signature); None where no job of
    this project finished it, or its marker cannot be read."""
    return _read(Path(folder) / COMPLETE)


def _clear(folder: Path, owned: list[str]) -> None:
    for pattern in owned + [IN_PROGRESS, COMPLETE]:
        for path in folder.glob(pattern):
            if path.is_file():
                path.unlink()


def check_apart(folder: str | Path, source: str | Path, subfolders: tuple[str, ...] = ("images", "masks"),
                flag: str = "--out") -> None:
    """Refuse an output folder that is the job's source folder or lies inside it, or one of whose ``subfolders`` is
    (through a link) one of the source's: ``overwrite`` would remove the source's files that match the job's
    patterns, and the job's files would mix into the data.

    Raises:
        UserError: naming both folders.
    """
    outs = {Path(folder).resolve(), *((Path(folder) / sub).resolve() for sub in subfolders)}
    sources = {Path(source).resolve(), *((Path(source) / sub).resolve() for sub in subfolders)}
    if any(out == src or src in out.parents for out in outs for src in sources):
        raise UserError(f"{flag} {folder}: is the source folder {source}, lies inside it, or shares a folder with it "
                        "through a link (expected an output folder apart from the data)")


def check_claimable(folder: str | Path, signature: dict, overwrite: bool) -> None:
    """Refuse ``folder`` as :func:`claimed` would, writing nothing: a job calls it before reading its inputs, so that
    a folder it may not write is refused at once rather than after minutes of checks.

    Raises:
        UserError: ``folder`` is a file; or another job is reading or writing it now (whatever its settings: a
            marker that says in progress is then no interrupted job's); or it holds files but no job's marker, whatever
            ``overwrite`` says (the user's own files, which ``overwrite`` would remove); or the output of another
            command (the ``job`` of the signatures), whatever ``overwrite`` says (its files are not the ones this
            job would clear); or it holds a finished job, or an interrupted one of another ``signature``, and
            ``overwrite`` is false (one of the same ``signature`` is resumed).
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder}: exists and is not a folder")
    if not folder.is_dir():
        return
    if held_elsewhere(folder):  # whatever the markers say: it is no interrupted job
        raise _in_use(folder)
    _check_markers(folder, signature, overwrite)


def _check_markers(folder: Path, signature: dict, overwrite: bool) -> None:
    """:func:`check_claimable`'s judgement of an existing folder by its files and markers."""
    marker = folder / IN_PROGRESS
    if not marker.is_file() and not is_complete(folder):
        found = next(_visible_files(folder), None)
        if found is None:  # empty, or only empty folders and hidden files (.DS_Store, a killed write's temporary)
            return
        # the user's own files, maybe the data itself (a notebook's overwrite = True took a data folder's masks)
        raise UserError(f"{folder}: output folder holds files that no job of this project wrote "
                        f"({found.relative_to(folder)}, and no {COMPLETE} or {IN_PROGRESS}); choose another folder, "
                        "or empty this one (--overwrite replaces only a job's folder)")
    previous = _read(marker if marker.is_file() else folder / COMPLETE) or {}
    job = signature.get("job")
    if previous.get("job", job) != job:  # (a marker written before jobs were named names none)
        raise UserError(f"{folder}: output folder holds the output of {previous['job']}, not of {job}; choose "
                        "another folder")
    if overwrite or (marker.is_file() and previous == json.loads(json.dumps(signature))):
        return
    state = "holds a finished job" if is_complete(folder) else "holds an interrupted job of other settings"
    raise UserError(f"{folder}: output folder {state}; pass --overwrite (overwrite=True from Python or a notebook) "
                    "to replace it")


def _visible_files(folder: Path) -> Iterator[Path]:
    """The files under ``folder`` whose path has no hidden part (``.DS_Store``, ``.x.png.1a2b3c4d.tmp``)."""
    for path in folder.rglob("*"):
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts):
            yield path


@contextlib.contextmanager
def claimed(folder: str | Path, signature: dict, owned: list[str], overwrite: bool) -> Iterator[bool]:
    """Run a job in ``folder``: claim it for the job described by ``signature``, hold it while the body runs, and mark
    it complete when the body returns (an exception leaves it in progress, to be resumed).

    Args:
        folder: the output folder (created if missing).
        signature: what the job writes (parameters, seed); a resumed job must have the same.
        owned: glob patterns, relative to ``folder``, of the files the job writes (removed by ``overwrite``).
        overwrite: replace what an earlier job wrote in the folder (never a folder no job wrote).

    Yields:
        True when an interrupted job with the same signature is resumed (existing files are kept).

    Raises:
        UserError: another job is reading or writing the folder now; or see :func:`check_claimable`.
    """
    folder = Path(folder)
    check_claimable(folder, signature, overwrite)  # before the folder is made: a refused job makes none
    make_folder(folder)
    with folder_lock(folder) as held:
        if not held:
            raise _in_use(folder)
        yield _start(folder, signature, owned, overwrite)
        (folder / IN_PROGRESS).replace(folder / COMPLETE)  # atomically: in progress, then complete


def _in_use(folder: Path, doing: str = "reading or writing", who: str | None = None) -> UserError:
    return UserError(f"{folder}: {who or 'another job'} is {doing} this folder now (it holds {LOCK}); wait for it to "
                     "end, or choose another folder")


def check_finished(folder: str | Path) -> None:
    """Refuse to read a folder that a job of this project has not finished (see :func:`reading`), holding nothing.

    Raises:
        UserError: as :func:`reading`.
    """
    with reading(folder):
        pass


@contextlib.contextmanager
def reading(folder: str | Path) -> Iterator[None]:
    """Read ``folder`` holding it (a shared lock) against a job that would rewrite it meanwhile, once it is known
    finished: not being written now, nor left by an interrupted job (some of its files are missing). A folder
    without markers or lock file (the user's own data) passes, unguarded.

    Raises:
        UserError: naming the folder and the command to wait for or to rerun.
    """
    folder = Path(folder)
    marker = folder / IN_PROGRESS
    with folder_lock(folder, shared=True) as free:
        job = (_read(marker) or {}).get("job") if marker.is_file() else None
        command = f"python -m {job}" if isinstance(job, str) else None  # (older markers name none)
        if not free:  # whatever the markers say: --overwrite clears the completion marker first
            raise _in_use(folder, "writing", command)
        if marker.is_file():
            raise UserError(f"{folder}: {command or 'the job that wrote it'} was interrupted writing this folder; "
                            "rerun it to finish")
        yield


def _start(folder: Path, signature: dict, owned: list[str], overwrite: bool) -> bool:
    """Claim the locked ``folder``: checked again (a job may have ended meanwhile), its killed writes' temporaries
    removed, cleared with ``overwrite``, and marked in progress. True when an interrupted job is resumed."""
    _check_markers(folder, signature, overwrite)  # (not check_claimable: its probe of the lock would meet ours)
    marker = folder / IN_PROGRESS
    for parent in {(folder / pattern).parent for pattern in owned}:
        # temporary files of the atomic writes a kill interrupted (not any hidden file of the user's)
        remove_stale_temporaries_in(parent, None)
    resumed = False
    if overwrite:
        _clear(folder, owned)
    elif marker.is_file():  # the same signature (check_claimable refused another in a folder with files)
        resumed = True
    atomic_write_text(marker, json.dumps(signature, indent=1, sort_keys=True))
    return resumed


def _read(path: Path) -> dict | None:
    """A marker's signature; None where it is unreadable, or no JSON object (a marker edited or half written by
    hand)."""
    try:
        signature = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return signature if isinstance(signature, dict) else None
