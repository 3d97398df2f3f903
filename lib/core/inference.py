"""Sliding-window inference (Orobix's patch inference): windows of the patch size slide over an image with a stride of
half a patch, and the class probabilities of overlapping windows are averaged."""

from __future__ import annotations

import functools
import numbers
import operator
from collections import deque
from collections.abc import Callable, Iterator

import torch

from lib.core.cuda_graphs import to_device
from lib.core.device import autocast, check_compute_precision
from lib.core.padding import reflect_pad
from lib.core.params import BLENDS

# outputs added together on an accelerator (see _stitch_bytes)
STITCH_BYTES = 64 * 2**20


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


def window_stride(window: int, overlap: float) -> int:
    """The step between windows that share ``overlap`` of their side: ``round(window × (1 - overlap))``, at least 1."""
    return max(1, round(window * (1 - overlap)))


def window_grid(height: int, width: int, window: int, overlap: float) -> tuple[list[int], list[int]]:
    """Row and column starts of the windows over an image of at least ``window`` × ``window`` pixels, every
    :func:`window_stride`, the last window flush with the border (:func:`window_starts`)."""
    stride = window_stride(window, overlap)
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


def axis_weight_sums(size: int, starts: list[int], window: int, blend: str, sigma_scale: float = 0.125
                     ) -> torch.Tensor:
    """Sum over the windows starting at ``starts`` of their blend weights along one axis (float32, length ``size``,
    on the host: one add per window start, a kernel launch each on a GPU).

    The blend weights of a window are separable (:func:`gaussian_weights` is the outer product of a 1-D Gaussian
    with itself; the mean blend is all ones) and the windows form a grid, so the sum of the weights of all windows at
    a pixel is ``outer(axis_weight_sums(rows), axis_weight_sums(columns))``: integer window counts for the mean blend.
    """
    if blend == "gaussian":
        g = _gaussian_profile(window, sigma_scale, None)
        weights = g / g.max()
    else:
        weights = torch.ones(window, dtype=torch.float64)
    sums = torch.zeros(size, dtype=torch.float64)
    for start in starts:
        sums[start:start + window] += weights
    return sums.float()


def _flip_views(tta: bool) -> list[tuple[int, ...]]:
    """Flip dimensions of the test-time views: none, or the identity and the three flips."""
    return [(), (-1,), (-2,), (-2, -1)] if tta else [()]


def class_argmax(probabilities: torch.Tensor) -> torch.Tensor:
    """The H×W int64 index of the largest of C×H×W values, the first on ties and the first NaN where there is one:
    ``probabilities.max(0).indices``.

    On CPU it counts, per pixel, the classes before the first that equals the maximum, in elementwise passes over
    one class at a time: ``max(0)`` over a short leading class axis took about 3 times as long there (and
    ``argmax(0)`` 30 times). Elsewhere ``max(0)`` is one kernel where the passes would be a dozen launches.

    Args:
        probabilities: C×H×W values (any strides), C at least 1.

    Returns:
        The H×W int64 class indices, on the values' device.
    """
    if probabilities.device.type != "cpu":
        return probabilities.max(0).indices
    best = probabilities.amax(0)
    labels = torch.zeros(best.shape, dtype=torch.int64)
    found = torch.zeros(best.shape, dtype=torch.bool)
    for c in range(probabilities.shape[0] - 1):
        found |= probabilities[c] == best
        found |= probabilities[c].isnan()  # amax propagates NaN, which equals nothing
        labels += ~found
    return labels


def _checked_options(overlap: float, blend: str, window: int, batch_size: int, activation: str | None,
                   precision: str) -> tuple[int, int, float]:
    """``window``, ``batch_size`` and ``overlap`` as Python numbers (NumPy's and 0-d tensors taken too), once every
    option is checked."""
    try:
        window, batch_size = operator.index(window), operator.index(batch_size)
    except TypeError:
        raise ValueError(f"window and batch_size must be integers, got {window!r} and {batch_size!r}") from None
    if isinstance(overlap, (str, bytes)) or not isinstance(overlap, (numbers.Real, torch.Tensor)):
        raise ValueError(f"overlap must be a number in [0, 1), got {overlap!r}")
    overlap = float(overlap)
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if blend not in BLENDS:
        raise ValueError(f"blend must be one of {BLENDS}, got {blend!r}")
    if window < 1 or batch_size < 1:
        raise ValueError("window and batch_size must be positive")
    if activation not in ("softmax", None):
        raise ValueError(f"activation must be 'softmax' or None, got {activation!r}")
    check_compute_precision(precision)
    return window, batch_size, overlap


