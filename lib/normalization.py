"""Input normalisation: per-channel mean and standard deviation of the training patches, stored in checkpoints."""

from __future__ import annotations

import torch


def compute_normalization(images: torch.Tensor) -> dict[str, list[float]]:
    """Per-channel mean and std (in [0, 1] units) of uint8 images N×C×H×W."""
    x = images.double() / 255.0
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp(min=1e-3)
    return {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}


def normalize(images: torch.Tensor, normalization: dict[str, list[float]]) -> torch.Tensor:
    """uint8 (or [0, 255] float) images N×C×H×W → float32 ``(x / 255 - mean) / std``."""
    mean = torch.tensor(normalization["mean"], dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    std = torch.tensor(normalization["std"], dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    return (images.float() / 255.0 - mean) / std
