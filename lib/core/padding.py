"""The one padding rule of the project, for patch cutting and for inference alike: an image smaller than a window is
extended at the bottom and right by mirroring it (numpy's and PyTorch's ``reflect``: the edge pixel is not repeated),
again and again for an image much smaller than the window; a side of one pixel is repeated."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, TypeVar

import numpy as np

if TYPE_CHECKING:
    import torch

Array = TypeVar("Array", np.ndarray, "torch.Tensor")


def mirror_indices(size: int, target: int) -> np.ndarray:
    """Source index of each position ``0 .. max(size, target) - 1`` along a padded axis: ``0 .. size - 1``, then
    back and forth (period ``2 × (size - 1)``), all zeros for ``size == 1``.

    Raises:
        ValueError: ``size < 1``.
    """
    if size < 1:
        raise ValueError(f"cannot pad an empty axis (size {size})")
    positions = np.arange(max(size, target))
    if size == 1:
        return np.zeros_like(positions)
    phase = positions % (2 * (size - 1))
    return np.where(phase < size, phase, 2 * (size - 1) - phase)


def reflect_pad(x: Array, height: int, width: int, axes: tuple[int, int] = (-2, -1)) -> Array:
    """Mirror-pad ``x`` at the bottom and right to at least ``height`` × ``width`` (:func:`mirror_indices`).

    Args:
        x: a NumPy array or a tensor; its rows and columns are the dimensions ``axes`` (``(-2, -1)`` for C×H×W
            tensors, ``(0, 1)`` for H×W×C images as read from disk).
        height, width: the smallest size wanted; larger sides are left as they are.

    Returns:
        ``x`` itself when no side is short, else a padded copy of the same kind.
    """
    h, w = x.shape[axes[0]], x.shape[axes[1]]
    if h >= height and w >= width:
        return x
    rows, cols = mirror_indices(h, height), mirror_indices(w, width)
    torch = sys.modules.get("torch")  # not imported by patch preparation, and then x is no tensor
    if torch is not None and isinstance(x, torch.Tensor):
        from lib.core.cuda_graphs import to_device  # a copy a CUDA graph can replay

        rows_t, cols_t = (to_device(torch.from_numpy(i), x.device) for i in (rows, cols))
        return x.index_select(axes[0], rows_t).index_select(axes[1], cols_t)
    return np.take(np.take(x, rows, axis=axes[0]), cols, axis=axes[1])