def _forward(predictor: Callable[[torch.Tensor], torch.Tensor], windows: torch.Tensor, tta: bool, precision: str,
             device: torch.device) -> torch.Tensor:
    """The predictor's outputs of a batch of N windows in each test-time view (:func:`_flip_views`), not flipped
    back: N×V×C×P×P (V = 1, or 4 with ``tta``), as the predictor gives them (type, layout). Nothing more is done per
    batch, see :func:`_probabilities`."""
    views = []
    for dims in _flip_views(tta):
        with autocast(device, precision):
            views.append(_checked(predictor(windows.flip(dims) if dims else windows), windows.shape))
    return views[0].unsqueeze(1) if len(views) == 1 else torch.stack(views, 1)


def _checked(outputs: object, shape: torch.Size) -> torch.Tensor:
    """The predictor's outputs, if they are one N×C×P×P tensor for the N windows of P×P it was given: a model of
    valid convolutions (outputs smaller than its inputs) gave maps with holes and shifted values, and no error."""
    n, _, p, q = shape
    if not isinstance(outputs, torch.Tensor) or outputs.ndim != 4 or outputs.shape[0] != n or \
            outputs.shape[2:] != (p, q):
        got = tuple(outputs.shape) if isinstance(outputs, torch.Tensor) else type(outputs).__name__
        raise ValueError(f"predictor returned {got} for {n} windows of {p}x{q}: expected an {n}xCx{p}x{q} tensor "
                         "(outputs the size of the inputs, as of a U-Net with padded convolutions)")
    return outputs


def _probabilities(outputs: torch.Tensor, activation: str | None) -> torch.Tensor:
    """Class probabilities (or raw outputs), contiguous float32 N×C×P×P, of the N×V×C×P×P outputs of
    :func:`_forward`, each view flipped back after its softmax and the views averaged. Done once for a group of
    batches: on a GPU each operation is a kernel launch that costs more than its work."""
    out = None
    for view, dims in enumerate(_flip_views(outputs.shape[1] > 1)):
        # contiguous whatever the model's memory format, the class axis outermost as in the accumulator: on CPU the
        # softmax of a channels_last batch took longer than contiguous() and softmax together, and adds from it into
        # the accumulator three times as long. One copy for type and layout: a channels_last bf16 batch took 6.7 ms
        # by float().contiguous() and 0.7 ms so
        logits = outputs[:, view].to(torch.float32, memory_format=torch.contiguous_format)
        probs = logits.softmax(1) if activation == "softmax" else logits
        # after the softmax, not before: a vectorised CPU softmax rounds the last P² mod 8 pixels of a window apart
        probs = probs.flip(dims) if dims else probs
        out = probs if out is None else out + probs
    return out / outputs.shape[1] if outputs.shape[1] > 1 else out


