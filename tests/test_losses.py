"""Losses: class-weighted cross-entropy equals PyTorch's, a batch whose pixels all weigh 0 gives 0, not NaN, and
the loss of summed batch statistics is that of one batch of them all (the validation loss)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lib.core.losses import make_loss

# (id, class weights, target of the batch: "random" or one class everywhere)
CASES = [
    ("unweighted", None, "random"),
    ("weighted", [0.5, 1.0, 2.0], "random"),
    ("background-weighted-0", [0.0, 1.0, 1.0], "random"),
    ("one-class-everywhere", [0.5, 1.0, 2.0], 2),
]


def _batch(target: str | int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(4, 3, 12, 10, generator=g)
    labels = torch.randint(0, 3, (4, 12, 10), generator=g) if target == "random" else torch.full((4, 12, 10), target)
    return logits, labels


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_cross_entropy_equals_pytorchs_weighted_mean(case):
    _, weights, target = case
    logits, labels = _batch(target)
    w = torch.tensor(weights) if weights else None
    got = make_loss("ce", weights, torch.device("cpu"))(logits, labels)
    expected = F.cross_entropy(logits, labels, weight=w)
    assert torch.allclose(got, expected, rtol=1e-6, atol=0)
    if weights is None:
        assert torch.equal(got, expected)  # the default path is PyTorch's own


@pytest.mark.parametrize("kind", ["ce", "dice_ce"])
def test_a_batch_of_zero_weight_pixels_gives_a_finite_loss_and_gradient(kind):
    """Background weighted 0 and a batch of background alone: PyTorch's weighted mean is 0 / 0."""
    logits, labels = _batch(0)
    logits.requires_grad_(True)
    assert torch.isnan(F.cross_entropy(logits, labels, weight=torch.tensor([0.0, 1.0, 1.0])))
    loss = make_loss(kind, [0.0, 1.0, 1.0], torch.device("cpu"))(logits, labels)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    if kind == "ce":
        assert loss.item() == 0 and not logits.grad.any()


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_the_masked_cross_entropy_equals_the_usual_one_with_its_gradient(case):
    """What deterministic CUDA training computes instead of NLLLoss (which has no deterministic CUDA kernel)."""
    from lib.core.losses import cross_entropy, masked_cross_entropy

    _, weights, target = case
    logits, labels = _batch(target)
    w = torch.tensor(weights) if weights else None
    a, b = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    usual, masked = cross_entropy(a, labels, w), masked_cross_entropy(b, labels, w)
    usual.backward()
    masked.backward()
    torch.testing.assert_close(masked, usual, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-8)


def test_the_masked_cross_entropy_stays_finite_where_a_class_has_no_probability_at_all():
    from lib.core.losses import masked_cross_entropy

    logits, labels = _batch(1)
    logits[:, 0] = float("-inf")  # class 0, never the target here, has probability 0 exactly
    assert torch.isfinite(masked_cross_entropy(logits, labels))
    torch.testing.assert_close(masked_cross_entropy(logits, labels), F.cross_entropy(logits, labels))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", ["ce", "dice_ce"])
def test_losses_run_with_deterministic_algorithms_on_cuda(kind):
    logits, labels = (t.cuda() for t in _batch("random"))
    logits.requires_grad_(True)
    torch.use_deterministic_algorithms(True)
    try:
        loss_fn = make_loss(kind, [0.5, 1.0, 2.0], torch.device("cuda"))
        loss_fn(logits, labels).backward()
        first = logits.grad.clone()
        logits.grad = None
        loss_fn(logits, labels).backward()
    finally:
        torch.use_deterministic_algorithms(False)
    assert torch.equal(logits.grad, first)


# (id, loss, class weights)
SUMMED = [("ce", "ce", None), ("weighted-ce", "ce", [0.1, 1.0, 5.0]), ("dice-ce", "dice_ce", None),
          ("weighted-dice-ce", "dice_ce", [0.1, 1.0, 5.0]), ("zero-weights", "ce", [0.0, 0.0, 0.0])]


@pytest.mark.parametrize("case", SUMMED, ids=[c[0] for c in SUMMED])
def test_the_loss_of_summed_batches_is_the_loss_of_one_batch_of_them_all(case):
    """``from_sums`` of the batches' ``sums`` is the loss of all their pixels at once, however they are split (a
    class-weighted mean or a Dice term of each batch, averaged, moved with the batch size), and a single batch's
    ``from_sums(sums)`` is its loss."""
    _, kind, weights = case
    loss_fn = make_loss(kind, weights, torch.device("cpu"))
    logits, labels = _batch("random", seed=1)
    labels[:2] = 0  # batches that differ in their classes, as patches of background alone do
    whole = loss_fn(logits, labels)
    assert torch.allclose(loss_fn.from_sums(loss_fn.sums(logits, labels)), whole, rtol=1e-6, atol=1e-7)
    for size in (1, 3):
        sums = sum(loss_fn.sums(logits[k:k + size], labels[k:k + size]).double() for k in range(0, 4, size))
        assert torch.allclose(loss_fn.from_sums(sums).float(), whole, rtol=1e-6, atol=1e-7), size


@pytest.mark.parametrize("kind, weights", [("ce", [0.1, 1.0, 5.0]), ("dice_ce", None)])
def test_the_validation_loss_does_not_depend_on_the_batch_size(kind, weights):
    """``evaluate`` averaged each batch's loss weighted by its patches: with class weights or Dice it moved with the
    batch size (1.54, 1.33 and 1.42 at batches of 10, 5 and 3 in the report), and so with the number of processes."""
    from lib.core.device import Runtime
    from lib.training import evaluate

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (10, 1, 8, 8), dtype=torch.uint8, generator=g)
    masks = torch.randint(0, 3, (10, 8, 8), dtype=torch.uint8, generator=g)
    masks[:5] = 0  # patches of background alone
    torch.manual_seed(0)
    model = torch.nn.Conv2d(1, 3, 1)
    cpu = torch.device("cpu")
    losses = {size: evaluate(model, images, masks, torch.arange(10), {"mean": [100.0], "std": [50.0]},
                             make_loss(kind, weights, cpu), 3, Runtime(cpu), batch_size=size)[0]
              for size in (10, 5, 3)}
    assert losses[5] == pytest.approx(losses[10], rel=1e-6) and losses[3] == pytest.approx(losses[10], rel=1e-6)
