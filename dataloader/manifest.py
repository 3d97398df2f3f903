"""The layout of a patch folder, written by ``python -m lib.prepare`` and read by training: ``images/``, ``masks/``,
``manifest.csv`` (one row per patch) and ``sources.json``. No torch here, so preparation starts without it."""

from __future__ import annotations

import csv
from pathlib import Path

from lib.core.errors import UserError
from lib.core.jobs import check_finished

MANIFEST = "manifest.csv"
MANIFEST_FIELDS = ["file", "source", "top", "left", "flip", "rot90"]
SOURCES = "sources.json"


def mask_file(image_file: str) -> str:
    """The mask of patch ``images/<image_file>`` is ``masks/<stem>.png`` (masks are always palette PNGs)."""
    stem, dot, _ = image_file.rpartition(".")
    return f"{stem if dot else image_file}.png"


def read_manifest(folder: str | Path) -> list[dict]:
    """The rows of ``folder/manifest.csv`` (file, source, top, left, flip, rot90).

    Raises:
        UserError: the folder is missing or empty, preparation was interrupted, or the manifest is missing or malformed.
    """
    folder = Path(folder)
    try:
        return _read_rows(folder)
    except OSError as err:  # a folder or manifest without read rights
        raise UserError(f"{err.filename or folder}: cannot read the patch folder ({err.strerror or err})") from None


def _read_rows(folder: Path) -> list[dict]:
    if not folder.is_dir():
        found = "is not a folder" if folder.exists() else "not found"
        raise UserError(f"{folder}: patch folder {found} (run python -m lib.prepare first)")
    check_finished(folder)
    path = folder / MANIFEST
    if not path.is_file():
        if not any(folder.iterdir()):
            raise UserError(f"{folder}: patch folder is empty (run python -m lib.prepare first)")
        raise UserError(f"{path}: manifest not found (expected a CSV with columns {','.join(MANIFEST_FIELDS)})")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"file", "source"} - set(reader.fieldnames or [])
        if missing:
            raise UserError(f"{path}: manifest lacks column(s) {sorted(missing)}")
        rows = list(reader)
    if not rows:
        raise UserError(f"{path}: manifest lists no patches")
    return rows
