"""Figures: masks in class colours, image/mask pairs, patch grids, flips, and the six-panel prediction.

Images of any dtype and channel count are shown through one display rule, :func:`display_image`.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg") if matplotlib.get_backend().lower() in ("", "agg") else None
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def colorize(mask: np.ndarray, colors: Sequence[tuple[int, int, int]]) -> np.ndarray:
    """An H×W×3 uint8 picture of a class-index mask in the class colours.

    Raises:
        ValueError: a value that is no class index (a negative one took the last class's colour).
    """
    palette = np.asarray(colors, dtype=np.uint8)
    mask = np.asarray(mask)
    if mask.dtype.kind not in "iub":
        raise ValueError(f"mask of {mask.dtype.name} values: expected integer class indices 0..{len(palette) - 1}")
    if mask.size and not 0 <= int(mask.min()) <= int(mask.max()) < len(palette):
        raise ValueError(f"mask values {int(mask.min())}..{int(mask.max())}: expected class indices "
                         f"0..{len(palette) - 1}")
    return palette[mask.astype(np.int64)]


def channel_indices(channels: Sequence[int] | str | int) -> list[int]:
    """Channel indices as a list, also from one index or from text such as ``"1,2,3"`` or ``"[1, 2, 3]"`` (what
    papermill's ``-p`` passes for a list).

    Raises:
        ValueError: text that is not integers separated by commas.
    """
    if isinstance(channels, int):  # (papermill's -p gives one index as a number)
        return [channels]
    if not isinstance(channels, str):
        return [int(c) for c in channels]
    parts = [part.strip() for part in channels.strip().strip("[]()").split(",")]
    if not all(part.lstrip("-").isdigit() for part in parts):
        raise ValueError(f"channels {channels!r}: expected indices such as 0,1,2")
    return [int(part) for part in parts]


def display_image(image: np.ndarray, channels: Sequence[int] | None = None,
                  percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """The display rule: an image of any dtype and channel count as uint8 H×W (gray) or H×W×3 (colour).

    8-bit data is shown as stored (booleans as 0 and 255). Other data is contrast-stretched per channel between the
    ``percentiles`` of its finite values (so a 12-bit image in a narrow band fills the gray range), or between its
    least and greatest value where those percentiles meet (a few spots on a flat background), whatever its units; a
    flat channel is mid-gray, NaN black, infinities black or white. Of more than three channels, ``channels`` picks
    the three shown as red, green and blue (default: the first three); two channels are shown as red and green.

    Raises:
        ValueError: a channel index outside the image.
    """
    image = np.asarray(image)
    x = image[..., None] if image.ndim == 2 else image
    chosen = channel_indices(channels) if channels is not None else list(range(min(x.shape[2], 3)))
    if any(not 0 <= c < x.shape[2] for c in chosen) or not 1 <= len(chosen) <= 3:
        raise ValueError(f"channels {chosen}: expected 1 to 3 indices below {x.shape[2]}")
    x = x[..., chosen]
    if x.dtype == np.bool_:
        x = x.astype(np.uint8) * 255
    if x.dtype != np.uint8:
        shown = np.empty(x.shape, np.uint8)
        for c in range(x.shape[2]):
            shown[..., c] = _stretch(x[..., c].astype(np.float64), percentiles)
        x = shown
    if x.shape[2] == 2:
        x = np.concatenate([x, np.zeros_like(x[..., :1])], axis=2)
    return x[..., 0] if x.shape[2] == 1 else x


def _stretch(values: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    """``values`` to 0..255 between the percentiles of the finite ones (see :func:`display_image`)."""
    finite = values[np.isfinite(values)]
    lo, hi = np.percentile(finite, percentiles) if finite.size else (0.0, 0.0)
    if hi <= lo and finite.size:  # the percentiles meet: the extremes, in the data's own units
        lo, hi = finite.min(), finite.max()
    with np.errstate(over="ignore"):
        span = np.float64(hi) - np.float64(lo)
    if hi <= lo:
        scaled = np.full(values.shape, 0.5)
    elif np.isfinite(span):
        scaled = (values - lo) / span
    else:  # a span beyond float64 (values near its limits): halved first, which is exact there
        scaled = (values / 2 - lo / 2) / (hi / 2 - lo / 2)
    scaled = np.where(np.isposinf(values), 1.0, np.where(np.isnan(values) | np.isneginf(values), 0.0, scaled))
    return np.round(np.clip(scaled, 0, 1) * 255)


def panel_height(shape: tuple[int, ...], width: float) -> float:
    """Inches of a figure panel ``width`` inches wide showing an image of ``shape`` (H×W...), kept to 1..10: a fixed
    height left a wide image in a band between two empty ones."""
    return min(max(width * shape[0] / max(shape[1], 1), 1.0), 10.0)


def _show(ax, image: np.ndarray, title: str | None = None, channels: Sequence[int] | None = None) -> None:
    picture = display_image(image, channels)
    if picture.ndim == 2:
        ax.imshow(picture, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(picture, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)


def show_channels(image: np.ndarray, names: Sequence[str] | None = None) -> plt.Figure:
    """One panel per channel of an image, each contrast-stretched as :func:`display_image` does."""
    x = image[..., None] if image.ndim == 2 else image
    n = x.shape[2]
    fig, axes = plt.subplots(1, n, figsize=(2.4 * n, panel_height(x.shape, 2.4) + 0.5), squeeze=False)
    for c in range(n):
        _show(axes[0, c], x[..., c], names[c] if names else f"channel {c}")
    fig.tight_layout()
    return fig


def show_pairs(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], colors: Sequence[tuple[int, int, int]],
               titles: Sequence[str] | None = None, channels: Sequence[int] | None = None) -> plt.Figure:
    """Images (top row) above their masks in class colours (bottom row)."""
    n = len(images)
    height = max(panel_height(np.shape(image), 2.2) for image in images)
    fig, axes = plt.subplots(2, n, figsize=(2.2 * n, 2 * height + 0.6), squeeze=False)
    for i in range(n):
        _show(axes[0, i], images[i], titles[i] if titles else None, channels)
        _show(axes[1, i], colorize(masks[i], colors))
    fig.tight_layout()
    return fig


def show_patch_grid(images: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                    colors: Sequence[tuple[int, int, int]], columns: int = 8,
                    channels: Sequence[int] | None = None) -> plt.Figure:
    """A grid of patches, each followed below by its mask."""
    n = len(images)
    rows = (n + columns - 1) // columns
    fig, axes = plt.subplots(2 * rows, columns, figsize=(1.4 * columns, 2.8 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for i in range(n):
        r, c = divmod(i, columns)
        _show(axes[2 * r, c], images[i], channels=channels)
        _show(axes[2 * r + 1, c], colorize(masks[i], colors))
    fig.tight_layout()
    return fig


def show_variants(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], labels: Sequence[str],
                  colors: Sequence[tuple[int, int, int]], channels: Sequence[int] | None = None) -> plt.Figure:
    """One patch in each of its augmentations (flips), image above mask."""
    fig = show_patch_grid(images, masks, colors, columns=len(images), channels=channels)
    for ax, label in zip(fig.axes[: len(labels)], labels):
        ax.set_title(label, fontsize=9)
    return fig


def validation_panel(images: np.ndarray, truths: np.ndarray, preds: np.ndarray,
                     colors: Sequence[tuple[int, int, int]], channels: Sequence[int] | None = None,
                     gap: int = 2) -> np.ndarray:
    """Rows of (image | ground truth | prediction) for a few validation patches, as one H×W×3 uint8 picture with
    white gaps, for TensorBoard. Drawn with NumPy alone: a matplotlib figure took about 0.4 s an epoch, a sixth of an
    epoch of the published run on a GPU.

    Args:
        images: N patches as stored (N×P×P or N×P×P×C, any dtype; shown by :func:`display_image`).
        truths, preds: N×P×P class indices.
        colors: RGB colour of each class.
        channels: which channels to show of images with more than three.
        gap: white pixels between panels and rows.

    Returns:
        The (N·P + (N−1)·gap) × (3·P + 2·gap) × 3 picture.
    """
    rows = []
    for image, truth, pred in zip(images, truths, preds):
        shown = display_image(image, channels)
        shown = np.repeat(shown[..., None], 3, axis=2) if shown.ndim == 2 else shown
        panels = [shown, colorize(truth, colors), colorize(pred, colors)]
        white = np.full((shown.shape[0], gap, 3), 255, np.uint8)
        rows.append(np.concatenate([panels[0], white, panels[1], white, panels[2]], axis=1))
    white = np.full((gap, rows[0].shape[1], 3), 255, np.uint8)
    return np.concatenate([part for row in rows for part in (row, white)][:-1], axis=0)


def show_prediction(image: np.ndarray, truth: np.ndarray | None, probabilities: np.ndarray,
                    class_names: Sequence[str], colors: Sequence[tuple[int, int, int]],
                    class_iou: Sequence[float] | None = None, miou: float | None = None,
                    channels: Sequence[int] | None = None, max_maps: int = 4) -> plt.Figure:
    """The published six-panel figure: original, ground truth, prediction, then one probability map per class.

    Of more than ``max_maps`` classes, the maps (and class IoUs in the title) are those of the ``max_maps`` classes
    most predicted, in class order, and the title says how many are shown: a 256-class model drew 259 panels in one
    row, 67330 pixels wide, their titles over each other. Names are cut to 24 characters in titles.
    """
    labels = probabilities.argmax(0)
    shown = predicted_classes(labels, len(class_names), max_maps)
    panels = [(display_image(image, channels), "original")]
    if truth is not None:
        panels.append((colorize(truth, colors), "ground truth"))
    panels.append((colorize(labels, colors), "prediction"))
    panels += [(probabilities[c], f"prob {_cut(class_names[c])}") for c in shown]
    # panels 2.6 in wide and as tall as the image's shape makes them, plus room for the titles
    titles = 0.9 if class_iou is not None and miou is not None else 0.5
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), panel_height(labels.shape, 2.6) + titles),
                             squeeze=False)
    for ax, (picture, title) in zip(axes[0], panels):
        if picture.ndim == 2 and picture.dtype != np.uint8:
            ax.imshow(picture, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_axis_off()
            ax.set_title(title, fontsize=10)
        else:
            _show(ax, picture, title)
    if class_iou is not None and miou is not None:
        ious = "  ".join(f"{_cut(class_names[c])} {class_iou[c]:.3f}" for c in shown)
        of = f" ({len(shown)} of {len(class_names)} classes)" if len(shown) < len(class_names) else ""
        fig.suptitle(f"class IoU{of}: {ious}   |   mean IoU: {miou:.3f}", fontsize=11, family="monospace")
    fig.tight_layout()
    return fig


def predicted_classes(labels: np.ndarray, n_classes: int, most: int) -> list[int]:
    """All classes if they are at most ``most``, else the ``most`` with the most predicted pixels (ties: the lower
    index), in class order."""
    if n_classes <= most:
        return list(range(n_classes))
    counts = np.bincount(np.asarray(labels, dtype=np.int64).ravel(), minlength=n_classes)
    return sorted(np.argsort(-counts, kind="stable")[:most].tolist())


def _cut(name: str, most: int = 24) -> str:
    return name if len(name) <= most else name[:most - 1] + "…"


def add_class_legend(fig: plt.Figure, class_names: Sequence[str], colors: Sequence[tuple[int, int, int]]
                     ) -> plt.Figure:
    """Add a legend of the class colours (one swatch per class name) below a figure; return the figure."""
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=np.asarray(c) / 255.0, edgecolor="gray", label=n) for n, c in zip(class_names, colors)]
    legend = fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, fontsize=9,
                        bbox_to_anchor=(0.5, 0.0))
    # room below the panels for the legend, whatever the figure's height: a fixed 8% of a short figure (one row of
    # patches) was less than the legend, which the panels then covered
    renderer = getattr(fig.canvas, "get_renderer", None)  # Agg's (inline, PNG): laid out, not drawn
    if renderer is None:  # a vector backend (svg, pdf): laid out by a draw that renders nothing
        fig.draw_without_rendering()
    top = legend.get_window_extent(renderer() if renderer else None).y1 / fig.bbox.height
    fig.subplots_adjust(bottom=max(fig.subplotpars.bottom, top + 0.01))
    return fig


def class_shares(masks: Sequence[np.ndarray], n_classes: int) -> np.ndarray:
    """The fraction of all pixels of ``masks`` that belongs to each class (sums to 1; zeros for no pixels)."""
    counts = np.zeros(n_classes, dtype=np.int64)
    for mask in masks:
        counts += np.bincount(np.asarray(mask, dtype=np.int64).ravel(), minlength=n_classes)[:n_classes]
    total = counts.sum()
    return counts / total if total else counts.astype(np.float64)


def plot_history(history: Sequence[dict]) -> plt.Figure:
    """Training curve from a checkpoint's history: training and validation loss, validation mIoU per epoch."""
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_iou) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="training loss")
    if history and all("val_loss" in h for h in history):  # a run without validation images has none
        ax_loss.plot(epochs, [h["val_loss"] for h in history], "s-", label="validation loss")
        ax_iou.plot(epochs, [h["val_miou"] for h in history], "o-", color="k", label="mIoU")
        for name in history[0]["val_iou"]:
            ax_iou.plot(epochs, [h["val_iou"][name] for h in history], ".--", label=name)
    else:
        ax_iou.text(0.5, 0.5, "no validation images in this run", ha="center", va="center",
                    transform=ax_iou.transAxes)
    ax_loss.set_yscale("log")
    for ax, label in ((ax_loss, "loss"), (ax_iou, "validation IoU")):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # a short run's axis read 1.25, 1.5, ... epochs
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
