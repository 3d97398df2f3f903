"""Keras-style mean IoU: hand-computed cases, agreement with torchmetrics, and the metrics JSON."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassJaccardIndex

from lib.core.metrics import confusion_matrix, iou_per_class, mean_iou
from lib.evaluation import format_table, metrics_json


def test_hand_computed_case_with_absent_and_spurious_classes():
    # 4 classes. class 3 is absent from truth and prediction (ignored);
    # class 2 is predicted once but absent from the truth (IoU 0, counted).
    target = torch.tensor([0, 0, 0, 1, 1, 1, 0, 1])
    pred = torch.tensor([0, 0, 1, 1, 1, 0, 2, 1])
    cm = confusion_matrix(target, pred, 4)
    assert cm.tolist() == [[2, 1, 1, 0], [1, 3, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    iou = iou_per_class(cm)
    assert iou[0].item() == pytest.approx(2 / (4 + 3 - 2))
    assert iou[1].item() == pytest.approx(3 / (4 + 4 - 3))
    assert iou[2].item() == 0.0
    assert math.isnan(iou[3].item())
    assert mean_iou(cm) == pytest.approx((2 / 5 + 3 / 5 + 0) / 3)


def test_perfect_prediction_and_empty_input():
    labels = torch.randint(0, 3, (5, 9, 9))
    assert mean_iou(confusion_matrix(labels, labels, 3)) == 1.0
    assert math.isnan(mean_iou(torch.zeros(3, 3, dtype=torch.long)))


def test_one_confusion_matrix_over_all_images_not_a_mean_of_images():
    a_t, a_p = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 1, 1])
    b_t, b_p = torch.tensor([0, 0, 0, 0, 0, 0, 0, 0]), torch.tensor([0, 0, 0, 0, 0, 0, 1, 1])
    total = confusion_matrix(a_t, a_p, 2) + confusion_matrix(b_t, b_p, 2)
    assert mean_iou(total) == pytest.approx((8 / 10 + 2 / 4) / 2)


def test_bad_labels_raise():
    with pytest.raises(ValueError):
        confusion_matrix(torch.tensor([0, 3]), torch.tensor([0, 1]), 3)
    with pytest.raises(ValueError):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0]), 3)


@pytest.mark.parametrize("n_classes,seed", [(2, 0), (3, 1), (5, 2), (8, 3)])
def test_agrees_with_torchmetrics_macro_jaccard(n_classes, seed):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, n_classes, (4, 32, 32), generator=g)
    pred = torch.where(torch.rand(4, 32, 32, generator=g) < 0.7, target,
                       torch.randint(0, n_classes, (4, 32, 32), generator=g))
    reference = MulticlassJaccardIndex(num_classes=n_classes, average="macro")(pred, target)
    assert mean_iou(confusion_matrix(target, pred, n_classes)) == pytest.approx(float(reference), abs=1e-6)


def test_metrics_json_writes_nan_as_null_and_leaves_names_alone():
    metrics = {"miou": 0.5, "iou": {"NaN_class": float("nan"), "line": np.float64(0.25)},
               "per_image": [{"name": "NaNO3_crystal.tif", "miou": torch.tensor(float("nan"))}],
               "images": ["NaNO3_crystal.tif"], "n_images": 1}
    text = metrics_json(metrics)
    assert json.loads(text) == {"miou": 0.5, "iou": {"NaN_class": None, "line": 0.25},
                                "per_image": [{"name": "NaNO3_crystal.tif", "miou": None}],
                                "images": ["NaNO3_crystal.tif"], "n_images": 1}
    assert "NaN" in text and "null" in text  # the names kept, the values written as JSON allows


@pytest.mark.parametrize("n_images,said", [(1, "over 1 image)"), (2, "over 2 images)")])
def test_the_metrics_table_counts_its_images_in_words(n_images, said):
    """A single image's table read "one confusion matrix over 1 images"."""
    table = format_table({"miou": 0.5, "iou": {"background": 1.0, "line": 0.0}, "mean_image_miou": 0.5,
                          "n_images": n_images})
    assert said in table.splitlines()[3]


def test_labels_of_numpy_count_and_float_labels_are_refused():
    """Float labels (a mask resized with interpolation) were cut to integers without a word; NumPy arrays raised an
    AttributeError."""
    target, pred = np.array([[0, 1], [2, 2]]), np.array([[0, 2], [2, 1]], np.uint8)
    cm = confusion_matrix(target, pred, 3)
    assert torch.equal(cm, confusion_matrix(torch.as_tensor(target), torch.as_tensor(pred), 3))
    assert math.isclose(mean_iou(cm.numpy()), mean_iou(cm))
    with pytest.raises(ValueError, match="labels must be integers, got torch.float32"):
        confusion_matrix(torch.tensor([1.7, 0.2]), torch.tensor([1, 0]), 2)
