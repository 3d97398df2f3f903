"""Sliding-window inference (Orobix's patch inference): windows of the patch size slide over an image with a stride of
half a patch, and the class probabilities of overlapping windows are averaged."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from lib.device import autocast

BLENDS = ("mean", "gaussian")


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Start offsets along one axis: every ``stride`` from 0, plus one window flush with the far border.

    Every position of ``0..size-1`` is covered; a side no longer than the window has the single start 0.
    """
    if size <= window:
        return [0]
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] != size - window:
        starts.append(size - window)
    return starts


def window_grid(height: int, width: int, window: int, overlap: float) -> tuple[list[int], list[int]]:
    """Row and column starts of the windows over an image of at least ``window`` × ``window`` pixels: a stride of
    ``round(window × (1 - overlap))`` (at least 1), the last window flush with the border (:func:`window_starts`)."""
    stride = max(1, round(window * (1 - overlap)))
    return window_starts(height, window, stride), window_starts(width, window, stride)


def cut_windows(image: torch.Tensor, corners: list[tuple[int, int]], window: int) -> torch.Tensor:
    """The N×C×``window``×``window`` batch of the windows of a C×H×W image with top-left ``corners``."""
    return torch.stack([image[:, y:y + window, x:x + window] for y, x in corners])


def _gaussian_profile(window: int, sigma_scale: float, device: torch.device | None) -> torch.Tensor:
    """``exp(-d² / 2σ²)`` along one side of a window (float64), d the distance from the window's centre."""
    coords = torch.arange(window, dtype=torch.float64, device=device) - (window - 1) / 2
    return torch.exp(-(coords**2) / (2 * (sigma_scale * window) ** 2))


def gaussian_weights(window: int, sigma_scale: float = 0.125, device: torch.device | None = None) -> torch.Tensor:
    """Importance map for Gaussian blending: ``exp(-d² / 2σ²)`` with σ = ``sigma_scale`` × window (nnU-Net, MONAI),
    normalised to a maximum of 1. It is positive everywhere, also at the window edge."""
    g = _gaussian_profile(window, sigma_scale, device)
    weights = torch.outer(g, g)
    weights = weights / weights.max()
    return weights.clamp(min=torch.finfo(torch.float32).tiny).float()


def axis_weight_sums(size: int, starts: list[int], window: int, blend: str, sigma_scale: float = 0.125,
                     device: torch.device | None = None) -> torch.Tensor:
    """Sum over the windows starting at ``starts`` of their blend weights along one axis (float32, length ``size``).

    The blend weights of a window are separable (:func:`gaussian_weights` is the outer product of a 1-D Gaussian
    with itself; the mean blend is all ones) and the windows form a grid, so the sum of the weights of all windows at
    a pixel is ``outer(axis_weight_sums(rows), axis_weight_sums(columns))``: integer window counts for the mean blend.
    """
    if blend == "gaussian":
        g = _gaussian_profile(window, sigma_scale, device)
        weights = g / g.max()
    else:
        weights = torch.ones(window, dtype=torch.float64, device=device)
    sums = torch.zeros(size, dtype=torch.float64, device=device)
    for start in starts:
        sums[start:start + window] += weights
    return sums.float()


