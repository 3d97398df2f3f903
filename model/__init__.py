"""The U-Net (parts and full model) and checkpoint handling."""

from model.unet_model import UNet

__all__ = ["UNet"]
