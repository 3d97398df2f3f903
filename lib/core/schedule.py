"""The learning-rate schedule: constant for the first half of the epochs, then a linear decrease."""

from __future__ import annotations

import math

import torch


def lr_factor(epoch: int, epochs: int, final_factor: float) -> float:
    """Multiplier of the base learning rate during ``epoch`` (0-based) of ``epochs``.

    The first ``ceil(epochs / 2)`` epochs run at the base rate; the remaining ``m = epochs - ceil(epochs / 2)``
    epochs decrease linearly so that the last one runs at ``final_factor``:
    ``factor(e) = 1 - (1 - final_factor) * (e - h + 1) / m`` for ``e >= h = ceil(epochs / 2)``.
    With one epoch there is no decay; with two, the second runs at ``final_factor``.

    Raises:
        ValueError: ``epochs < 1`` or ``epoch`` outside ``0..epochs-1``.
    """
    if epochs < 1 or not 0 <= epoch < epochs:
        raise ValueError(f"epoch {epoch} is outside 0..{epochs - 1}")
    half = math.ceil(epochs / 2)
    if epoch < half:
        return 1.0
    return 1.0 - (1.0 - final_factor) * (epoch - half + 1) / (epochs - half)


def make_scheduler(optimizer: torch.optim.Optimizer, epochs: int, final_factor: float,
                   base_lr: float | None = None, start_epoch: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-epoch LambdaLR following :func:`lr_factor` (call ``step()`` after each epoch).

    The rate is a function of the epoch alone, so a resumed run needs no scheduler state: ``start_epoch`` starts the
    schedule there (the optimiser's rate is set to that epoch's), with ``base_lr`` as the base rate of every group
    (default: the groups' current rates).
    """
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"] if base_lr is None else base_lr
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda e: lr_factor(min(e, epochs - 1), epochs, final_factor), last_epoch=start_epoch - 1)
