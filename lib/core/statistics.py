"""Per-channel mean and std of images in their stored units, in float64 chunks merged exactly (Chan et al.). NumPy
only: patch preparation computes each source image's statistics without importing torch."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def floor_std(std: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """``std``, or 1 for a channel that is constant (std 0, or within float rounding of it: at most 1e-8 of its mean),
    as scikit-learn's StandardScaler does. The test is relative to the values alone, so data of any magnitude keeps
    its spread (an absolute floor of 1e-8 flattened float data around 1e-30 to a blank input), and a constant channel
    is only centred: a value that differs at prediction is not multiplied by 1e8."""
    std, mean = np.asarray(std, dtype=np.float64), np.asarray(mean, dtype=np.float64)
    return np.where(std > 1e-8 * np.abs(mean), std, 1.0)


def merge_moments(a: tuple[np.ndarray, np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray, np.ndarray]
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Chan et al.'s merge of (count, mean, sum of squared deviations): exact, no cancellation."""
    (na, ma, sa), (nb, mb, sb) = a, b
    n = na + nb
    delta = mb - ma
    return n, ma + delta * nb / n, sa + sb + delta**2 * na * nb / n


def moments(chunk: np.ndarray, axes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(count, mean, sum of squared deviations) per channel in float64: over rows and columns of an h×W×C band
    (``axes == (0, 1)``), or over patches, rows and columns of an N×C×P×P chunk (``axes == (0, 2, 3)``)."""
    x = chunk.astype(np.float64)
    n = np.full(x.shape[-1] if axes == (0, 1) else x.shape[1], float(np.prod([x.shape[a] for a in axes])))
    mean = x.mean(axis=axes)
    dev = x - (mean if axes == (0, 1) else mean.reshape(1, -1, 1, 1))
    return n, mean, (dev * dev).sum(axis=axes)


def image_statistics(image: np.ndarray, rows: int = 1024) -> tuple[list[float], list[float]]:
    """Per-channel mean and (unbiased) std of an H×W or H×W×C image in its stored units, computed in bands of rows
    (float64 temporaries of one band only)."""
    return band_statistics(image[top:top + rows] for top in range(0, image.shape[0], rows))


def band_statistics(bands: Iterable[np.ndarray]) -> tuple[list[float], list[float]]:
    """Per-channel mean and (unbiased) std of an image given as bands of rows (h×W or h×W×C each), as
    :func:`image_statistics` computes them: an image streamed from disk never needs to be in memory whole."""
    total = None
    for band in bands:
        part = moments(band[..., None] if band.ndim == 2 else band, (0, 1))
        total = part if total is None else merge_moments(total, part)
    n, mean, m2 = total
    std = np.sqrt(m2 / np.maximum(n - 1, 1))
    return [float(v) for v in mean], [float(v) for v in floor_std(std, mean)]