def reflect_pad(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pad C×H×W at the bottom and right to at least ``height`` × ``width`` by mirroring the image (repeated
    mirroring for images much smaller than the window; a 1-pixel side is repeated)."""
    while x.shape[-2] < height or x.shape[-1] < width:
        h, w = x.shape[-2:]
        ph, pw = min(height - h, h - 1) if h < height else 0, min(width - w, w - 1) if w < width else 0
        if (h < height and ph == 0) or (w < width and pw == 0):
            x = F.pad(x[None], [0, max(0, width - w), 0, max(0, height - h)], mode="replicate")[0]
        else:
            x = F.pad(x[None], [0, pw, 0, ph], mode="reflect")[0]
    return x


def _flip_views(tta: bool) -> list[tuple[int, ...]]:
    """Flip dimensions of the test-time views: none, or the identity and the three flips."""
    return [(), (-1,), (-2,), (-2, -1)] if tta else [()]


@torch.inference_mode()
def sliding_window_predict(
    predictor: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    window: int = 96,
    overlap: float = 0.5,
    batch_size: int = 32,
    blend: str = "mean",
    tta: bool = False,
    activation: str | None = "softmax",
    precision: str = "fp32",
    device: torch.device | str | None = None,
    memory_format: torch.memory_format = torch.contiguous_format,
    sigma_scale: float = 0.125,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Segment a whole image of any size by sliding windows over it and averaging their class probabilities.

    Windows of ``window`` × ``window`` start every ``stride = round(window × (1 - overlap))`` pixels; the last
    window of a row or column is placed flush with the border, so every pixel is predicted from real image content.
    An image smaller than a window is reflect-padded and the result cropped back. Windows go through ``predictor``
    ``batch_size`` at a time; memory is the accumulator (C × H × W) plus one batch of windows, whatever the image
    size, and the outputs.

    Args:
        predictor: maps N×C_in×P×P inputs to N×C×P×P outputs (logits of a U-Net in eval mode).
        image: C_in×H×W float tensor, already normalised.
        window: window side (the patch size the model was trained on).
        overlap: fraction of a window shared with the next, in [0, 1).
        batch_size: windows per forward pass.
        blend: ``"mean"`` (equal weights, the published method) or ``"gaussian"`` (σ = ``sigma_scale`` × window).
        tta: also predict the left/right, up/down and double flips of every window and average (4× the work).
        activation: ``"softmax"`` over classes before averaging, or None to average the raw outputs.
        precision: ``fp32``, ``bf16`` or ``fp16`` autocast for the forward passes (accumulation stays fp32).
        device: where the predictor runs (default: the image's device).
        memory_format: memory format of the window batches (``torch.channels_last`` for a channels_last model).
        sigma_scale: σ of the Gaussian blend as a fraction of the window.

    Returns:
        ``(probabilities, labels)``: C×H×W float32 on the image's device, and the H×W int64 argmax.

    Raises:
        ValueError: a bad option or an image that is not C×H×W.
    """
    if image.ndim != 3:
        raise ValueError(f"image must be C×H×W, got shape {tuple(image.shape)}")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if blend not in BLENDS:
        raise ValueError(f"blend must be one of {BLENDS}, got {blend!r}")
    if window < 1 or batch_size < 1:
        raise ValueError("window and batch_size must be positive")
    if activation not in ("softmax", None):
        raise ValueError(f"activation must be 'softmax' or None, got {activation!r}")
    device = torch.device(device) if device is not None else image.device
    height, width = image.shape[-2:]
    # the accumulator lives where the model runs: on a GPU no window goes back to the host
    padded = reflect_pad(image, window, window).to(device)
    ph, pw = padded.shape[-2:]
    ys, xs = window_grid(ph, pw, window, overlap)
    corners = [(y, x) for y in ys for x in xs]
    weights = gaussian_weights(window, sigma_scale, padded.device) if blend == "gaussian" else None
    acc = None
    for start in range(0, len(corners), batch_size):
        batch_corners = corners[start:start + batch_size]
        # already on the device, like ``padded``
        windows = cut_windows(padded, batch_corners, window).contiguous(memory_format=memory_format)
        out = None
        for dims in _flip_views(tta):
            with autocast(device, precision):
                logits = predictor(windows.flip(dims) if dims else windows)
            logits = logits.float()
            probs = logits.softmax(1) if activation == "softmax" else logits
            probs = probs.flip(dims) if dims else probs
            out = probs if out is None else out + probs
        if tta:
            out = out / 4
        if acc is None:
            acc = torch.zeros(out.shape[1], ph, pw, dtype=torch.float32, device=padded.device)
        if weights is not None:
            out = out * weights
        for k, (y, x) in enumerate(batch_corners):
            acc[:, y:y + window, x:x + window] += out[k]
    # the summed weights are separable (see axis_weight_sums): no H×W accumulator while the windows run, and the
    # division is in place
    acc /= torch.outer(axis_weight_sums(ph, ys, window, blend, sigma_scale, padded.device),
                       axis_weight_sums(pw, xs, window, blend, sigma_scale, padded.device))
    probabilities = acc[:, :height, :width].contiguous()
    # max(0).indices is argmax(0) (the first maximum on ties), and many times faster on CPU over a leading dimension
    labels = probabilities.max(0).indices
    return probabilities.to(image.device), labels.to(image.device)
