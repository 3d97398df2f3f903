"""A patch folder (images/, masks/, manifest.csv) decoded once into memory as uint8 tensors."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from lib.errors import UserError
from lib.imageio import read_image, read_mask
from lib.jobs import IN_PROGRESS

MANIFEST = "manifest.csv"


def read_manifest(folder: str | Path) -> list[dict]:
    """The rows of ``folder/manifest.csv`` (file, source, top, left, flip, rot90).

    Raises:
        UserError: the folder is missing or empty, preparation was interrupted, or the manifest is missing or malformed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: patch folder not found (run python -m lib.prepare first)")
    if (folder / IN_PROGRESS).exists():
        raise UserError(f"{folder}: patch preparation was interrupted; rerun python -m lib.prepare to finish it")
    path = folder / MANIFEST
    if not path.is_file():
        if not any(folder.iterdir()):
            raise UserError(f"{folder}: patch folder is empty (run python -m lib.prepare first)")
        raise UserError(f"{path}: manifest not found (expected a CSV with columns file,source,top,left,flip)")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"file", "source"} - set(reader.fieldnames or [])
        if missing:
            raise UserError(f"{path}: manifest lacks column(s) {sorted(missing)}")
        rows = list(reader)
    if not rows:
        raise UserError(f"{path}: manifest lists no patches")
    return rows


class PatchDataset(Dataset):
    """All patches of a folder in memory: ``images`` (N×C×P×P uint8), ``masks`` (N×P×P uint8), ``sources`` (N).

    Items are ``(image, mask)`` with the image as float in [0, 1] and the mask as int64 class indices.

    Args:
        folder: a folder written by ``python -m lib.prepare``.
        colors: the class colours (a mask value or colour outside them is an error).
        indices: keep only these rows of the manifest (used by :meth:`subset`).

    Raises:
        UserError: missing or malformed folder, manifest or file; a patch of another size or a mask value that is no
            class (naming the file).
    """

    def __init__(self, folder: str | Path, colors: Sequence[tuple[int, int, int]],
                 indices: Iterable[int] | None = None):
        self.folder = Path(folder)
        rows = read_manifest(self.folder)
        if indices is not None:
            rows = [rows[i] for i in indices]
        self.rows = rows
        self.sources = [r["source"] for r in rows]
        images, masks = [], []
        for r in rows:
            image = read_image(self.folder / "images" / r["file"])
            mask = read_mask(self.folder / "masks" / r["file"], list(colors))
            if image.shape[:2] != mask.shape or (images and image.shape != images[0].shape):
                raise UserError(f"{self.folder / 'images' / r['file']}: patch size {image.shape} differs from "
                                f"{images[0].shape if images else mask.shape}")
            images.append(image)
            masks.append(mask)
        stacked = np.stack(images)
        if stacked.ndim == 3:
            stacked = stacked[:, None]
        else:
            stacked = stacked.transpose(0, 3, 1, 2)
        self.images = torch.from_numpy(np.ascontiguousarray(stacked))
        self.masks = torch.from_numpy(np.stack(masks))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i].float() / 255.0, self.masks[i].long()

    @property
    def n_channels(self) -> int:
        return int(self.images.shape[1])

    def source_names(self) -> list[str]:
        """The distinct source images, in manifest order."""
        return list(dict.fromkeys(self.sources))

    def subset_indices(self, sources: Iterable[str]) -> torch.Tensor:
        """Positions of the patches cut from the given source images."""
        wanted = set(sources)
        return torch.tensor([i for i, s in enumerate(self.sources) if s in wanted], dtype=torch.long)


def split_sources(sources: Sequence[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Hold out ``val_fraction`` of the source images (at least one when the fraction is > 0 and there are ≥ 2).

    Splitting by source keeps every flipped twin of a training patch out of validation.

    Returns:
        ``(training sources, validation sources)``.
    """
    sources = list(sources)
    n_val = 0 if val_fraction <= 0 or len(sources) < 2 else min(len(sources) - 1,
                                                                  max(1, int(round(val_fraction * len(sources)))))
    order = np.random.default_rng(seed).permutation(len(sources))
    val = {sources[i] for i in order[:n_val]}
    return [s for s in sources if s not in val], [s for s in sources if s in val]
