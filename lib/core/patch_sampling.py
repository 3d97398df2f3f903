"""Cutting training patches (Orobix's approach): random square windows of an image, each also in its flips."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from lib.core.imageio import ImageRows

FLIPS = ("none", "lr", "ud", "lrud")


def augmentations(flips: bool, rotate90: bool) -> list[tuple[str, int]]:
    """The (flip, quarter-turns) variants written for every patch.

    Flips alone give the published four (none, left/right, up/down, both); adding 90° rotations gives the eight
    distinct symmetries of a square (no duplicates: a rotation by 180° is already the double flip).
    """
    if rotate90:
        return [(f, k) for f in (("none", "lr") if flips else ("none",)) for k in range(4)]
    return [(f, 0) for f in (FLIPS if flips else ("none",))]


def apply_augmentation(patch: np.ndarray, flip: str, rot90: int) -> np.ndarray:
    """Flip (``lr`` = left/right, ``ud`` = up/down, ``lrud`` = both), then rotate by ``rot90`` quarter turns."""
    if flip in ("lr", "lrud"):
        patch = patch[:, ::-1]
    if flip in ("ud", "lrud"):
        patch = patch[::-1]
    return np.ascontiguousarray(np.rot90(patch, rot90, axes=(0, 1)))


_READ_PIXELS = 2**22  # a read of class_band_counts: a few bands, so that a tiled TIFF's tiles are decoded once


def class_band_counts(mask: np.ndarray | ImageRows, band_rows: int) -> np.ndarray:
    """How many pixels of each class value every band of ``band_rows`` rows of a mask holds.

    Args:
        mask: H×W non-negative integer class values: an array, or a mask's :class:`~lib.core.imageio.ImageRows`,
            read a few bands at a time (about 4 million pixels a read, at least one band, so that a tiled TIFF's
            tiles are decoded once, not once a band).
        band_rows: rows a band (the last band may be shorter).

    Returns:
        ceil(H / band_rows)×K int64 counts, K the largest value + 1: a table that stays small for any mask shape
        with bands of tens of thousands of pixels (per-row counts of a 200000×96 mask of 256 classes took 410 MB).
    """
    height, width = mask.shape[:2]
    step = band_rows * max(1, _READ_PIXELS // max(width * band_rows, 1))
    counts = []
    for top in range(0, height, step):
        rows = np.asarray(mask[top:top + step])
        counts += [np.bincount(rows[r:r + band_rows].ravel()) for r in range(0, rows.shape[0], band_rows)]
    classes = max([1, *(len(c) for c in counts)])  # (a band of no pixels counts nothing)
    return np.stack([np.pad(c, (0, classes - len(c))) for c in counts]).astype(np.int64)


def sample_positions(rng: np.random.Generator, mask: np.ndarray | ImageRows, size: int, count: int,
                     foreground_fraction: float = 0.0, band_pixels: int = 2**16) -> list[tuple[int, int]]:
    """Top-left corners of ``count`` windows fully inside a (padded) image.

    Uniformly random (the published sampling), except that ``round(foreground_fraction * count)`` windows are centred
    on a random pixel of a random foreground class present in the mask (nnU-Net's oversampling for rare classes),
    shifted to stay inside the image. The foreground pixel is the ``j``-th of its class in row order, ``j`` uniform:
    found from the class counts of bands of about ``band_pixels`` pixels (:func:`class_band_counts`) and one band of
    the mask, not from all the class's pixels (a comparison and ``np.nonzero`` over a whole 8000² mask per patch
    took hundreds of MB and seconds). ``mask`` may be a mask's :class:`~lib.core.imageio.ImageRows`: it is then read
    once in bands for the counts and once more a band for each centred window, never whole.
    """
    h, w = mask.shape
    n_fg = int(round(foreground_fraction * count))
    band_rows = max(1, band_pixels // max(w, 1))
    cumulative = {}  # class -> its running pixel count by band
    if n_fg:
        counts = class_band_counts(mask, band_rows)
        cumulative = {c: np.cumsum(counts[:, c]) for c in range(1, counts.shape[1]) if counts[:, c].any()}
    classes = list(cumulative)
    positions = []
    for i in range(count):
        if i < n_fg and classes:
            c = classes[int(rng.integers(len(classes)))]
            j = int(rng.integers(cumulative[c][-1]))
            band = int(np.searchsorted(cumulative[c], j, side="right"))
            first = band * band_rows
            k = j - (int(cumulative[c][band - 1]) if band else 0)
            y, x = divmod(int(np.flatnonzero(mask[first:first + band_rows] == c)[k]), w)
            top = int(np.clip(first + y - size // 2, 0, h - size))
            left = int(np.clip(x - size // 2, 0, w - size))
        else:
            top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        positions.append((top, left))
    return positions
