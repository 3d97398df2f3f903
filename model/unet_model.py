"""The U-Net of Ronneberger et al. (2015), as in milesial's Pytorch-UNet, returning logits."""

from __future__ import annotations

import torch
import torch.nn as nn

from model.unet_parts import DoubleConv, Down, OutConv, Up


class UNet(nn.Module):
    """U-Net: four downsampling levels, a bottleneck, four upsampling levels with skip connections.

    Args:
        n_channels: input channels (1 for gray, 3 for RGB).
        n_classes: output classes; the model returns one logit per class and pixel (no softmax or sigmoid:
            the loss and the inference apply the softmax).
        base_channels: channels of the first level (64 in the paper, ≈31 M parameters), doubled at each level down.
        bilinear: bilinear upsampling instead of transposed convolutions (fewer parameters).

    Any input of at least 16 × 16 pixels works, divisible by 16 or not: ``Up`` pads to the skip connection's size.
    In training mode a batch of one needs sides of 32 pixels or more: below, the bottom level is 1 × 1, and
    BatchNorm needs more than one value per channel (``lib.training.smallest_batch``).
    """

    def __init__(self, n_channels: int, n_classes: int, base_channels: int = 64, bilinear: bool = False):
        super().__init__()
        if n_channels < 1 or n_classes < 1 or base_channels < 1:
            raise ValueError("n_channels, n_classes and base_channels must be positive")
        self.n_channels, self.n_classes = n_channels, n_classes
        self.base_channels, self.bilinear = base_channels, bilinear
        c = base_channels
        factor = 2 if bilinear else 1
        self.inc = DoubleConv(n_channels, c)
        self.down1 = Down(c, 2 * c)
        self.down2 = Down(2 * c, 4 * c)
        self.down3 = Down(4 * c, 8 * c)
        self.down4 = Down(8 * c, 16 * c // factor)
        self.up1 = Up(16 * c, 8 * c // factor, bilinear)
        self.up2 = Up(8 * c, 4 * c // factor, bilinear)
        self.up3 = Up(4 * c, 2 * c // factor, bilinear)
        self.up4 = Up(2 * c, c, bilinear)
        self.outc = OutConv(c, n_classes)

    @staticmethod
    def bottom_side(side: int) -> int:
        """The side of the bottom level's feature maps for an input side: four 2×2 poolings, each rounding down."""
        return side // 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bottom_side(min(x.shape[-2:])) < 1:
            raise ValueError(f"input sides must be at least 16 pixels, got {tuple(x.shape[-2:])}")
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x5 = self.down4(x4)
        x = self.up1(x5, x4)
        x = self.up2(x, x3)
        x = self.up3(x, x2)
        x = self.up4(x, x1)
        return self.outc(x)

    def config(self) -> dict:
        """What it takes to rebuild this model (stored in checkpoints)."""
        return {"n_channels": self.n_channels, "n_classes": self.n_classes,
                "base_channels": self.base_channels, "bilinear": self.bilinear}
