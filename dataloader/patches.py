"""A patch folder (images/, masks/, manifest.csv, sources.json) decoded once into memory, in the stored dtype."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from dataloader.manifest import SOURCES, mask_file, read_manifest
from lib.core.errors import UserError
from lib.core.imageio import read_image, read_mask
from lib.core.jobs import finished_signature, reading


class PatchDataset:
    """All patches of a folder in memory, in the dtype they were stored in.

    Attributes:
        images: N×C×P×P tensor of the stored dtype (uint8, uint16, int16 or float32).
        masks: N×P×P uint8 class indices.
        sources: the source image of each patch (N names).
        image_stats: N×2×C float64, the mean and std of each patch's whole source image (from ``sources.json``;
            None for a folder written before it existed).

    Args:
        folder: a folder written by ``python -m lib.prepare``.
        colors: the class colours (a mask value or colour outside them is an error).

    Raises:
        UserError: missing or malformed folder, manifest, ``sources.json`` or file; a patch of another size, dtype or
            channel count, or a mask value that is no class (naming the file).
    """

    def __init__(self, folder: str | Path, colors: Sequence[tuple[int, int, int]]):
        self.folder = Path(folder)
        with reading(self.folder):  # held against a lib.prepare --overwrite until every patch is in memory
            self._load(colors)
            # how they were cut (lib.prepare's settings), read with them: None where no job of this project wrote
            # the folder
            self.cut_with: dict | None = finished_signature(self.folder)

    def _load(self, colors: Sequence[tuple[int, int, int]]) -> None:
        self.rows = read_manifest(self.folder)
        self.sources = [r["source"] for r in self.rows]
        images, masks = [], []
        for r in self.rows:
            path = self.folder / "images" / r["file"]
            image = read_image(path)
            mask = read_mask(self.folder / "masks" / mask_file(r["file"]), list(colors))
            if image.shape[:2] != mask.shape or (images and (image.shape, image.dtype) != (images[0].shape,
                                                                                          images[0].dtype)):
                raise UserError(f"{path}: patch of shape {image.shape} and type {image.dtype} differs from "
                                f"{images[0].shape if images else mask.shape} {images[0].dtype if images else ''}")
            images.append(image)
            masks.append(mask)
        stacked = np.stack(images)
        stacked = stacked[:, None] if stacked.ndim == 3 else stacked.transpose(0, 3, 1, 2)
        self.images = torch.from_numpy(np.ascontiguousarray(stacked))
        self.masks = torch.from_numpy(np.stack(masks))
        self.image_stats = self._image_stats()

    def _image_stats(self) -> torch.Tensor | None:
        path = self.folder / SOURCES
        if not path.is_file():
            return None
        try:
            summary = json.loads(path.read_text())
            per_source = {name: [s["mean"], s["std"]] for name, s in summary["images"].items()}
            stats = torch.tensor([per_source[name] for name in self.sources], dtype=torch.float64)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise UserError(f"{path}: malformed ({err.__class__.__name__}: {err}); rerun python -m lib.prepare "
                            "--overwrite") from None
        if stats.shape[-1] != self.n_channels or summary.get("dtype") != self.dtype:
            raise UserError(f"{path}: describes {summary.get('dtype')} images of {stats.shape[-1]} channel(s), the "
                            f"patches are {self.dtype} with {self.n_channels}")
        return stats

    @property
    def n_channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def dtype(self) -> str:
        """The stored pixel type, e.g. ``uint16``."""
        return str(self.images.dtype).removeprefix("torch.")

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
