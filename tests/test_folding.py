"""BatchNorm folded into the convolutions: the folded copy computes what the model computes in eval mode."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from model import UNet
from model.folding import fold_batch_norms

# (in channels, classes, width, bilinear, input size): odd sizes pad inside Up, bilinear has no transposed convolution
CASES = [
    (1, 3, 4, False, (96, 96)),
    (1, 3, 8, True, (97, 61)),
    (3, 5, 4, False, (33, 50)),
    (5, 2, 8, False, (48, 40)),
]


def _trained(in_channels: int, classes: int, width: int, bilinear: bool) -> UNet:
    """A U-Net whose BatchNorms hold running statistics and affine parameters far from their initial 0 and 1."""
    torch.manual_seed(0)
    model = UNet(in_channels, classes, width, bilinear).train()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 2.0)
                module.bias.uniform_(-1.0, 1.0)
        for _ in range(3):  # running statistics of inputs with a mean and scale of their own
            model(3.0 + 2.0 * torch.randn(4, in_channels, 48, 48))
    return model


@pytest.mark.parametrize("case", CASES, ids=[f"in{c[0]}-cls{c[1]}-w{c[2]}-{'bil' if c[3] else 'tconv'}" for c in CASES])
def test_the_folded_copy_computes_the_eval_model_and_leaves_it_as_it_was(case):
    in_channels, classes, width, bilinear, size = case
    model = _trained(in_channels, classes, width, bilinear)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batch_norms(model)
    assert model.training  # the model keeps its mode and its weights
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not folded.training
    assert not [m for m in folded.modules() if isinstance(m, nn.BatchNorm2d)]
    n_norms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert sum(isinstance(m, nn.Identity) for m in folded.modules()) == n_norms
    x = 3.0 + 2.0 * torch.randn(2, in_channels, *size)
    with torch.no_grad():
        expected, got = model.eval()(x), folded(x)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    assert (got.argmax(1) != expected.argmax(1)).float().mean() < 1e-3  # ties apart, the same labels


def test_a_batch_norm_without_running_statistics_is_refused():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, track_running_stats=False))
    with pytest.raises(ValueError, match="keeps no running statistics"):
        fold_batch_norms(model)
