"""A trained checkpoint ready to segment images: the model, its input normalisation, classes and window settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lib.allocator import retain_freed_memory
from lib.device import memory_format, resolve_precision, select_device
from lib.errors import UserError
from lib.inference import sliding_window_predict
from lib.metrics import confusion_matrix, iou_per_class, mean_iou
from lib.normalization import normalize
from lib.params import InferenceParams, Params, params_from_dict
from model.checkpoint import load_checkpoint, model_from_checkpoint
from model.unet_model import UNet


@dataclass
class Segmenter:
    """Everything inference needs, read from a checkpoint alone.

    Use :meth:`from_checkpoint`, then :meth:`predict` on uint8 images.
    """

    model: UNet
    normalization: dict
    class_names: list[str]
    class_colors: list[tuple[int, int, int]]
    window: int
    device: torch.device
    precision: str
    inference: InferenceParams
    params: Params

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto", precision: str = "auto",
                        inference: InferenceParams | None = None) -> Segmenter:
        """Load a checkpoint for inference.

        Args:
            path: a ``.pth`` written by train.py.
            device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
            precision: ``auto`` (bf16 on CPUs with native bf16, fp32 elsewhere), ``fp32``, ``bf16`` or ``fp16``.
            inference: overlap, blend, TTA and window batch size (default: those stored with the checkpoint).

        Raises:
            UserError: the file is missing, not a checkpoint, or does not fit the model.
        """
        state = load_checkpoint(path)
        dev = select_device(device)
        if dev.type == "cpu":
            retain_freed_memory()
        model = model_from_checkpoint(state, path).to(dev, memory_format=memory_format(dev)).eval()
        params = params_from_dict(state["params"])
        return cls(model, state["normalization"], list(state["class_names"]),
                   [tuple(c) for c in state["class_colors"]], params.patches.size, dev,
                   resolve_precision(precision, dev, amp=True), inference or params.inference, params)

    @property
    def n_channels(self) -> int:
        return self.model.n_channels

    def to_input(self, image: np.ndarray, name: str = "image") -> torch.Tensor:
        """uint8 H×W or H×W×C image → normalised C×H×W float tensor; gray/colour converted to the model's channels.

        Raises:
            UserError: the image has a channel count the model cannot take.
        """
        x = torch.from_numpy(np.array(image, dtype=np.uint8))  # a writable copy (decoded images are read-only)
        x = x[None] if x.ndim == 2 else x.permute(2, 0, 1)
        if x.shape[0] != self.n_channels:
            if x.shape[0] == 3 and self.n_channels == 1:
                x = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]).round().clamp(0, 255)[None]
            elif x.shape[0] == 1 and self.n_channels == 3:
                x = x.expand(3, -1, -1)
            else:
                raise UserError(f"{name}: has {x.shape[0]} channels, the model expects {self.n_channels}")
        return normalize(x[None], self.normalization)[0]

    def predict(self, image: np.ndarray, name: str = "image") -> tuple[torch.Tensor, torch.Tensor]:
        """Class probabilities (C×H×W) and labels (H×W) of a whole uint8 image, by :func:`sliding_window_predict`."""
        p = self.inference
        return sliding_window_predict(self.model, self.to_input(image, name), window=self.window,
                                      overlap=p.overlap, batch_size=p.batch_size, blend=p.blend, tta=p.tta,
                                      precision=self.precision, device=self.device,
                                      memory_format=memory_format(self.device))


def summarize(confusions: list[torch.Tensor], class_names: list[str]) -> dict:
    """Metrics of a set of images: Keras-style mIoU and per-class IoU over one confusion matrix for all images, and
    the published notebook's figure, the mean over images of each image's mIoU."""
    total = torch.stack(confusions).sum(0)
    per_image = [mean_iou(cm) for cm in confusions]
    iou = iou_per_class(total)
    return {"miou": mean_iou(total), "iou": {n: float(v) for n, v in zip(class_names, iou)},
            "mean_image_miou": float(np.nanmean(per_image)) if per_image else float("nan"),
            "n_images": len(confusions), "per_image_miou": per_image}


def image_confusion(labels: torch.Tensor, mask: np.ndarray, n_classes: int) -> torch.Tensor:
    """Confusion matrix of one predicted label map against its mask."""
    return confusion_matrix(torch.from_numpy(mask.astype(np.int64)), labels.cpu(), n_classes)
