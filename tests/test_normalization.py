"""Normalisation learnt from the training data: the modes against NumPy, 8-bit results unchanged, and the one
``normalize`` function used everywhere."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lib.core.normalization import as_spec, compute_normalization, normalize
from lib.core.statistics import image_statistics

RNG = np.random.default_rng(0)


def _images(dtype: str, shape=(40, 2, 12, 12)) -> torch.Tensor:
    if dtype == "float32":
        a = RNG.normal(1000, 400, shape).astype(np.float32)
        a.flat[::97] = 3000  # outliers for the percentiles to clip
    else:
        lo, hi = {"uint8": (0, 255), "uint16": (0, 4095), "int16": (-1000, 3000)}[dtype]
        a = RNG.integers(lo, hi, shape, endpoint=True).astype(dtype)
    return torch.from_numpy(a)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32"])
def test_zscore_matches_numpy_per_channel(dtype):
    x = _images(dtype)
    spec = compute_normalization(x, "zscore")
    values = x.numpy().astype(np.float64) / spec["scale"]
    assert np.allclose(spec["mean"], values.mean(axis=(0, 2, 3)), rtol=1e-12, atol=1e-12)
    assert np.allclose(spec["std"], values.std(axis=(0, 2, 3), ddof=1), rtol=1e-10)
    out = normalize(x, spec).double()
    assert torch.allclose(out.mean(dim=(0, 2, 3)), torch.zeros(2, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(out.std(dim=(0, 2, 3)), torch.ones(2, dtype=torch.float64), atol=1e-5)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32"])
@pytest.mark.parametrize("q", [(0.5, 99.5), (0.0, 100.0), (5.0, 95.0)])
def test_percentiles_match_numpy_and_clip(dtype, q):
    x = _images(dtype)
    spec = compute_normalization(x, "percentile", q)
    for c in range(2):
        assert np.allclose([spec["low"][c], spec["high"][c]], np.percentile(x[:, c].numpy(), q), rtol=1e-6)
    clipped = np.clip(x.numpy().astype(np.float64), np.array(spec["low"]).reshape(1, -1, 1, 1),
                      np.array(spec["high"]).reshape(1, -1, 1, 1)) / spec["scale"]
    assert np.allclose(spec["mean"], clipped.mean(axis=(0, 2, 3)), rtol=1e-10)
    expected = (clipped - np.array(spec["mean"]).reshape(1, -1, 1, 1)) / np.array(spec["std"]).reshape(1, -1, 1, 1)
    assert np.allclose(normalize(x, spec).numpy(), expected, atol=1e-4)


def test_eight_bit_zscore_is_the_rule_before_the_modes_bit_for_bit():
    """A checkpoint written before the modes ({mean, std} in [0, 1] units) and a new one give the same inputs."""
    x = _images("uint8")
    legacy = {"mean": [float(v) for v in (x.double() / 255).mean(dim=(0, 2, 3))],
              "std": [float(v) for v in (x.double() / 255).std(dim=(0, 2, 3))]}
    before = (x.float() / 255.0 - torch.tensor(legacy["mean"]).view(1, -1, 1, 1)) / torch.tensor(
        legacy["std"]).view(1, -1, 1, 1)
    assert torch.equal(normalize(x, legacy), before)
    spec = compute_normalization(x)
    assert np.allclose(spec["mean"], legacy["mean"], rtol=1e-14) and np.allclose(spec["std"], legacy["std"], rtol=1e-12)
    assert as_spec(legacy)["dtype"] == "uint8" and as_spec(spec) is spec


@pytest.mark.parametrize("dtype, scale", [("uint8", 255.0), ("uint16", 65535.0), ("int16", 32768.0),
                                          ("float32", 1.0)])
def test_scale_mode_divides_by_the_scale_alone_as_the_original_code_did(dtype, scale):
    """``scale``: the original code's ``image / 255`` on 8-bit data (and the same units for other types); nothing is
    learnt, and the spec passes the checkpoint's check."""
    from lib.core.normalization import check_spec

    x = _images(dtype)
    spec = compute_normalization(x, "scale")
    assert spec == {"mode": "scale", "dtype": dtype, "scale": scale, "mean": None, "std": None, "low": None,
                    "high": None}
    check_spec(spec, 2)
    assert torch.equal(normalize(x, spec), x.float() / scale)


def test_zscore_removes_an_affine_change_of_the_stored_values():
    """12-bit data in a narrow band (2000 + 4·v) gives the network the same inputs as the 8-bit values v."""
    x8 = _images("uint8")
    x12 = (2000 + 4 * x8.to(torch.int32)).to(torch.uint16)
    a, b = normalize(x8, compute_normalization(x8)), normalize(x12, compute_normalization(x12))
    assert (a - b).abs().max() < 1e-4