def column_blocks(width: int, xs: list[int], window: int, block_width: int) -> list[tuple[int, int, list[int]]]:
    """Split the columns of an image into blocks of about ``block_width`` for bounded memory along the width.

    Block boundaries fall on window starts. A block *owns* the output columns ``left .. right`` and runs every window
    that covers one of them, so the windows that straddle a boundary run in both blocks (about one window in
    ``block_width / stride`` runs twice) and each owned pixel sums the same windows, in the same order, as without
    blocks.

    Returns:
        ``(left, right, starts)`` per block, left to right: owned columns and the column starts of its windows.
    """
    if width <= block_width or len(xs) == 1:
        return [(0, width, xs)]
    stride = xs[1] - xs[0]
    per_block = max(1, block_width // stride)
    bounds = [0, *xs[per_block::per_block], width]
    bounds = sorted(set(bounds))
    return [(left, right, [x for x in xs if x < right and x + window > left])
            for left, right in zip(bounds, bounds[1:])]


@torch.inference_mode()
def sliding_window_bands(
    predictor: Callable[[torch.Tensor], torch.Tensor],
    read_region: Callable[[int, int, int, int], torch.Tensor],
    height: int,
    width: int,
    window: int = 96,
    overlap: float = 0.5,
    batch_size: int = 32,
    blend: str = "mean",
    tta: bool = False,
    activation: str | None = "softmax",
    precision: str = "fp32",
    device: torch.device | str = "cpu",
    memory_format: torch.memory_format = torch.contiguous_format,
    sigma_scale: float = 0.125,
    block_width: int = 8192,
) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor]]:
    """Segment an image of any size in bands of rows: the streaming form of :func:`sliding_window_predict`.

    The windows (the grid of :func:`window_grid`) run in row order, ``batch_size`` at a time. Once every window that
    covers a band of output rows has run, the band is final: it is normalised by the summed blend weights, its argmax
    taken, and it is yielded and released. An image wider than ``block_width`` is done in column blocks
    (:func:`column_blocks`), each streamed top to bottom in turn, so that memory is bounded along both sides: the
    input rows of the current windows and the accumulator of the rows they cover, a few window rows of about a batch
    each × ``block_width`` × classes, plus, on an accelerator, about :data:`STITCH_BYTES` of outputs held back to be
    added together (:func:`_stitch_bytes`). Each pixel sums the same windows' outputs in the same order as
    accumulating the whole image window by window, so a predictor that sees one window at a time gives the same
    result bit for bit; a batched model's outputs can move in the last bits with the other windows of their batch.

    Args:
        predictor: maps N×C_in×P×P inputs to N×C×P×P outputs.
        read_region: ``read_region(top, bottom, left, right)`` gives the C_in×(bottom − top)×(right − left)
            normalised input; within a column block, rows are asked for in increasing order, each once.
        height, width: the image size, each at least ``window`` (pad smaller images first, see :func:`reflect_pad`).
        window, overlap, batch_size, blend, tta, activation, precision, memory_format, sigma_scale: as in
            :func:`sliding_window_predict`.
        device: where the predictor and the accumulator run.
        block_width: the widest column block, in pixels.

    Yields:
        ``(top, left, probabilities, labels)``: the C×h×w float32 probabilities and the h×w int64 argmax of rows
        ``top .. top + h`` and columns ``left .. left + w``, on ``device``; column blocks left to right, each top to
        bottom, covering every pixel once.

    Raises:
        ValueError: a bad option, or a side shorter than the window.
    """
    window, batch_size, overlap = _checked_options(overlap, blend, window, batch_size, activation, precision)
    if block_width < window:
        raise ValueError(f"block_width must be at least the window {window}, got {block_width}")
    if height < window or width < window:
        raise ValueError(f"image of {height}x{width} is smaller than the window {window}: pad it first")
    device = torch.device(device)
    ys, xs = window_grid(height, width, window, overlap)
    # computed on the host (see axis_weight_sums) and moved in one copy each (to_device: also in a CUDA graph)
    row_sums = to_device(axis_weight_sums(height, ys, window, blend, sigma_scale), device)
    col_sums = to_device(axis_weight_sums(width, xs, window, blend, sigma_scale), device)
    weights = to_device(gaussian_weights(window, sigma_scale), device) if blend == "gaussian" else None
    forward = functools.partial(_forward, predictor, tta=tta, precision=precision, device=device)
    for left, right, block_xs in column_blocks(width, xs, window, block_width):
        x0 = block_xs[0]  # the block's input and accumulator start at its first window's column
        for top, sums in _block_bands(forward, activation, read_region, height, ys, block_xs,
                                      window_stride(window, overlap), window, batch_size, weights, memory_format,
                                      device):
            # the summed weights are separable (see axis_weight_sums): the divisor of a band is an outer product;
            # divided out of place, as the accumulator's rows are reused
            band = sums[:, :, left - x0:right - x0] / torch.outer(row_sums[top:top + sums.shape[1]],
                                                                   col_sums[left:right])
            yield top, left, band, class_argmax(band)


def _group_end(first: int, ys: list[int], stride: int, rows: int) -> int:
    """The end of the group of window rows that starts at row ``first``: up to ``rows`` consecutive rows on the
    stride grid (start ``k × stride``), or a row off the grid (flush with the bottom edge) alone."""
    end = first + 1
    if ys[first] == first * stride:
        while end < min(len(ys), first + rows) and ys[end] == end * stride:
            end += 1
    return end


