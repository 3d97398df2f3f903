"""The synthetic benchmark: flat gray lines and ellipses on Gaussian noise, with exact class-index masks."""

from __future__ import annotations

import numpy as np

from lib.core.params import DataParams
from lib.core.random_streams import keyed_rng

LINE, ELLIPSE = 1, 2  # class indices of the shapes; 0 is the background


def _window(cy: float, cx: float, reach: float, shape: tuple[int, int]) -> tuple[slice, slice, np.ndarray, np.ndarray]:
    """The part of the image within ``reach`` of a centre, clipped at the border (nothing wraps around)."""
    h, w = shape
    y0, y1 = max(0, int(np.floor(cy - reach))), min(h, int(np.ceil(cy + reach)) + 1)
    x0, x1 = max(0, int(np.floor(cx - reach))), min(w, int(np.ceil(cx + reach)) + 1)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    return slice(y0, y1), slice(x0, x1), yy, xx


def ellipse_mask(shape: tuple[int, int], cy: float, cx: float, a: float, b: float, angle: float) -> np.ndarray:
    """Boolean H×W mask of the ellipse with centre (cy, cx), semi-axes a (along ``angle``) and b."""
    out = np.zeros(shape, dtype=bool)
    sy, sx, yy, xx = _window(cy, cx, max(a, b), shape)
    dy, dx = yy - cy, xx - cx
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    out[sy, sx] = (u / a) ** 2 + (v / b) ** 2 <= 1.0
    return out


def line_mask(shape: tuple[int, int], cy: float, cx: float, length: float, thickness: float,
              angle: float) -> np.ndarray:
    """Boolean H×W mask of the straight segment of ``length`` through (cy, cx), ``thickness`` px wide."""
    out = np.zeros(shape, dtype=bool)
    sy, sx, yy, xx = _window(cy, cx, length / 2 + thickness, shape)
    dy, dx = yy - cy, xx - cx
    along = dx * np.cos(angle) + dy * np.sin(angle)
    across = -dx * np.sin(angle) + dy * np.cos(angle)
    out[sy, sx] = (np.abs(along) <= length / 2) & (np.abs(across) <= thickness / 2)
    return out


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def synthetic_pair(rng: np.random.Generator, p: DataParams) -> tuple[np.ndarray, np.ndarray]:
    """Draw one image and its mask.

    Args:
        rng: the random stream of this image.
        p: the image size and the ranges of every random quantity.

    Returns:
        ``(image, mask)``: uint8 H×W gray image and uint8 H×W mask (0 background, 1 line, 2 ellipse).
        Lines are drawn over ellipses, so where they cross the mask says "line".
    """
    shape = (p.height, p.width)
    mean = _uniform(rng, p.background_mean)
    value = np.clip(rng.normal(mean, p.background_std, size=shape), *p.background_clip)
    mask = np.zeros(shape, dtype=np.uint8)
    n_lines = int(rng.integers(p.n_lines[0], p.n_lines[1] + 1))
    n_ellipses = int(rng.integers(p.n_ellipses[0], p.n_ellipses[1] + 1))
    for _ in range(n_ellipses):
        radius = _uniform(rng, p.ellipse_radius)
        ratio = _uniform(rng, p.ellipse_axis_ratio)
        inside = ellipse_mask(shape, rng.uniform(0, p.height), rng.uniform(0, p.width), radius, radius * ratio,
                              rng.uniform(0, np.pi))
        value[inside] = _uniform(rng, p.shape_gray)
        mask[inside] = ELLIPSE
    longest = min(p.line_length[1], p.width)
    for _ in range(n_lines):
        length = rng.uniform(min(p.line_length[0], longest), longest)
        inside = line_mask(shape, rng.uniform(0, p.height), rng.uniform(0, p.width), length,
                           _uniform(rng, p.line_thickness), rng.uniform(0, np.pi))
        value[inside] = _uniform(rng, p.shape_gray)
        mask[inside] = LINE
    image = np.round(value * 255).astype(np.uint8)
    return image, mask


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random stream of one image: its own per (seed, split, index), so images are independent of each other
    and the training and test sets never share a stream."""
    return keyed_rng(seed, {"training": 0, "test": 1}[split], index)