def test_image_mode_uses_each_image_statistics():
    x = _images("uint16", (3, 2, 10, 10))
    stats = torch.tensor([[list(m), list(s)] for m, s in (image_statistics(img.permute(1, 2, 0).numpy())
                                                          for img in x)], dtype=torch.float64)
    spec = compute_normalization(x, "image")
    assert spec["mean"] is None and spec["dtype"] == "uint16"
    out = normalize(x, spec, stats).double()
    assert torch.allclose(out.mean(dim=(2, 3)), torch.zeros(3, 2, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(out.std(dim=(2, 3)), torch.ones(3, 2, dtype=torch.float64), atol=1e-5)
    with pytest.raises(ValueError, match="image_stats"):
        normalize(x, spec)


def test_image_statistics_in_bands_equal_the_whole_image():
    image = RNG.normal(3000, 5, (2500, 30, 3)).astype(np.float32)  # large mean, small spread: no cancellation
    mean, std = image_statistics(image, rows=64)
    values = image.astype(np.float64)
    assert np.allclose(mean, values.mean(axis=(0, 1)), rtol=1e-13)
    assert np.allclose(std, values.std(axis=(0, 1), ddof=1), rtol=1e-9)
    assert image_statistics(np.full((4, 4), 7, np.uint8))[1][0] == 1  # a constant image: centred only


@pytest.mark.parametrize("kwargs, match", [
    ({"mode": "minmax"}, "mode must be one of"),
    ({"percentiles": (50, 50)}, "percentiles"),
    ({"percentiles": (-1, 50)}, "percentiles"),
])
def test_bad_options_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        compute_normalization(_images("uint8"), **{"mode": "percentile", **kwargs})


def test_unsupported_dtype_is_refused():
    with pytest.raises(ValueError, match="int32"):
        compute_normalization(torch.zeros(2, 1, 4, 4, dtype=torch.int32))


# (id, unit of the data): float data in any unit normalises to the same network input
UNITS = [("metres", 1.0), ("nanometres-as-metres", 1e-9), ("tiny", 1e-30), ("huge", 1e30)]


@pytest.mark.parametrize("mode", ["zscore", "image"])
@pytest.mark.parametrize("case", UNITS, ids=[c[0] for c in UNITS])
def test_the_normalised_input_does_not_depend_on_the_unit_of_float_data(case, mode):
    _, unit = case
    base = torch.from_numpy(RNG.normal(3.0, 0.5, (4, 2, 8, 8)).astype(np.float32))
    base[:, 1] = 5.0  # a constant channel: centred to 0, not divided by a floor
    scaled = (base.double() * unit).float()
    got = normalize(scaled, compute_normalization(scaled, mode), _per_patch_statistics(scaled))
    expected = normalize(base, compute_normalization(base, mode), _per_patch_statistics(base))
    assert torch.isfinite(got).all()
    assert torch.allclose(got, expected, atol=1e-4)
    assert torch.equal(got[:, 1], torch.zeros_like(got[:, 1]))


def _per_patch_statistics(patches: torch.Tensor) -> torch.Tensor:
    """N×2×C: each patch's mean and std, as ``image`` mode takes them (here each patch is its own image)."""
    return torch.tensor([image_statistics(p.permute(1, 2, 0).numpy()) for p in patches], dtype=torch.float64)


@pytest.mark.parametrize("dtype, moved", [(torch.uint16, torch.int32), (torch.uint8, torch.uint8),
                                          (torch.int16, torch.int16), (torch.float32, torch.float32)])
def test_pixels_leaving_the_cpu_keep_their_values_in_a_type_the_device_can_index(dtype, moved):
    """PyTorch 2.11 cannot index a uint16 tensor on CUDA: such patches go there as int32, and normalise the same."""
    from lib.core.device import move_pixels

    pixels = torch.tensor([0, 1, 255, 4095] + ([65535] if dtype == torch.uint16 else []), dtype=torch.int64).to(dtype)
    assert move_pixels(pixels, torch.device("cpu")).dtype == dtype  # the CPU indexes every type
    assert move_pixels(pixels, torch.device("meta")).dtype == moved  # a device other than the CPU
    spec = {"mode": "zscore", "dtype": str(dtype).removeprefix("torch."), "scale": 1.0, "mean": [100.0],
            "std": [7.0], "low": None, "high": None}
    as_moved = pixels.to(moved).view(1, 1, 1, -1)
    assert torch.equal(normalize(as_moved, spec), normalize(pixels.view(1, 1, 1, -1), spec))


def test_every_mode_the_parameters_accept_is_learnt_checked_and_applied():
    """The modes have one home (lib.core.params.NORMALIZATIONS); each must be handled here."""
    from lib.core.normalization import _PER_CHANNEL, MODES, check_spec
    from lib.core.params import NORMALIZATIONS

    assert MODES == NORMALIZATIONS and set(_PER_CHANNEL) == set(MODES)
    x = _images("uint8")
    stats = torch.zeros(len(x), 2, 2, dtype=torch.float64)
    stats[:, 1] = 50.0
    for mode in MODES:
        spec = compute_normalization(x, mode)
        check_spec(spec, 2)
        assert torch.isfinite(normalize(x, spec, stats)).all()


@pytest.mark.parametrize("mode", ["zscore", "percentile", "image"])
def test_a_normalisation_of_another_channel_count_is_refused(mode):
    """One channel's statistics were applied to every channel of 3-channel images, and 3 channels' statistics
    turned a 1-channel image into 3 channels, silently."""
    images = _images("uint16", (6, 1, 12, 12))
    spec = compute_normalization(images, mode)
    stats = torch.ones(6, 2, 1)
    for other in (images.repeat(1, 3, 1, 1), images[0]):
        with pytest.raises(ValueError, match="channel|N×C×H×W|N×2×C"):
            normalize(other, spec, stats)  # (image mode: the statistics of 1 channel)
    with pytest.raises(TypeError, match="torch.from_numpy"):
        normalize(images.numpy(), spec, stats)
    assert normalize(images, spec, stats).shape == images.shape
    assert torch.equal(normalize(images, spec, stats[:1]), normalize(images, spec, stats))  # one image's, for all