def _cut_group(strip: torch.Tensor, rows: int, columns: int, grid: int, stride: int, window: int,
               memory_format: torch.memory_format) -> torch.Tensor:
    """The windows of ``rows`` window rows, ``stride`` apart, cut from the C×h×W ``strip`` under them in one copy
    (two with a flush window): ``(rows × columns)×C×window×window`` in row order, in ``memory_format``.

    Args:
        strip: the input rows of the window rows, over the columns of the block, the first window row at its top.
        rows, columns: window rows and windows a row.
        grid: windows a row on the stride grid (start ``k × stride``); a window after them is flush with the right
            edge of the strip.
    """
    channels, _, width = strip.shape
    windows = torch.empty(rows * columns, channels, window, window, dtype=strip.dtype, device=strip.device,
                          memory_format=memory_format)
    by_row = windows.unflatten(0, (rows, columns))
    row_strips = strip.unfold(1, window, stride)[:, :rows]  # C×rows×W×window: a window row's input rows last
    # unfold yields exactly the grid windows: the flush one is the only start past the last multiple of stride
    by_row[:, :grid] = row_strips.unfold(2, window, stride).permute(1, 2, 0, 3, 4)
    if columns > grid:
        by_row[:, grid] = row_strips[:, :, width - window:].permute(1, 0, 3, 2)
    return windows


