"""Evaluating a segmenter on a set of images: one confusion matrix per image, the set's metrics, and their table.

predict.py (files streamed band by band), the inference notebook and the README figures all report through here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from dataloader.pairs import ImagePair, load_pair
from lib.core.metrics import confusion_matrix, iou_per_class, mean_iou
from lib.segmenter import Segmenter


def image_confusion(labels: torch.Tensor, mask: np.ndarray, n_classes: int) -> torch.Tensor:
    """Confusion matrix (true class × predicted class) of a predicted label map, or a block of it, against its mask."""
    return confusion_matrix(torch.from_numpy(mask.astype(np.int64)), labels.cpu(), n_classes)


@dataclass
class Segmented:
    """One image of a set: its pair, the image and mask as read, the class probabilities (C×H×W) and labels (H×W)
    on the CPU, and the confusion matrix."""

    pair: ImagePair
    image: np.ndarray
    truth: np.ndarray
    probabilities: torch.Tensor
    labels: torch.Tensor
    confusion: torch.Tensor


def segment_pairs(segmenter: Segmenter, pairs: list[ImagePair]) -> Iterator[Segmented]:
    """Segment the images of ``pairs`` one by one in memory (:meth:`Segmenter.predict`) and score each against its
    mask. Read with the model's data options (alpha, channel axis); the caller keeps what it needs of each.

    Raises:
        UserError: an image or mask that cannot be read, or that the model cannot take.
    """
    n_classes = len(segmenter.class_names)
    for pair in pairs:
        image, truth = load_pair(pair, segmenter.class_colors, **segmenter.params.data.read_options)
        probabilities, labels = segmenter.predict(image, str(pair.image))
        yield Segmented(pair, image, truth, probabilities.float().cpu(), labels.cpu(),
                        image_confusion(labels, truth, n_classes))


def summarize(confusions: list[torch.Tensor], class_names: list[str]) -> dict:
    """Metrics of a set of images: Keras-style mIoU and per-class IoU over one confusion matrix for all images, and
    the mean over images of each image's mIoU (the published notebook shows each image's)."""
    total = torch.stack(confusions).sum(0)
    per_image = [mean_iou(cm) for cm in confusions]
    iou = iou_per_class(total)
    return {"miou": mean_iou(total), "iou": {n: float(v) for n, v in zip(class_names, iou)},
            "mean_image_miou": float(np.nanmean(per_image)) if per_image else float("nan"),
            "n_images": len(confusions), "per_image_miou": per_image}


def format_table(metrics: dict) -> str:
    """Per-class IoU, mIoU over the set, and the mean of per-image mIoU, as a small text table."""
    width = max(len(n) for n in [*metrics["iou"], "mean of per-image mIoU"]) + 2
    lines = [f"{'class':<{width}}IoU"]
    lines += [f"{name:<{width}}{value:.4f}" for name, value in metrics["iou"].items()]
    lines.append(f"{'mIoU':<{width}}{metrics['miou']:.4f}   (one confusion matrix over {metrics['n_images']} "
                 f"image{'s' if metrics['n_images'] != 1 else ''})")
    lines.append(f"{'mean of per-image mIoU':<{width}}{metrics['mean_image_miou']:.4f}")
    return "\n".join(lines)


def format_image_table(image_names: list[str], confusions: list[torch.Tensor], class_names: list[str]) -> str:
    """Each image's mIoU and class IoUs as a text table, each column as wide as its name (a fixed width ran long
    class names into each other)."""
    first = max(len(n) for n in [*image_names, "image"]) + 2
    widths = [max(len(n), 6) + 2 for n in class_names]
    lines = [f"{'image':<{first}}{'mIoU':>8}" + "".join(f"{n:>{w}}" for n, w in zip(class_names, widths))]
    for name, cm in zip(image_names, confusions):
        lines.append(f"{name:<{first}}{mean_iou(cm):>8.4f}"
                     + "".join(f"{v:>{w}.4f}" for v, w in zip(iou_per_class(cm).tolist(), widths)))
    return "\n".join(lines)


def metrics_json(metrics: dict) -> str:
    """The metrics as JSON, NaN (a class absent everywhere) written as null; names are left as they are."""
    return json.dumps(_nan_as_none(metrics), indent=2, allow_nan=False) + "\n"


def _nan_as_none(value):
    """``value`` with every float NaN (at any depth) replaced by None, and NumPy and torch scalars as floats."""
    if isinstance(value, dict):
        return {k: _nan_as_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_as_none(v) for v in value]
    if isinstance(value, (str, bool, int)) or value is None:
        return value
    number = float(value)
    return None if math.isnan(number) else number
