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


def sample_positions(rng: np.random.Generator, mask: np.ndarray, size: int, count: int,
                     foreground_fraction: float = 0.0) -> list[tuple[int, int]]:
    """Top-left corners of ``count`` windows fully inside a (padded) image.

    Uniformly random (the published sampling), except that ``round(foreground_fraction * count)`` windows are centred
    on a random pixel of a random foreground class present in the mask (nnU-Net's oversampling for rare classes),
    shifted to stay inside the image.
    """
    h, w = mask.shape
    classes = [c for c in np.unique(mask) if c != 0]
    n_fg = int(round(foreground_fraction * count)) if classes else 0
    positions = []
    for i in range(count):
        if i < n_fg:
            ys, xs = np.nonzero(mask == classes[int(rng.integers(len(classes)))])
            j = int(rng.integers(len(ys)))
            top = int(np.clip(ys[j] - size // 2, 0, h - size))
            left = int(np.clip(xs[j] - size // 2, 0, w - size))
        else:
            top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        positions.append((top, left))
    return positions
