"""Losses on logits: multi-class cross-entropy (optionally class-weighted), and Dice + cross-entropy."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class DiceCELoss(nn.Module):
    """Cross-entropy plus soft Dice loss (mean over classes present in the batch or predicted), for unbalanced classes.

    Args:
        weight: optional class weights for the cross-entropy term.
        smooth: added to numerator and denominator of the Dice ratio.
    """

    def __init__(self, weight: torch.Tensor | None = None, smooth: float = 1.0):
        super().__init__()
        self.register_buffer("weight", weight if weight is not None else None)
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits, target, weight=self.weight)
        probs = logits.float().softmax(1)
        onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
        dims = (0, 2, 3)
        intersection = (probs * onehot).sum(dims)
        total = probs.sum(dims) + onehot.sum(dims)
        dice = (2 * intersection + self.smooth) / (total + self.smooth)
        return ce + (1 - dice).mean()


def make_loss(kind: str, class_weights: list[float] | None, device: torch.device) -> nn.Module:
    """``ce``: cross-entropy on logits; ``dice_ce``: :class:`DiceCELoss`. Class weights apply to the CE term."""
    weight = torch.tensor(class_weights, dtype=torch.float32, device=device) if class_weights else None
    if kind == "ce":
        return nn.CrossEntropyLoss(weight=weight)
    if kind == "dice_ce":
        return DiceCELoss(weight).to(device)
    raise ValueError(f"unknown loss {kind!r}")
