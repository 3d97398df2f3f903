"""A trained checkpoint ready to segment images: the model, its input normalisation, classes and window settings."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lib.core.allocator import retain_freed_memory
from lib.core.cuda_graphs import GraphedCall
from lib.core.device import inference_precision, memory_format, select_device
from lib.core.errors import UserError
from lib.core.imageio import ImageHeader, ImageRows
from lib.core.inference import sliding_window_bands, sliding_window_predict
from lib.core.normalization import as_spec, normalize
from lib.core.params import InferenceParams, Params
from lib.core.statistics import band_statistics
from model.checkpoint import checkpoint_params, load_checkpoint, model_from_checkpoint
from model.folding import fold_batch_norms
from model.unet_model import UNet

# the largest image predict_bands segments whole with CUDA graphs (held on the GPU with the graph's buffers)
GRAPHED_MEGAPIXELS = 16


@dataclass
class Segmenter:
    """Everything inference needs, read from a checkpoint alone.

    Use :meth:`from_checkpoint`, then :meth:`predict` on images as :func:`lib.core.imageio.read_image` returns them.
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
    cuda_graphs: bool = False
    # the graphed call and the model and window options it was made with (see _graph_predict)
    _graph_call: tuple[UNet, dict, GraphedCall] | None = field(default=None, repr=False)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto", precision: str = "auto",
                        inference: InferenceParams | None = None, cuda_graphs: bool = False) -> Segmenter:
        """Load a checkpoint for inference.

        Args:
            path: a ``.pth`` written by train.py.
            device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
            precision: ``auto`` (the training's, where this device computes it natively, else bf16 on CPUs and
                CUDA devices that compute it natively, fp16 on other CUDA devices, fp32 elsewhere:
                ``lib.core.device.inference_precision``), ``fp32``, ``bf16`` or ``fp16``.
            inference: overlap, blend, TTA and window batch size (default: those stored with the checkpoint).
            cuda_graphs: replay the sliding-window call of each image size as one CUDA graph (:meth:`predict`).

        Raises:
            UserError: the file is missing, not a checkpoint, or does not fit the model; CUDA graphs without CUDA.
        """
        return cls.from_state(load_checkpoint(path), path, device, precision, inference, cuda_graphs)

    @classmethod
    def from_state(cls, state: dict, path: str | Path, device: str = "auto", precision: str = "auto",
                   inference: InferenceParams | None = None, cuda_graphs: bool = False) -> Segmenter:
        """:meth:`from_checkpoint` for a checkpoint already loaded (``model.checkpoint.load_checkpoint``) from ``path``,
        which names it in errors."""
        dev = select_device(device)
        if cuda_graphs and dev.type != "cuda":
            raise UserError(f"--cuda-graphs: needs a CUDA device, the device is {dev.type}")
        if dev.type == "cpu":
            retain_freed_memory()
        # the BatchNorms folded into the convolutions: the same outputs, a pass over each activation map less
        model = fold_batch_norms(model_from_checkpoint(state, path)).to(dev, memory_format=memory_format(dev))
        params = checkpoint_params(state, path)
        return cls(model, state["normalization"], list(state["class_names"]),
                   [tuple(c) for c in state["class_colors"]], params.patches.size, dev,
                   inference_precision(precision, state.get("precision"), dev), inference or params.inference, params,
                   cuda_graphs)

    @property
    def n_channels(self) -> int:
        return self.model.n_channels

    @property
    def dtype(self) -> str:
        """The pixel type the model was trained on (e.g. ``uint8``)."""
        return as_spec(self.normalization)["dtype"]

    def check_image(self, header: ImageHeader, name: str = "image") -> None:
        """Refuse an image the model cannot take: another pixel type than the training data, or another channel
        count (except 8-bit gray for an RGB model and 8-bit RGB for a gray model, converted by :meth:`to_input`).

        Raises:
            UserError: naming ``name`` and both pixel types or channel counts.
        """
        if header.dtype != self.dtype:
            raise UserError(f"{name}: image is {header.dtype}, the model was trained on {self.dtype} images")
        convertible = header.dtype == "uint8" and {header.channels, self.n_channels} == {1, 3}
        if header.channels != self.n_channels and not convertible:
            raise UserError(f"{name}: image has {header.channels} channel(s), the model expects {self.n_channels}")

    def _channels(self, image: np.ndarray) -> torch.Tensor:
        """H×W or H×W×C → C×H×W in the model's channel count (8-bit gray repeated, or 8-bit RGB to luma)."""
        # a writable copy (decoded images are read-only), in native byte order (torch refuses a big-endian array)
        x = torch.from_numpy(np.array(image, dtype=image.dtype.newbyteorder("=")))
        x = x[None] if x.ndim == 2 else x.permute(2, 0, 1)
        if x.shape[0] == 3 and self.n_channels == 1:
            x = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]).round().clamp(0, 255)[None]
        elif x.shape[0] == 1 and self.n_channels == 3:
            x = x.expand(3, -1, -1)
        return x

    def _image_stats(self, bands: Iterable[torch.Tensor]) -> torch.Tensor | None:
        """``image`` normalisation: the 1×2×C mean and std of the whole image (given as C×h×W bands); else None."""
        if as_spec(self.normalization)["mode"] != "image":
            return None
        mean, std = band_statistics(band.permute(1, 2, 0).numpy() for band in bands)
        return torch.tensor([[mean, std]], dtype=torch.float64)

    def to_input(self, image: np.ndarray, name: str = "image") -> torch.Tensor:
        """H×W or H×W×C image in its stored dtype → normalised C×H×W float tensor (:func:`normalize`, with the image's
        own statistics in ``image`` mode). An 8-bit gray image given to an RGB model is repeated over the channels,
        and an 8-bit RGB image given to a gray model is converted to luma (ITU-R 601), as before.

        Raises:
            TypeError: ``image`` is not a NumPy array (a tensor or a list: convert it with ``np.asarray``).
            UserError: the image is not an H×W or H×W×C array of pixels, or has another pixel type than the
                training data, or a channel count the model cannot take (naming ``name``).
        """
        if not isinstance(image, np.ndarray):
            raise TypeError(f"{name}: expected a NumPy array as read_image returns it, got {type(image).__name__}")
        if image.ndim not in (2, 3) or not image.size:
            raise UserError(f"{name}: expected an H×W or H×W×C image, got an array of shape {image.shape}")
        self.check_image(ImageHeader(image.shape[0], image.shape[1], 1 if image.ndim == 2 else image.shape[2],
                                     image.dtype.name), name)
        x = self._channels(image)
        return normalize(x[None], self.normalization, self._image_stats([x]))[0]

    def _window_options(self) -> dict:
        p = self.inference
        return {"window": self.window, "overlap": p.overlap, "batch_size": p.batch_size, "blend": p.blend,
                "tta": p.tta, "precision": self.precision, "device": self.device,
                "memory_format": memory_format(self.device)}

    def _graph_predict(self, x: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`sliding_window_predict` of a normalised C×H×W input, replayed as a CUDA graph (new graphs when the
        model or the window options changed), on the device.

        Raises:
            UserError: the call could not be captured (naming the image).
        """
        model, options = self.model, self._window_options()
        if self._graph_call is None or self._graph_call[0] is not model or self._graph_call[1] != options:
            self._graph_call = model, options, GraphedCall(lambda x: sliding_window_predict(model, x, **options))
        try:
            probabilities, labels = self._graph_call[2](x.to(self.device))
        except RuntimeError as err:
            raise UserError(f"{name}: --cuda-graphs: the sliding window could not be captured as a CUDA graph "
                            f"({str(err).splitlines()[0][:160]}); run without --cuda-graphs") from None
        return probabilities, labels

    def predict(self, image: np.ndarray, name: str = "image") -> tuple[torch.Tensor, torch.Tensor]:
        """Class probabilities (C×H×W) and labels (H×W) of a whole image, by :func:`sliding_window_predict`, on the
        host. With ``cuda_graphs`` the call of each image size is captured once and replayed (:class:`GraphedCall`):
        the same kernels, launched at once.

        Raises:
            UserError: the image does not fit the model, or its probabilities are not finite.
        """
        x = self.to_input(image, name)
        if self.cuda_graphs:
            probabilities, labels = (t.cpu() for t in self._graph_predict(x, name))
        else:
            probabilities, labels = sliding_window_predict(self.model, x, **self._window_options())
        return _finite(probabilities, name, 0, 0), labels

    def predict_bands(self, source: ImageRows, name: str = "image", block_width: int = 8192, stats_block: int = 1024
                      ) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor]]:
        """Segment an image read in parts (:class:`lib.core.imageio.ImageRows`) in bounded memory: the blocks of
        :func:`sliding_window_bands`, each pixel the same sum of windows as :meth:`predict` on the whole image (a
        batched model's outputs can move by about 1e-8 with the make-up of a batch). An image smaller than a window
        is segmented whole (it is small). ``image`` normalisation first reads the image once for its statistics, in
        blocks of ``stats_block``² pixels. With ``cuda_graphs``, an image of at most :data:`GRAPHED_MEGAPIXELS` is
        read whole, normalised with those statistics, and segmented by the graphed call (:meth:`_graph_predict`):
        the same result in one block (``block_width`` does not apply).

        Yields:
            ``(top, left, probabilities, labels)``: C×h×w float32 and h×w int64 blocks on the device (see
            :func:`sliding_window_bands` for their order; on the host for an image smaller than a window).

        Raises:
            UserError: the image does not fit the model, cannot be read, or gives probabilities that are not finite.
        """
        header = source.header
        self.check_image(header, name)
        height, width = header.height, header.width
        if height < self.window or width < self.window:
            probabilities, labels = self.predict(source.rows(0, height), name)
            yield 0, 0, probabilities, labels
            return
        stats = self._image_stats(
            self._channels(source.rows(top, min(top + stats_block, height), left, min(left + stats_block, width)))
            for top in range(0, height, stats_block) for left in range(0, width, stats_block))

        def read_region(top: int, bottom: int, left: int, right: int) -> torch.Tensor:
            return normalize(self._channels(source.rows(top, bottom, left, right))[None], self.normalization, stats)[0]

        if self.cuda_graphs and height * width <= GRAPHED_MEGAPIXELS * 1e6:
            probabilities, labels = self._graph_predict(read_region(0, height, 0, width), name)
            yield 0, 0, _finite(probabilities, name, 0, 0), labels
            return
        for top, left, probabilities, labels in sliding_window_bands(self.model, read_region, height, width,
                                                                     **self._window_options(), block_width=block_width):
            yield top, left, _finite(probabilities, name, top, left), labels


def _finite(probabilities: torch.Tensor, name: str, top: int, left: int) -> torch.Tensor:
    """The C×h×w probabilities of rows ``top ..`` and columns ``left ..``, refused if any is NaN or infinite: pixel
    values far outside the training data's range can overflow float32 once normalised, and the argmax of NaN would
    quietly be class 0.

    Raises:
        UserError: naming the image and the block.
    """
    if not torch.isfinite(probabilities).all():
        h, w = probabilities.shape[-2:]
        raise UserError(f"{name} (rows {top}..{top + h}, columns {left}..{left + w}): the model's probabilities are "
                        "not finite (pixel values too far outside the training data's range once normalised?)")
    return probabilities
