"""Learning-rate schedules. ``published``: constant for the first half of the epochs, then a linear decrease, epoch by
epoch (this project's reading of the published text, "decreased towards the second half of the epochs"). ``step``:
the original code's ``StepLR``, ×0.1 every 30% of the epochs. ``cosine``: a linear warm-up, then a half cosine towards
the final factor, step by step (for short runs, where an epoch is a large part of the training); its last step runs
one step short of the factor, just above it (:func:`cosine_factor`)."""

from __future__ import annotations

import math

import torch

from lib.core.params import SCHEDULES


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


# the original code's optim.lr_scheduler.StepLR(optimizer, step_size=int(0.3 * epochs), gamma=0.1)
STEP_EVERY, STEP_GAMMA = 0.3, 0.1


def step_factor(epoch: int, epochs: int) -> float:
    """Multiplier of the base learning rate during ``epoch`` (0-based) of ``epochs`` under the original code's
    schedule: ×0.1 every ``int(0.3 × epochs)`` epochs (every epoch in runs of fewer than 4, where StepLR's step of
    0 epochs would fail), whatever the final factor.

    Raises:
        ValueError: ``epochs < 1`` or ``epoch`` outside ``0..epochs-1``.
    """
    if epochs < 1 or not 0 <= epoch < epochs:
        raise ValueError(f"epoch {epoch} is outside 0..{epochs - 1}")
    return STEP_GAMMA ** (epoch // max(1, int(STEP_EVERY * epochs)))


def cosine_factor(step: int, total: int, warmup: int, final_factor: float) -> float:
    """Multiplier of the base rate at ``step`` (0-based) of ``total``: ``(step + 1) / warmup`` during the first
    ``warmup`` steps, then ``final + (1 - final)(1 + cos(π t)) / 2`` with ``t`` going from 0 at the end of the
    warm-up to ``(total - warmup - 1) / (total - warmup)`` at the last step.

    Raises:
        ValueError: ``step`` outside ``0..total-1`` or ``warmup`` outside ``0..total-1``.
    """
    if not 0 <= step < total or not 0 <= warmup < total:
        raise ValueError(f"step {step} / warm-up {warmup} outside 0..{total - 1}")
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / (total - warmup)
    return final_factor + (1.0 - final_factor) * (1.0 + math.cos(math.pi * t)) / 2


def schedule_factor(schedule: str, epoch: int, step: int, steps_per_epoch: int, epochs: int, final_factor: float,
                    warmup_fraction: float = 0.0) -> float:
    """Multiplier of the base rate for ``step`` of ``epoch`` (both 0-based): a function of where the run stands
    alone, so a resumed run needs no scheduler state.

    Args:
        schedule: ``published`` (:func:`lr_factor`, per epoch), ``step`` (:func:`step_factor`, per epoch) or
            ``cosine`` (:func:`cosine_factor`, per step).
        epoch, step: where the run stands.
        steps_per_epoch, epochs: the run's length.
        final_factor: the multiplier at the end (``published`` and ``cosine``).
        warmup_fraction: the share of all steps that warm up (``cosine`` only).

    Raises:
        ValueError: an unknown schedule, or a position outside the run.
    """
    if schedule == "published":
        return lr_factor(epoch, epochs, final_factor)
    if schedule == "step":
        return step_factor(epoch, epochs)
    if schedule == "cosine":
        total = epochs * steps_per_epoch
        warmup = min(round(warmup_fraction * total), total - 1)
        return cosine_factor(epoch * steps_per_epoch + step, total, warmup, final_factor)
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")


def set_rate(optimizer: torch.optim.Optimizer, rate: float) -> None:
    """The learning rate of every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = rate