def _add_reach(windows: int, window: int, stride: int) -> int:
    """How far past the first of ``windows`` windows on the stride grid the adds of :func:`_overlap_add` reach:
    its slices of the last window run up to ceil(window / stride) - 1 strides past it."""
    return (windows - 1 + -(-window // stride)) * stride


def _overlap_add(acc: torch.Tensor, outs: torch.Tensor, rows: int, grid: int, stride: int, flush_left: int) -> None:
    """Add the outputs of consecutive window rows (in row order, as :func:`_cut_group` cuts them) to ``acc`` in place.

    Cut into slices of ``stride`` rows and columns, the ``(i, j)``-th slice of the window of row ``r`` and column
    ``k`` lands on the stride-aligned block ``(r + i, k + j)``, so one add per pair of slices places every grid
    window of the rows (``ceil(window / stride)²`` adds; a single row is not cut into row slices), and one add per row
    slice the flush windows. The slices go from the last to the first, the flush windows after the grid ones of their
    row: each pixel adds its windows in row order, as a loop over the windows would, so the sums do not depend on how
    the rows are grouped.

    Args:
        acc: C×H'×W' accumulator rows from the first window row's top, H' and W' at least
            ``(n - 1 + ceil(window / stride)) × stride`` for ``n`` the window rows and the grid columns (slices may
            run past the last window).
        outs: the ``(rows × columns)×C×window×window`` outputs.
        rows: the window rows, ``stride`` apart.
        grid: windows a row on the stride grid; a window after them (``columns > grid``) starts at ``flush_left``.
        stride: the stride of the windows along both axes.
        flush_left: the first column of the flush window.
    """
    _, _, window, _ = outs.shape
    by_row = outs.unflatten(0, (rows, outs.shape[0] // rows))
    on_grid = by_row[:, :grid].permute(2, 0, 3, 1, 4)  # C×rows×window×grid×window: the windows side by side
    flush = by_row[:, grid].permute(1, 0, 2, 3) if by_row.shape[1] > grid else None  # C×rows×window×window
    columns = [(j, left, min(stride, window - left)) for j, left in enumerate(range(0, window, stride))]
    row_slices = columns if rows > 1 else [(0, 0, window)]  # one window row is added whole
    for i, top, height in reversed(row_slices):
        # C×rows×height×W'
        band = (acc[:, i * stride:(i + rows) * stride].unflatten(1, (rows, stride))[:, :, :height] if rows > 1
                else acc[:, None, :window])
        for j, left, width in reversed(columns):
            blocks = band[..., j * stride:(j + grid) * stride].unflatten(3, (grid, stride))[..., :width]
            blocks += on_grid[:, :, top:top + height, :, left:left + width]
        if flush is not None:
            band[..., flush_left:flush_left + window] += flush[:, :, top:top + height]


def _take(queue: deque[torch.Tensor], count: int) -> torch.Tensor:
    """The first ``count`` windows of the batches in ``queue``, removed from it: a view when they lie in one batch,
    else one concatenation."""
    parts = []
    while count:
        head = queue.popleft()
        if head.shape[0] > count:
            queue.appendleft(head[count:])
            head = head[:count]
        parts.append(head)
        count -= head.shape[0]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


class _RowBuffer:
    """Rows ``top .. bottom`` of a C×H×W image held in a buffer with spare rows below them: rows are appended at the
    bottom and released at the top, and the held rows are copied to a new buffer only when the spare rows run out
    (a ``torch.cat`` per append copied them every time). Rows not yet appended are zeros."""

    def __init__(self, channels: int, width: int, spare: int, dtype: torch.dtype, device: torch.device) -> None:
        self.buffer = torch.zeros(channels, 0, width, dtype=dtype, device=device)
        self.start = 0  # the buffer row of image row ``top``
        self.top = self.bottom = 0
        self.spare = spare

    @property
    def rows(self) -> torch.Tensor:
        """The held rows, a view of the buffer."""
        return self.buffer[:, self.start:self.start + self.bottom - self.top]

    def release(self, top: int) -> None:
        """Drop the rows above ``top`` (all of them, and move to ``top``, if it is past the bottom)."""
        self.start += max(0, min(top, self.bottom) - self.top)
        self.top, self.bottom = top, max(top, self.bottom)

    def append(self, rows: torch.Tensor | int) -> None:
        """Append a C×n×W tensor, or ``n`` rows of zeros, at the bottom."""
        count = rows if isinstance(rows, int) else rows.shape[1]
        held = self.bottom - self.top
        if self.start + held + count > self.buffer.shape[1]:
            channels, _, width = self.buffer.shape
            buffer = torch.zeros(channels, held + count + self.spare, width, dtype=self.buffer.dtype,
                                 device=self.buffer.device)
            buffer[:, :held] = self.rows
            self.buffer, self.start = buffer, 0
        if not isinstance(rows, int):
            self.buffer[:, self.start + held:self.start + held + count] = rows
        self.bottom += count


def _add_rows(acc: _RowBuffer, outs: torch.Tensor, starts: list[int], first: int, grid: int, stride: int,
              flush_left: int) -> None:
    """Add the outputs of consecutive window rows, the ``first``-th onwards and starting at rows ``starts``, to the
    accumulator rows ``acc`` (from ``starts[0]``), grown as needed: the rows on the stride grid in one
    :func:`_overlap_add`, a last row flush with the bottom edge in another."""
    window = outs.shape[-1]
    on_grid = len(starts) - (starts[-1] != (first + len(starts) - 1) * stride)
    needed = max(starts[0] + _add_reach(on_grid, window, stride), starts[-1] + window)
    if needed > acc.bottom:
        acc.append(needed - acc.bottom)
    columns = outs.shape[0] // len(starts)
    if on_grid:
        _overlap_add(acc.rows, outs[:on_grid * columns], on_grid, grid, stride, flush_left)
    if on_grid < len(starts):
        _overlap_add(acc.rows[:, starts[-1] - acc.top:], outs[on_grid * columns:], 1, grid, stride, flush_left)


def _stitch_bytes(device: torch.device) -> int:
    """Outputs held back before they are added: none on CPU (memory is the cost there), about
    :data:`STITCH_BYTES` on an accelerator, where each add is a kernel launch that costs more than its work."""
    return 0 if device.type == "cpu" else STITCH_BYTES


def _block_bands(forward: Callable[[torch.Tensor], torch.Tensor], activation: str | None,
                 read_region: Callable[[int, int, int, int], torch.Tensor],
                 height: int, ys: list[int], xs: list[int], stride: int, window: int, batch_size: int,
                 weights: torch.Tensor | None, memory_format: torch.memory_format, device: torch.device
                 ) -> Iterator[tuple[int, torch.Tensor]]:
    """The weighted sums of window outputs over the columns ``xs[0] .. xs[-1] + window``, in final bands of rows
    ``(top, C×h×w)`` (not yet divided by the summed weights, a view valid until the next band is asked for).

    Windows are cut a group of window rows at a time, about a batch (:func:`_cut_group`), and run ``batch_size`` at
    a time in row order, batches spanning groups. Their outputs are added a few groups at a time, a few adds for all
    their windows (:func:`_overlap_add`): with a fast model, one operation per window, or per window row, was the
    bottleneck. On CPU each group is added once it has run; on an accelerator outputs wait until about
    :func:`_stitch_bytes` of them have run. A band is yielded after each addition."""
    x0, width, columns = xs[0], xs[-1] + window - xs[0], len(xs)
    grid = columns - (xs[-1] - x0 != (columns - 1) * stride)  # all but a last window flush with the edge
    acc_width = max(width, _add_reach(grid, window, stride))
    rows_in: _RowBuffer | None = None  # input rows
    acc: _RowBuffer | None = None  # accumulated outputs
    inputs: deque[torch.Tensor] = deque()  # windows cut, not yet run
    outputs: deque[torch.Tensor] = deque()  # outputs not yet added
    groups: deque[tuple[int, int]] = deque()  # window rows cut, not yet added
    queued = ready = first = classes = 0
    while groups or first < len(ys):
        if first < len(ys):
            # about a batch; once the classes are known, as many rows as are held back before adding (accelerators)
            held_rows = _stitch_bytes(device) // (columns * classes * window * window * 4) if classes else 0
            end = _group_end(first, ys, stride, max(-(-batch_size // columns), held_rows))
            top, bottom = ys[first], ys[end - 1] + window
            if rows_in is None:  # the first read (at row 0) tells the input's channels and type
                new = read_region(0, bottom, x0, x0 + width).to(device)
                rows_in = _RowBuffer(new.shape[0], width, window, new.dtype, device)
                rows_in.append(new)
            rows_in.release(top)  # rows above these windows are done with
            if bottom > rows_in.bottom:
                rows_in.append(read_region(rows_in.bottom, bottom, x0, x0 + width).to(device))
            inputs.append(_cut_group(rows_in.rows, end - first, columns, grid, stride, window, memory_format))
            groups.append((first, end))
            queued += (end - first) * columns
            first = end
        while queued >= batch_size or (queued and first == len(ys)):
            count = min(batch_size, queued)
            outputs.append(forward(_take(inputs, count).contiguous(memory_format=memory_format)))
            queued, ready, classes = queued - count, ready + count, outputs[-1].shape[2]
        # the window rows whose outputs are all in
        start, end = groups[0][0], groups[0][0]
        while groups and (groups[0][1] - start) * columns <= ready:
            end = groups.popleft()[1]
        if end == start:
            continue
        if first < len(ys) and ready * classes * window * window * 4 < _stitch_bytes(device):
            groups.appendleft((start, end))  # wait for more
            continue
        outs = _probabilities(_take(outputs, (end - start) * columns), activation)
        ready -= outs.shape[0]
        if weights is not None:
            outs = outs * weights
        if acc is None:
            acc = _RowBuffer(classes, acc_width, window, torch.float32, device)
        _add_rows(acc, outs, ys[start:end], start, grid, stride, width - window)
        final = ys[end] if end < len(ys) else height
        yield acc.top, acc.rows[:, :final - acc.top, :width]
        acc.release(final)


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
    block_width: int = 8192,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Segment a whole image of any size by sliding windows over it and averaging their class probabilities.

    Windows of ``window`` × ``window`` start every ``stride = round(window × (1 - overlap))`` pixels; the last
    window of a row or column is placed flush with the border, so every pixel is predicted from real image content.
    An image smaller than a window is reflect-padded and the result cropped back. Windows go through ``predictor``
    ``batch_size`` at a time, in row order, by :func:`sliding_window_bands`, whose bands are gathered here into the
    whole result.

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
        block_width: images wider than this are done in column blocks (:func:`column_blocks`); the same sums (see
            :func:`sliding_window_bands`).

    Returns:
        ``(probabilities, labels)``: C×H×W float32 on the image's device, and the H×W int64 argmax.

    Raises:
        ValueError: a bad option or an image that is not C×H×W.
    """
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a torch.Tensor, got {type(image).__name__} (torch.from_numpy converts an "
                        "array)")
    if image.ndim != 3:
        raise ValueError(f"image must be C×H×W, got shape {tuple(image.shape)}")
    window, batch_size, overlap = _checked_options(overlap, blend, window, batch_size, activation, precision)
    device = torch.device(device) if device is not None else image.device
    height, width = image.shape[-2:]
    # the accumulator lives where the model runs: on a GPU no window goes back to the host
    padded = reflect_pad(image, window, window).to(device)
    probabilities = labels = None
    for top, left, band, band_labels in sliding_window_bands(
            predictor, lambda a, b, c, d: padded[:, a:b, c:d], padded.shape[-2], padded.shape[-1], window, overlap,
            batch_size, blend, tta, activation, precision, device, memory_format, sigma_scale, block_width):
        if top >= height or left >= width:
            continue  # reflect padding only
        rows, cols = min(band.shape[1], height - top), min(band.shape[2], width - left)
        if probabilities is None:
            probabilities = torch.empty(band.shape[0], height, width, dtype=torch.float32, device=device)
            labels = torch.empty(height, width, dtype=torch.int64, device=device)
        probabilities[:, top:top + rows, left:left + cols] = band[:, :rows, :cols]
        # a pixel's argmax depends on that pixel alone
        labels[top:top + rows, left:left + cols] = band_labels[:rows, :cols]
    return probabilities.to(image.device), labels.to(image.device)
