"""Input normalisation learnt from the training data, stored in checkpoints, applied by one function everywhere.

Four modes (``data.normalization``), each per channel:

- ``zscore`` (default): mean and std over the training patches; ``x' = (x / scale - mean) / std``. On 8-bit data
  (scale 255) this is the original code's ``/255`` followed by a z-score.
- ``percentile``: each channel clipped to its ``[low, high]`` percentiles over the training patches
  (``data.percentiles``, 0.5 and 99.5 by default), then z-scored with the mean and std of the clipped values
  (nnU-Net's scheme for CT).
- ``image``: every image z-scored with its own mean and std (nnU-Net's default for other modalities); a training
  patch uses the statistics of the whole image it was cut from (``sources.json`` of the patch folder).
- ``scale``: ``x' = x / scale`` alone, nothing learnt: the original code's ``/255`` on 8-bit data.

``scale`` is 255 for uint8, 65535 for uint16, 32768 for int16 and 1 for float32: it only sets the units in which
``mean`` and ``std`` are stored (and, in ``scale`` mode, the whole normalisation). The settings travel as a plain
dict (the checkpoint's ``normalization`` entry).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from lib.core.params import NORMALIZATIONS
from lib.core.statistics import floor_std, merge_moments, moments

MODES = NORMALIZATIONS
SCALES = {"uint8": 255.0, "uint16": 65535.0, "int16": 32768.0, "float32": 1.0}
_EXACT_PERCENTILE_VALUES = 1 << 25  # float data with more values per channel is subsampled (strided) for percentiles
_CHUNK = 256  # patches per chunk when computing statistics (bounded float64 temporaries)


def _channel_values(images: torch.Tensor, c: int) -> np.ndarray:
    values = images[:, c].numpy().reshape(-1)
    step = max(1, -(-values.size // _EXACT_PERCENTILE_VALUES))
    return values[::step]


def _percentiles(images: torch.Tensor, q: Sequence[float]) -> tuple[list[float], list[float]]:
    """Per-channel ``q[0]`` and ``q[1]`` percentiles (NumPy's linear rule) of N×C×H×W images: exact from a histogram
    for integer data; for float data exact up to 2^25 values per channel, from a strided subsample beyond."""
    low, high = [], []
    for c in range(images.shape[1]):
        if images.dtype.is_floating_point:
            lo, hi = np.percentile(_channel_values(images, c), q)
        else:
            offset = 32768 if images.dtype == torch.int16 else 0
            counts = torch.zeros(1 << 16, dtype=torch.int64)
            for start in range(0, len(images), _CHUNK):
                flat = images[start:start + _CHUNK, c].reshape(-1).to(torch.int32) + offset
                counts += torch.bincount(flat, minlength=1 << 16)
            cumulative = counts.cumsum(0).numpy()
            n = int(cumulative[-1])

            def order_statistic(k: int, cumulative=cumulative, offset=offset) -> int:
                return int(np.searchsorted(cumulative, k, side="right")) - offset

            lo, hi = (_interpolate(order_statistic, p / 100 * (n - 1)) for p in q)
        low.append(float(lo))
        high.append(float(hi))
    return low, high


def _interpolate(order_statistic, rank: float) -> float:
    below, frac = int(np.floor(rank)), rank - np.floor(rank)
    a = order_statistic(below)
    return float(a + frac * (order_statistic(below + 1) - a)) if frac else float(a)


def compute_normalization(images: torch.Tensor, mode: str = "zscore",
                          percentiles: Sequence[float] = (0.5, 99.5)) -> dict:
    """The normalisation of a data set, learnt from its training patches (``scale`` learns nothing).

    Args:
        images: N×C×H×W training patches in their stored dtype (uint8, uint16, int16 or float32), on the CPU.
        mode: ``zscore``, ``percentile``, ``image`` or ``scale`` (see the module docstring).
        percentiles: the clipping percentiles of ``percentile`` mode, in [0, 100].

    Returns:
        ``{"mode", "dtype", "scale", "mean", "std", "low", "high"}``: per-channel lists (``mean``/``std`` in units of
        ``scale``, ``low``/``high`` in stored units; None where the mode has none).

    Raises:
        ValueError: an unknown mode or dtype, bad percentiles, or no images.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    _check_tensor(images)
    dtype = str(images.dtype).removeprefix("torch.")
    if dtype not in SCALES:
        raise ValueError(f"images must be one of {tuple(SCALES)}, got {dtype}")
    if images.ndim != 4 or not len(images):
        raise ValueError(f"images must be a non-empty N×C×H×W tensor, got shape {tuple(images.shape)}")
    if not 0 <= percentiles[0] < percentiles[1] <= 100:
        raise ValueError(f"percentiles must be 0 <= low < high <= 100, got {list(percentiles)}")
    spec = {"mode": mode, "dtype": dtype, "scale": SCALES[dtype], "mean": None, "std": None, "low": None,
            "high": None}
    if not _PER_CHANNEL[mode]:  # nothing learnt from the patches
        return spec
    if mode == "percentile":
        spec["low"], spec["high"] = _percentiles(images, percentiles)
    low = np.array(spec["low"]).reshape(1, -1, 1, 1) if spec["low"] else None
    high = np.array(spec["high"]).reshape(1, -1, 1, 1) if spec["high"] else None
    total = None
    for start in range(0, len(images), _CHUNK):
        chunk = images[start:start + _CHUNK].numpy()
        if low is not None:
            chunk = np.clip(chunk.astype(np.float64), low, high)
        part = moments(chunk, (0, 2, 3))
        total = part if total is None else merge_moments(total, part)
    n, mean, m2 = total
    mean, std = mean / spec["scale"], np.sqrt(m2 / np.maximum(n - 1, 1)) / spec["scale"]
    spec["mean"], spec["std"] = [float(v) for v in mean], [float(v) for v in floor_std(std, mean)]
    return spec


def as_spec(normalization: dict) -> dict:
    """A stored normalisation in today's form; a checkpoint written before the modes existed holds only ``mean`` and
    ``std`` of 8-bit data in [0, 1] units, which is ``zscore`` with scale 255."""
    if "mode" in normalization:
        return normalization
    return {"mode": "zscore", "dtype": "uint8", "scale": 255.0, "mean": list(normalization["mean"]),
            "std": list(normalization["std"]), "low": None, "high": None}


_SPEC_KEYS = ("mode", "dtype", "scale", "mean", "std", "low", "high")  # a stored normalisation's entries
# the per-channel lists each mode applies
_PER_CHANNEL = {"zscore": ("mean", "std"), "percentile": ("mean", "std", "low", "high"), "image": (), "scale": ()}


def check_spec(normalization: Any, n_channels: int) -> None:
    """Refuse a stored normalisation (a checkpoint's) that :func:`normalize` could not apply to images of
    ``n_channels`` channels.

    Raises:
        ValueError: what is missing or wrong, naming the field.
    """
    if not isinstance(normalization, dict) or not ("mode" in normalization or {"mean", "std"} <= normalization.keys()):
        raise ValueError(f"expected a dict of {', '.join(_SPEC_KEYS[:-1])} and {_SPEC_KEYS[-1]}")
    spec = as_spec(normalization)
    missing = [k for k in _SPEC_KEYS if k not in spec]
    if missing:
        raise ValueError(f"lacks {', '.join(missing)}")
    if spec["mode"] not in MODES or spec["dtype"] not in SCALES:
        raise ValueError(f"mode {spec['mode']!r} and dtype {spec['dtype']!r}: expected one of {MODES} and one of "
                         f"{tuple(SCALES)}")
    if spec["scale"] != SCALES[spec["dtype"]]:
        raise ValueError(f"scale {spec['scale']!r}: expected {SCALES[spec['dtype']]} for {spec['dtype']}")
    for key in _PER_CHANNEL[spec["mode"]]:
        values = spec[key]
        if (not isinstance(values, (list, tuple)) or len(values) != n_channels
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                           for v in values)):
            raise ValueError(f"{key} {str(values)[:80]}: expected {n_channels} finite number(s), one per channel")
    if _PER_CHANNEL[spec["mode"]] and min(spec["std"]) <= 0:
        raise ValueError(f"std {spec['std']}: expected positive numbers")


