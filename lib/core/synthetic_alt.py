"""A second synthetic benchmark, drawn by code independent of :mod:`lib.core.synthetic`: the same kind of scene (thin
lines over ellipses on a noisy background, 3 classes), with its own rasterisation and its own ranges.

It exists to check that a training recipe chosen on our own generator holds on data it was not tuned on
(``data.generator: "alternate"``). Differences from the published-style generator:

- background: a linear gradient between two gray levels in a random direction, not a flat mean;
- ellipses: rasterised by 2×2 supersampling (a pixel is inside when at least two of its four sub-samples are);
- lines: capsules (round ends), every pixel within half the thickness of the centre segment;
- noise: added after the shapes, so shapes are textured like the background, not flat;
- ranges: 2–8 shapes of each kind, ellipses of a major semi-axis 6–22 px and a minor one 0.4–1 times it, line
  length 30–160 px, thickness 2.5–5.5 px, gray levels of the shapes 0.05–0.6 of full scale, noise σ 0.05–0.1.

Of the drawing settings of ``data`` only ``height``, ``width`` and ``seed`` apply; the ranges above are fixed here.
"""

from __future__ import annotations

import numpy as np

from lib.core.params import DataParams

LINE, ELLIPSE = 1, 2  # class indices; 0 is the background
N_SHAPES = (2, 8)
SEMI_AXIS = (6.0, 22.0)
AXIS_RATIO = (0.4, 1.0)
LINE_LENGTH = (30.0, 160.0)
THICKNESS = (2.5, 5.5)
SHAPE_GRAY = (0.05, 0.6)
BACKGROUND_GRAY = (0.65, 0.95)
NOISE = (0.05, 0.1)


def _box(shape: tuple[int, int], top: float, bottom: float, left: float, right: float
         ) -> tuple[slice, slice]:
    """Rows and columns of ``shape`` that hold every pixel centre within [top, bottom] × [left, right] (a pixel to
    spare on each side), clipped to the image."""
    def span(low: float, high: float, size: int) -> slice:
        start = min(max(int(np.floor(low)) - 1, 0), size)
        return slice(start, max(min(int(np.ceil(high)) + 2, size), start))  # empty for a shape off the image

    return span(top, bottom, shape[0]), span(left, right, shape[1])


def _grid(rows: slice, columns: slice) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (float64) of a box: the values the whole image's grid has there, so a shape drawn within
    its box is the same pixel for pixel as one drawn over the whole image, at a fraction of the cost."""
    ys, xs = np.mgrid[rows, columns]
    return ys.astype(np.float64), xs.astype(np.float64)


def supersampled_ellipse(shape: tuple[int, int], cy: float, cx: float, a: float, b: float, angle: float
                         ) -> np.ndarray:
    """Pixels of which at least 2 of 4 sub-samples (at ±0.25 px) fall inside the rotated ellipse."""
    reach = max(abs(a), abs(b)) + 0.5  # no sub-sample farther than the longer semi-axis lies inside
    rows, columns = _box(shape, cy - reach, cy + reach, cx - reach, cx + reach)
    ys, xs = _grid(rows, columns)
    cos, sin = np.cos(angle), np.sin(angle)
    votes = np.zeros(ys.shape, np.int8)
    for dy in (-0.25, 0.25):
        for dx in (-0.25, 0.25):
            y, x = ys + dy - cy, xs + dx - cx
            u, v = x * cos + y * sin, -x * sin + y * cos
            votes += (u / a) ** 2 + (v / b) ** 2 <= 1.0
    inside = np.zeros(shape, bool)
    inside[rows, columns] = votes >= 2
    return inside


def capsule(shape: tuple[int, int], y0: float, x0: float, y1: float, x1: float, thickness: float) -> np.ndarray:
    """Pixels whose centre lies within ``thickness / 2`` of the segment (y0, x0)–(y1, x1)."""
    half = abs(thickness) / 2  # the rule squares it: a negative thickness draws as its absolute value
    rows, columns = _box(shape, min(y0, y1) - half, max(y0, y1) + half, min(x0, x1) - half, max(x0, x1) + half)
    ys, xs = _grid(rows, columns)
    dy, dx = y1 - y0, x1 - x0
    t = np.clip(((ys - y0) * dy + (xs - x0) * dx) / max(dy * dy + dx * dx, 1e-12), 0.0, 1.0)
    inside = np.zeros(shape, bool)
    inside[rows, columns] = (ys - y0 - t * dy) ** 2 + (xs - x0 - t * dx) ** 2 <= half ** 2
    return inside


def alternate_pair(rng: np.random.Generator, p: DataParams) -> tuple[np.ndarray, np.ndarray]:
    """Draw one image and its mask with this module's rules.

    Returns:
        ``(image, mask)``: uint8 H×W gray image and uint8 H×W mask (0 background, 1 line, 2 ellipse); lines are drawn
        over ellipses, as in the published-style set.
    """
    shape = (p.height, p.width)
    low, high = sorted(rng.uniform(*BACKGROUND_GRAY, size=2))
    direction = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]]
    ramp = ys * np.sin(direction) + xs * np.cos(direction)
    ramp = (ramp - ramp.min()) / max(np.ptp(ramp), 1e-12)
    value = low + (high - low) * ramp
    mask = np.zeros(shape, np.uint8)
    for _ in range(int(rng.integers(N_SHAPES[0], N_SHAPES[1] + 1))):
        a = rng.uniform(*SEMI_AXIS)
        inside = supersampled_ellipse(shape, rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), a,
                                      a * rng.uniform(*AXIS_RATIO), rng.uniform(0, np.pi))
        value[inside], mask[inside] = rng.uniform(*SHAPE_GRAY), ELLIPSE
    for _ in range(int(rng.integers(N_SHAPES[0], N_SHAPES[1] + 1))):
        y0, x0 = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        length, angle = rng.uniform(*LINE_LENGTH), rng.uniform(0, 2 * np.pi)
        inside = capsule(shape, y0, x0, y0 + length * np.sin(angle), x0 + length * np.cos(angle),
                         rng.uniform(*THICKNESS))
        value[inside], mask[inside] = rng.uniform(*SHAPE_GRAY), LINE
    value = value + rng.normal(0.0, rng.uniform(*NOISE), size=shape)
    return np.round(np.clip(value, 0.0, 1.0) * 255).astype(np.uint8), mask
