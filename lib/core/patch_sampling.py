"""Cutting training patches (Orobix's approach): random square windows of an image, each also in its flips."""

from __future__ import annotations

import numpy as np

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


def class_row_counts(mask: np.ndarray, band_pixels: int = 2**20) -> np.ndarray:
    """How many pixels of each class value every row of a mask holds.

    Counted in bands of about ``band_pixels`` pixels (one ``bincount`` of row × classes + value each), so that no
    temporary grows with the mask: a comparison and ``np.nonzero`` over a whole 8000² mask took hundreds of MB.

    Args:
        mask: H×W non-negative integer class values.
        band_pixels: pixels counted at a time.

    Returns:
        H×K int64 counts, K the largest value + 1.
    """
    height, width = mask.shape
    classes = int(mask.max()) + 1 if mask.size else 1
    counts = np.zeros((height, classes), dtype=np.int64)
    step = max(1, band_pixels // max(width, 1))
    for top in range(0, height, step):
        band = mask[top:top + step]
        index = np.arange(band.shape[0], dtype=np.int64)[:, None] * classes + band
        counts[top:top + band.shape[0]] = np.bincount(index.ravel(), minlength=band.shape[0] * classes).reshape(
            band.shape[0], classes)
    return counts


def sample_positions(rng: np.random.Generator, mask: np.ndarray, size: int, count: int,
                     foreground_fraction: float = 0.0) -> list[tuple[int, int]]:
    """Top-left corners of ``count`` windows fully inside a (padded) image.

    Uniformly random (the published sampling), except that ``round(foreground_fraction * count)`` windows are centred
    on a random pixel of a random foreground class present in the mask (nnU-Net's oversampling for rare classes),
    shifted to stay inside the image. The foreground pixel is the ``j``-th of its class in row order, ``j`` uniform:
    found from the per-row counts of :func:`class_row_counts` and one row of the mask, not from all the class's
    pixels.
    """
    h, w = mask.shape
    n_fg = int(round(foreground_fraction * count))
    cumulative = {}  # class -> its running pixel count by row
    if n_fg:
        counts = class_row_counts(mask)
        cumulative = {c: np.cumsum(counts[:, c]) for c in range(1, counts.shape[1]) if counts[:, c].any()}
    classes = list(cumulative)
    positions = []
    for i in range(count):
        if i < n_fg and classes:
            c = classes[int(rng.integers(len(classes)))]
            j = int(rng.integers(cumulative[c][-1]))
            y = int(np.searchsorted(cumulative[c], j, side="right"))
            x = int(np.flatnonzero(mask[y] == c)[j - (cumulative[c][y - 1] if y else 0)])
            top = int(np.clip(y - size // 2, 0, h - size))
            left = int(np.clip(x - size // 2, 0, w - size))
        else:
            top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        positions.append((top, left))
    return positions
