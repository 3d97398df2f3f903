"""Losses on logits: multi-class cross-entropy (optionally class-weighted), and Dice + cross-entropy."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy over the pixels, each weighted by its class's weight if given: ``F.cross_entropy``, except
    that a batch whose pixels all have weight 0 (a patch of background alone with the background weighted 0) gives 0
    instead of 0 / 0 = NaN, which would stop training as a diverged run. On CUDA with deterministic algorithms
    (train.py ``--deterministic``) it is :func:`masked_cross_entropy`: NLLLoss has no deterministic CUDA kernel."""
    if logits.is_cuda and torch.are_deterministic_algorithms_enabled():
        return masked_cross_entropy(logits, target, weight)
    if weight is None:
        return F.cross_entropy(logits, target)
    return F.cross_entropy(logits, target, weight=weight, reduction="sum") / _weight_total(weight, target)


def _weight_total(weight: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The summed class weights of the pixels, the weighted mean's divisor: at least the smallest float32, so that
    a batch whose pixels all weigh 0 gives 0, not 0 / 0."""
    return weight[target].sum().clamp_min(torch.finfo(torch.float32).tiny)


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
                         ) -> torch.Tensor:
    """:func:`cross_entropy` from elementwise operations and sums alone, forward and backward (deterministic on any
    device): each pixel's log-probability of its class is picked where a class mask is true, not gathered.

    Args:
        logits: N×C×… float logits.
        target: N×… int64 class indices.
        weight: optional C class weights.

    Returns:
        The scalar loss, equal to :func:`cross_entropy`'s up to the order of the sums.
    """
    classes = torch.arange(logits.shape[1], device=logits.device).view(1, -1, *([1] * (logits.ndim - 2)))
    # log p of each pixel's class; where(), not a product with the mask: 0 × -inf would be NaN
    picked = torch.where(target.unsqueeze(1) == classes, logits.log_softmax(1), 0.0).sum(1)
    if weight is None:
        return -picked.mean()
    return -(picked * weight[target]).sum() / _weight_total(weight, target)


def _cross_entropy_sums(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """:func:`cross_entropy` of a batch as two sums that add over batches: the weighted losses and their weights
    (the pixels, unweighted); the loss of several batches is the first sum over the second."""
    count = target.new_tensor(target.numel(), dtype=torch.float32) if weight is None else _weight_total(weight, target)
    return torch.stack([cross_entropy(logits, target, weight) * count, count])


class CrossEntropyLoss(nn.Module):
    """:func:`cross_entropy` as a module (the class weights a buffer, moved with it). :meth:`sums` and
    :meth:`from_sums` give the loss of a set of batches as the loss of one: the validation loss then depends neither
    on the batch size nor on the number of processes."""

    def __init__(self, weight: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return cross_entropy(logits, target, self.weight)

    def sums(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The batch's statistics that add over batches (1-D)."""
        return _cross_entropy_sums(logits, target, self.weight)

    def from_sums(self, sums: torch.Tensor) -> torch.Tensor:
        """The loss of the batches whose :meth:`sums` were added."""
        return sums[0] / sums[1].clamp_min(torch.finfo(torch.float32).tiny)


class DiceCELoss(CrossEntropyLoss):
    """Cross-entropy plus soft Dice loss, for unbalanced classes: the Dice term is the mean over all classes of
    ``1 - (2 |P∩T| + smooth) / (|P| + |T| + smooth)``, so a class absent from the batch and hardly predicted scores
    about 0 but counts in the mean (as MONAI's DiceLoss with its defaults).

    Args:
        weight: optional class weights for the cross-entropy term.
        smooth: added to numerator and denominator of the Dice ratio.
    """

    def __init__(self, weight: torch.Tensor | None = None, smooth: float = 1.0):
        super().__init__(weight)
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return cross_entropy(logits, target, self.weight) + self._dice(*self._overlaps(logits, target))

    def sums(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.cat([_cross_entropy_sums(logits, target, self.weight), *self._overlaps(logits, target)])

    def from_sums(self, sums: torch.Tensor) -> torch.Tensor:
        return super().from_sums(sums[:2]) + self._dice(*sums[2:].chunk(2))

    @staticmethod
    def _overlaps(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per class: the soft intersection of prediction and truth, and the sum of their sizes."""
        probs = logits.float().softmax(1)
        onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
        dims = (0, 2, 3)
        return (probs * onehot).sum(dims), probs.sum(dims) + onehot.sum(dims)

    def _dice(self, intersection: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
        return (1 - (2 * intersection + self.smooth) / (total + self.smooth)).mean()


def make_loss(kind: str, class_weights: list[float] | None, device: torch.device) -> nn.Module:
    """``ce``: cross-entropy on logits; ``dice_ce``: :class:`DiceCELoss`. Class weights apply to the CE term."""
    weight = torch.tensor(class_weights, dtype=torch.float32, device=device) if class_weights else None
    if kind == "ce":
        return CrossEntropyLoss(weight).to(device)
    if kind == "dice_ce":
        return DiceCELoss(weight).to(device)
    raise ValueError(f"unknown loss {kind!r}")