@functools.lru_cache(maxsize=64)
def _channel_constants(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """Per-channel constants as a 1×C×1×1 float32 tensor on ``device``, made once: a tensor built from Python numbers
    on a GPU is a blocking copy, which would stall every training step. (Never modified in place.)"""
    return torch.tensor(values, dtype=torch.float32, device=device).view(1, -1, 1, 1)


def _check_tensor(images: object) -> None:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__} (torch.from_numpy converts an "
                        "array)")


def normalize(images: torch.Tensor, normalization: dict, image_stats: torch.Tensor | None = None) -> torch.Tensor:
    """The one normalisation rule: N×C×H×W images in their stored dtype → float32 network inputs.

    Args:
        images: N×C×H×W, any supported dtype, on any device.
        normalization: a dict of :func:`compute_normalization` (or a checkpoint's, see :func:`as_spec`).
        image_stats: for ``image`` mode, N×2×C: the mean and std (stored units) of each patch's whole image (1×2×C:
            one image's, for all N).

    Raises:
        TypeError: ``images`` is no tensor.
        ValueError: images that are not N×C×H×W, a normalisation of another channel count, or ``image`` mode
            without ``image_stats`` (or with those of another channel count).
    """
    _check_tensor(images)
    spec = as_spec(normalization)
    if images.ndim != 4:
        raise ValueError(f"images must be N×C×H×W, got shape {tuple(images.shape)}")
    channels = images.shape[1]
    for key in _PER_CHANNEL[spec["mode"]]:  # (one channel's statistics were applied to every channel)
        if len(spec[key]) != channels:
            raise ValueError(f"a normalisation of {len(spec[key])} channel(s) ({key}) for images of {channels}")
    x = images.float()
    device = images.device
    if spec["mode"] == "percentile":
        x = torch.clamp(x, _channel_constants(tuple(spec["low"]), device),
                        _channel_constants(tuple(spec["high"]), device))
    x = x / spec["scale"]
    if spec["mode"] == "scale":
        return x
    if spec["mode"] == "image":
        got = None if image_stats is None else tuple(image_stats.shape)
        if got not in ((images.shape[0], 2, channels), (1, 2, channels)):
            raise ValueError(f"normalization mode 'image' needs the N×2×C (or 1×2×C) statistics of each image "
                             f"(image_stats) for images of N×C = {images.shape[0]}×{channels}, got {got}")
        stats = image_stats.to(dtype=torch.float32, device=device) / spec["scale"]
        mean, std = stats[:, 0, :, None, None], stats[:, 1, :, None, None]
    else:
        mean = _channel_constants(tuple(spec["mean"]), device)
        std = _channel_constants(tuple(spec["std"]), device)
    return (x - mean) / std
