"""Sliding-window inference, in the spirit of MONAI's own tests: an identity predictor is reproduced exactly for
every image size, overlap, blend and window batch size; every pixel is covered; agreement with MONAI."""

from __future__ import annotations

import itertools

import pytest
import torch
from monai.inferers import sliding_window_inference

from lib.inference import gaussian_weights, reflect_pad, sliding_window_predict, window_starts
from model import UNet

SIZES = [(20, 30), (96, 96), (130, 101), (250, 397)]  # smaller than a patch, equal, not a stride multiple, large
CASES = list(itertools.product(SIZES, [0.0, 0.25, 0.5], ["mean", "gaussian"], [1, 7]))


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


@pytest.mark.parametrize("size,overlap,blend,batch_size", CASES)
def test_identity_predictor_is_reproduced(size, overlap, blend, batch_size):
    g = torch.Generator().manual_seed(sum(size))
    image = torch.randint(0, 100, (2, *size), generator=g).float()  # integers: the mean blend is exact
    probs, labels = sliding_window_predict(_identity, image, window=96, overlap=overlap, batch_size=batch_size,
                                           blend=blend, activation=None)
    assert probs.shape == image.shape and labels.shape == size
    if blend == "mean":
        assert torch.equal(probs, image)
    else:
        torch.testing.assert_close(probs, image, rtol=1e-5, atol=1e-4)
    assert torch.equal(labels, image.argmax(0))


@pytest.mark.parametrize("size,overlap", list(itertools.product(SIZES, [0.0, 0.25, 0.5, 0.75])))
def test_every_pixel_is_covered_and_windows_stay_inside(size, overlap):
    calls = []

    def counting(x):
        calls.append(x.shape[0])
        return torch.ones(x.shape[0], 1, *x.shape[-2:])

    probs, _ = sliding_window_predict(counting, torch.zeros(1, *size), window=96, overlap=overlap,
                                      activation=None, batch_size=5)
    assert torch.equal(probs, torch.ones(1, *size))  # every pixel got at least one window
    stride = max(1, round(96 * (1 - overlap)))
    for side in size:
        starts = window_starts(max(side, 96), 96, stride)
        assert starts[0] == 0 and starts[-1] == max(side, 96) - 96
        assert all(b - a <= stride for a, b in zip(starts, starts[1:]))
    expected = len(window_starts(max(size[0], 96), 96, stride)) * len(window_starts(max(size[1], 96), 96, stride))
    assert sum(calls) == expected and max(calls) <= 5


def test_half_patch_stride_and_flush_last_window():
    assert window_starts(200, 96, 48) == [0, 48, 96, 104]
    assert window_starts(96, 96, 48) == [0]
    assert window_starts(400, 96, 48) == [0, 48, 96, 144, 192, 240, 288, 304]


def test_small_images_are_reflect_padded_not_zero_padded():
    seen = []

    def record(x):
        seen.append(x.clone())
        return x

    image = torch.arange(1, 1 + 30 * 40, dtype=torch.float32).reshape(1, 30, 40)
    sliding_window_predict(record, image, window=96, activation=None)
    window = seen[0][0, 0]
    assert window.shape == (96, 96) and bool((window > 0).all())  # no zero from padding
    assert torch.equal(reflect_pad(image, 96, 96)[:, :30, :40], image)


def test_gaussian_weights_positive_at_the_edge_and_peak_in_the_centre():
    w = gaussian_weights(96)
    assert w.shape == (96, 96) and float(w.min()) > 0 and float(w.max()) == 1.0
    assert float(w[47, 47]) == 1.0 and float(w[0, 0]) < float(w[0, 47]) < float(w[47, 47])
    torch.testing.assert_close(w, w.flip(0).flip(1))


def test_tta_with_a_flip_equivariant_predictor_changes_nothing():
    image = torch.randint(0, 50, (3, 120, 150)).float()
    plain, _ = sliding_window_predict(_identity, image, activation=None)
    tta, _ = sliding_window_predict(_identity, image, activation=None, tta=True)
    torch.testing.assert_close(tta, plain)


def test_softmax_probabilities_sum_to_one():
    torch.manual_seed(0)
    model = UNet(1, 3, 4).eval()
    probs, labels = sliding_window_predict(model, torch.randn(1, 100, 130), window=48, batch_size=4)
    torch.testing.assert_close(probs.sum(0), torch.ones(100, 130))
    assert labels.dtype == torch.int64 and int(labels.max()) <= 2


@pytest.mark.parametrize("size", [(200, 400), (150, 97)])
def test_agrees_with_monai_on_an_untrained_unet(size):
    torch.manual_seed(0)
    model = UNet(1, 3, 4).eval()
    image = torch.randn(1, *size)
    ours, _ = sliding_window_predict(model, image, window=96, overlap=0.5, batch_size=8)

    def softmax_model(x):
        return model(x).softmax(1)

    with torch.inference_mode():
        ref = sliding_window_inference(image[None], (96, 96), 8, softmax_model, overlap=0.5, mode="constant")[0]
    assert float((ours - ref).abs().max()) <= 1e-5


@pytest.mark.parametrize("kwargs,match", [({"overlap": 1.0}, "overlap"), ({"blend": "max"}, "blend"),
                                          ({"batch_size": 0}, "positive"), ({"activation": "sigmoid"}, "activation")])
def test_bad_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sliding_window_predict(_identity, torch.zeros(1, 10, 10), **kwargs)
