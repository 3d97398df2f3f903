"""LR schedule: constant for the first ceil(E/2) epochs, then linear down to final_factor at the last epoch."""

from __future__ import annotations

import pytest
import torch

from lib.core.schedule import lr_factor, make_scheduler

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


def test_scheduler_sets_the_optimizer_rate_each_epoch():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = make_scheduler(opt, 4, 0.0)
    rates = []
    for _ in range(4):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert rates == pytest.approx([0.1, 0.1, 0.05, 0.0])


@pytest.mark.parametrize("start", [1, 2, 3, 5])
def test_a_scheduler_started_at_an_epoch_continues_the_uninterrupted_one(start):
    """Resuming needs no scheduler state: a schedule started at ``start`` (from an optimiser whose rate is stale,
    as after loading its state) gives the rates of the uninterrupted one, also with a new base rate."""
    def rates(opt, sched, n):
        out = []
        for _ in range(n):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    whole = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.2)
    expected = rates(whole, make_scheduler(whole, 6, 0.1), 6)
    stale = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0123)
    assert rates(stale, make_scheduler(stale, 6, 0.1, 0.2, start), 6 - start) == pytest.approx(expected[start:])
    doubled = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0123)
    got = rates(doubled, make_scheduler(doubled, 6, 0.1, 0.4, start), 6 - start)
    assert got == pytest.approx([2 * r for r in expected[start:]])


def test_bad_epoch_raises():
    with pytest.raises(ValueError):
        lr_factor(3, 3, 0.1)
