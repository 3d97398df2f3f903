"""U-Net: output shapes for many sizes and widths, logits (no activation), parameter count at width 64."""

from __future__ import annotations

import pytest
import torch

from model import UNet
from model.unet_parts import DoubleConv, Down, OutConv, Up


@pytest.mark.parametrize("size", [(16, 16), (96, 96), (97, 61), (33, 50), (20, 100), (16, 23)])
@pytest.mark.parametrize("width,bilinear", [(4, False), (8, True)])
def test_output_shape_for_any_input_size(size, width, bilinear):
    model = UNet(1, 3, width, bilinear).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, *size))
    assert out.shape == (2, 3, *size)


def test_inputs_smaller_than_16_are_refused_clearly():
    with pytest.raises(ValueError, match="at least 16"):
        UNet(1, 3, 4)(torch.randn(1, 1, 15, 40))


def test_rgb_input_and_many_classes():
    with torch.no_grad():
        assert UNet(3, 7, 4).eval()(torch.randn(1, 3, 48, 40)).shape == (1, 7, 48, 40)


def test_returns_logits_not_probabilities():
    """The last layer is a 1×1 convolution and nothing after it: with zero weights its bias comes out unchanged
    (a softmax or sigmoid would map it into [0, 1])."""
    model = UNet(1, 3, 4).eval()
    bias = torch.tensor([-3.0, 0.5, 7.0])
    with torch.no_grad():
        model.outc.conv.weight.zero_()
        model.outc.conv.bias.copy_(bias)
        out = model(torch.randn(2, 1, 32, 32))
    assert torch.equal(out, bias.view(1, 3, 1, 1).expand(2, 3, 32, 32))


@pytest.mark.parametrize("bilinear,expected", [(False, 31_037_763), (True, 17_263_107)])
def test_parameter_count_at_width_64(bilinear, expected):
    n = sum(p.numel() for p in UNet(3, 3, 64, bilinear).parameters())
    assert n == expected  # milesial's Pytorch-UNet, n_channels=3, n_classes=3


def test_parts_are_the_published_blocks():
    conv = DoubleConv(2, 5)
    kinds = [type(m).__name__ for m in conv.double_conv]
    assert kinds == ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d", "ReLU"]
    assert isinstance(Down(2, 4).maxpool_conv[0], torch.nn.MaxPool2d)
    assert isinstance(Up(8, 4).up, torch.nn.ConvTranspose2d) and isinstance(Up(8, 4, True).up, torch.nn.Upsample)
    assert OutConv(4, 3).conv.kernel_size == (1, 1)
    assert UNet(1, 3, 4, True).config() == {"n_channels": 1, "n_classes": 3, "base_channels": 4, "bilinear": True}


def test_a_compiled_model_is_saved_as_the_model_and_a_mismatched_one_refused(tmp_path):
    """A torch.compile'd U-Net was saved with '_orig_mod.' weight names that no load takes; a U-Net of other classes
    than the parameters' was saved and refused only at load."""
    from lib.core.params import load_params
    from lib.segmenter import Segmenter
    from model.checkpoint import build_checkpoint, save_checkpoint
    from tests.conftest import REPO

    params = load_params(REPO / "parameters.json")
    spec = {"mode": "scale", "dtype": "uint8", "scale": 255.0, "mean": None, "std": None, "low": None, "high": None}
    net = UNet(1, 3, 4)
    state = build_checkpoint(torch.compile(net), params, spec)
    assert list(state["model_state"]) == list(net.state_dict())
    save_checkpoint(tmp_path / "c.pth", state)
    assert Segmenter.from_checkpoint(tmp_path / "c.pth", device="cpu").n_channels == 1
    with pytest.raises(ValueError, match="expected a U-Net of model.unet_model .*, got Conv2d"):
        build_checkpoint(torch.nn.Conv2d(1, 3, 1), params, spec)
    with pytest.raises(ValueError, match="a U-Net of 4 classes for parameters of 3 classes"):
        build_checkpoint(UNet(1, 4, 4), params, spec)
    with pytest.raises(ValueError, match="mean"):
        build_checkpoint(net, params, {**spec, "mode": "zscore", "mean": [0.5, 0.5], "std": [1.0, 1.0]})
