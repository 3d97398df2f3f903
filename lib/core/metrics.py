"""Mean IoU the Keras way: one confusion matrix over all pixels, IoU per class, mean over classes that occur."""

from __future__ import annotations

import torch


def confusion_matrix(target: torch.Tensor, pred: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Confusion matrix ``cm[t, p]`` = number of pixels of true class t predicted as p.

    Args:
        target: integer class labels, any shape.
        pred: integer class labels, same shape.
        n_classes: number of classes.

    Returns:
        int64 tensor ``n_classes × n_classes`` (on the inputs' device).

    Raises:
        ValueError: shapes differ, a label is outside ``0..n_classes-1``, or the labels are floats (a mask resized
            with interpolation: its fractions were cut to integers).
    """
    target, pred = torch.as_tensor(target), torch.as_tensor(pred)  # (NumPy arrays too)
    if target.is_floating_point() or pred.is_floating_point():
        raise ValueError(f"labels must be integers, got {target.dtype} and {pred.dtype} (resize masks with "
                         "nearest-neighbour, not interpolation)")
    if target.shape != pred.shape:
        raise ValueError(f"target shape {tuple(target.shape)} differs from prediction shape {tuple(pred.shape)}")
    t, p = target.reshape(-1).long(), pred.reshape(-1).long()
    if t.numel() and (min(int(t.min()), int(p.min())) < 0 or max(int(t.max()), int(p.max())) >= n_classes):
        raise ValueError(f"labels must lie in 0..{n_classes - 1}")
    return torch.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def iou_per_class(cm: torch.Tensor) -> torch.Tensor:
    """IoU_c = TP / (TP + FP + FN) for each class; NaN where the denominator is 0 (class absent from truth and
    prediction). A class predicted but absent from the truth gets 0."""
    cm = torch.as_tensor(cm).double()
    tp = cm.diagonal()
    denom = cm.sum(0) + cm.sum(1) - tp
    return torch.where(denom > 0, tp / denom.clamp(min=1), torch.full_like(tp, float("nan")))


def mean_iou(cm: torch.Tensor) -> float:
    """Mean of :func:`iou_per_class` over the classes whose denominator is non-zero (Keras' MeanIoU); NaN if none."""
    iou = iou_per_class(cm)
    valid = ~torch.isnan(iou)
    return float(iou[valid].mean()) if bool(valid.any()) else float("nan")
