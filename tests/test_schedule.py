"""LR schedules: constant for the first ceil(E/2) epochs, then linear down to final_factor at the last epoch
(`published`); the original code's StepLR (`step`); warm-up and cosine (`cosine`)."""

from __future__ import annotations

import math

import pytest

from lib.core.schedule import cosine_factor, lr_factor, schedule_factor, step_factor

CASES = [
    # (epochs, final, expected factor per epoch)
    (1, 0.01, [1.0]),
    (2, 0.01, [1.0, 0.01]),
    (3, 0.1, [1.0, 1.0, 0.1]),
    (4, 0.0, [1.0, 1.0, 0.5, 0.0]),
    (5, 0.1, [1.0, 1.0, 1.0, 0.55, 0.1]),
]


@pytest.mark.parametrize("epochs,final,expected", CASES)
def test_factors(epochs, final, expected):
    assert [lr_factor(e, epochs, final) for e in range(epochs)] == pytest.approx(expected)


@pytest.mark.parametrize("epochs", [1, 2, 7, 10, 100])
def test_boundaries_for_many_epoch_counts(epochs):
    half = -(-epochs // 2)
    factors = [lr_factor(e, epochs, 0.01) for e in range(epochs)]
    assert factors[:half] == [1.0] * half
    assert all(a >= b for a, b in zip(factors, factors[1:]))
    if epochs > 1:
        assert factors[-1] == pytest.approx(0.01)


def test_published_schedule_is_per_epoch():
    """``schedule_factor('published', ...)`` is :func:`lr_factor` for every step of an epoch."""
    for epoch in range(5):
        assert {schedule_factor("published", epoch, k, 7, 5, 0.1) for k in range(7)} == {lr_factor(epoch, 5, 0.1)}


COSINE = [
    # (total, warm-up steps, final, expected factor per step)
    (4, 0, 0.0, [1.0, (1 + math.cos(math.pi / 4)) / 2, 0.5, (1 + math.cos(3 * math.pi / 4)) / 2]),
    (4, 2, 0.0, [0.5, 1.0, 1.0, 0.5]),
    (3, 0, 0.1, [1.0, 0.1 + 0.9 * 0.75, 0.1 + 0.9 * 0.25]),
    (1, 0, 0.1, [1.0]),
]


@pytest.mark.parametrize("total,warmup,final,expected", COSINE)
def test_cosine_factors(total, warmup, final, expected):
    assert [cosine_factor(k, total, warmup, final) for k in range(total)] == pytest.approx(expected)


@pytest.mark.parametrize("epochs,steps,fraction", [(1, 10, 0.0), (2, 450, 0.05), (3, 7, 0.3), (12, 450, 0.02)])
def test_cosine_schedule_warms_up_then_falls_to_the_final_factor(epochs, steps, fraction):
    factors = [schedule_factor("cosine", e, k, steps, epochs, 0.01, fraction) for e in range(epochs)
               for k in range(steps)]
    warmup = round(fraction * epochs * steps)
    assert factors[:warmup] == pytest.approx([(k + 1) / warmup for k in range(warmup)])
    after = factors[warmup:]
    assert after[0] == 1.0 and all(a > b for a, b in zip(after, after[1:]))
    assert 0.01 < after[-1] < 0.01 + 0.99 * 0.5 * (1 - math.cos(math.pi / len(after))) + 1e-12


def test_bad_schedule_or_position_raises():
    with pytest.raises(ValueError):
        schedule_factor("linear", 0, 0, 10, 2, 0.1)
    with pytest.raises(ValueError):
        cosine_factor(4, 4, 0, 0.1)
    with pytest.raises(ValueError):
        cosine_factor(0, 4, 4, 0.1)


def test_bad_epoch_raises():
    with pytest.raises(ValueError):
        lr_factor(3, 3, 0.1)
    with pytest.raises(ValueError):
        step_factor(3, 3)


@pytest.mark.parametrize("epochs", [4, 7, 10, 100])
def test_the_step_schedule_is_the_original_codes_step_lr(epochs):
    """``step``: the original project's ``StepLR(step_size=int(0.3 * epochs), gamma=0.1)``, stepped after each epoch."""
    import torch

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=int(0.3 * epochs), gamma=0.1)
    expected = []
    for _ in range(epochs):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    for epoch in range(epochs):
        assert {schedule_factor("step", epoch, k, 5, epochs, 0.5) for k in range(5)} == {step_factor(epoch, epochs)}
    assert [step_factor(e, epochs) for e in range(epochs)] == pytest.approx(expected, rel=1e-12)


def test_the_step_schedule_of_fewer_than_4_epochs_steps_every_epoch():
    assert [step_factor(e, 3) for e in range(3)] == pytest.approx([1.0, 0.1, 0.01])


def test_every_schedule_the_parameters_accept_gives_a_rate():
    from lib.core.params import SCHEDULES

    for schedule in SCHEDULES:
        assert 0 < schedule_factor(schedule, 1, 0, 3, 4, 0.1, 0.1) <= 1
