"""The one padding rule: patch cutting (NumPy, H×W×C) and inference (PyTorch, C×H×W) pad a small image alike, by
repeated mirroring, which is numpy's ``reflect`` wherever one reflection suffices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lib.core.padding import mirror_indices, reflect_pad

# (height, width): a single pixel, one row, tiny, under half a window, one short side, exactly a window, larger
SIZES = [(1, 1), (1, 5), (3, 2), (20, 30), (47, 96), (96, 96), (130, 101)]


@pytest.mark.parametrize("height,width", SIZES)
def test_numpy_and_torch_pad_alike(height, width):
    image = np.random.default_rng(height * width).integers(0, 256, (height, width, 3)).astype(np.uint8)
    padded = reflect_pad(image, 96, 96, (0, 1))
    tensor = reflect_pad(torch.from_numpy(image).permute(2, 0, 1), 96, 96)
    assert padded.shape == (max(96, height), max(96, width), 3)
    assert np.array_equal(padded[:height, :width], image)  # the image itself is untouched
    assert np.array_equal(tensor.permute(1, 2, 0).numpy(), padded)
    assert reflect_pad(image[..., 0], 96, 96, (0, 1)).shape == padded.shape[:2]  # masks (H×W) too


@pytest.mark.parametrize("size,target", [(5, 9), (48, 95), (2, 7), (30, 96)])
def test_one_reflection_is_numpys_reflect_and_more_repeat_it(size, target):
    values = np.arange(size)
    expected = values
    while len(expected) < target:  # numpy's reflect, applied again and again as the old loops did
        expected = np.pad(expected, (0, min(target - len(expected), len(expected) - 1)), mode="reflect")
    assert np.array_equal(mirror_indices(size, target), expected)


def test_a_single_pixel_side_is_repeated_and_empty_axes_are_refused():
    assert np.array_equal(mirror_indices(1, 4), [0, 0, 0, 0])
    with pytest.raises(ValueError, match="empty"):
        mirror_indices(0, 4)
