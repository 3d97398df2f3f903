"""Sliding-window inference, in the spirit of MONAI's own tests: an identity predictor is reproduced exactly for
every image size, overlap, blend and window batch size; every pixel is covered; agreement with MONAI."""

from __future__ import annotations

import itertools

import pytest
import torch
from monai.inferers import sliding_window_inference

from lib.core.inference import gaussian_weights, sliding_window_predict, window_grid, window_starts
from lib.core.padding import reflect_pad
from model import UNet

SIZES = [(20, 30), (96, 96), (130, 101), (250, 397)]  # smaller than a patch, equal, not a stride multiple, large
CASES = list(itertools.product(SIZES, [0.0, 0.25, 0.5], ["mean", "gaussian"], [1, 7]))


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


@pytest.mark.parametrize("size,overlap,blend,batch_size", CASES)
def test_identity_predictor_is_reproduced(size, overlap, blend, batch_size):
    g = torch.Generator().manual_seed(sum(size))
    image = torch.randint(0, 100, (2, *size), generator=g).float()  # integers: the mean blend is exact
    probs, labels = sliding_window_predict(_identity, image, window=96, overlap=overlap, batch_size=batch_size,
                                           blend=blend, activation=None)
    assert probs.shape == image.shape and labels.shape == size
    if blend == "mean":
        assert torch.equal(probs, image)
    else:
        torch.testing.assert_close(probs, image, rtol=1e-5, atol=1e-4)
    assert torch.equal(labels, image.argmax(0))


@pytest.mark.parametrize("size,overlap", list(itertools.product(SIZES, [0.0, 0.25, 0.5, 0.75])))
def test_every_pixel_is_covered_and_windows_stay_inside(size, overlap):
    calls = []

    def counting(x):
        calls.append(x.shape[0])
        return torch.ones(x.shape[0], 1, *x.shape[-2:])

    probs, _ = sliding_window_predict(counting, torch.zeros(1, *size), window=96, overlap=overlap,
                                      activation=None, batch_size=5)
    assert torch.equal(probs, torch.ones(1, *size))  # every pixel got at least one window
    stride = max(1, round(96 * (1 - overlap)))
    for side in size:
        starts = window_starts(max(side, 96), 96, stride)
        assert starts[0] == 0 and starts[-1] == max(side, 96) - 96
        assert all(b - a <= stride for a, b in zip(starts, starts[1:]))
    expected = len(window_starts(max(size[0], 96), 96, stride)) * len(window_starts(max(size[1], 96), 96, stride))
    assert sum(calls) == expected and max(calls) <= 5


def test_half_patch_stride_and_flush_last_window():
    assert window_starts(200, 96, 48) == [0, 48, 96, 104]
    assert window_starts(96, 96, 48) == [0]
    assert window_starts(400, 96, 48) == [0, 48, 96, 144, 192, 240, 288, 304]


def test_small_images_are_reflect_padded_not_zero_padded():
    seen = []

    def record(x):
        seen.append(x.clone())
        return x

    image = torch.arange(1, 1 + 30 * 40, dtype=torch.float32).reshape(1, 30, 40)
    sliding_window_predict(record, image, window=96, activation=None)
    window = seen[0][0, 0]
    assert window.shape == (96, 96) and bool((window > 0).all())  # no zero from padding
    assert torch.equal(reflect_pad(image, 96, 96)[:, :30, :40], image)


def test_gaussian_weights_positive_at_the_edge_and_peak_in_the_centre():
    w = gaussian_weights(96)
    assert w.shape == (96, 96) and float(w.min()) > 0 and float(w.max()) == 1.0
    assert float(w[47, 47]) == 1.0 and float(w[0, 0]) < float(w[0, 47]) < float(w[47, 47])
    torch.testing.assert_close(w, w.flip(0).flip(1))


def test_tta_with_a_flip_equivariant_predictor_changes_nothing():
    image = torch.randint(0, 50, (3, 120, 150)).float()
    plain, _ = sliding_window_predict(_identity, image, activation=None)
    tta, _ = sliding_window_predict(_identity, image, activation=None, tta=True)
    torch.testing.assert_close(tta, plain)


def test_softmax_probabilities_sum_to_one():
    torch.manual_seed(0)
    model = UNet(1, 3, 4).eval()
    probs, labels = sliding_window_predict(model, torch.randn(1, 100, 130), window=48, batch_size=4)
    torch.testing.assert_close(probs.sum(0), torch.ones(100, 130))
    assert labels.dtype == torch.int64 and int(labels.max()) <= 2


@pytest.mark.parametrize("size", [(200, 400), (150, 97)])
def test_agrees_with_monai_on_an_untrained_unet(size):
    torch.manual_seed(0)
    model = UNet(1, 3, 4).eval()
    image = torch.randn(1, *size)
    ours, _ = sliding_window_predict(model, image, window=96, overlap=0.5, batch_size=8)

    def softmax_model(x):
        return model(x).softmax(1)

    with torch.inference_mode():
        ref = sliding_window_inference(image[None], (96, 96), 8, softmax_model, overlap=0.5, mode="constant")[0]
    assert float((ours - ref).abs().max()) <= 1e-5


@pytest.mark.parametrize("kwargs,match", [({"overlap": 1.0}, "overlap"), ({"blend": "max"}, "blend"),
                                          ({"batch_size": 0}, "positive"), ({"activation": "sigmoid"}, "activation"),
                                          ({"precision": "float32"}, "precision"),  # (it ran in fp16)
                                          ({"batch_size": 2.0}, "integers"), ({"window": None}, "integers"),
                                          ({"overlap": "0.5"}, "overlap")])
def test_bad_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sliding_window_predict(_identity, torch.zeros(1, 10, 10), **kwargs)


# (predictor, what a researcher's model might give instead of N×C×P×P outputs): each refused in one message, where a
# model of valid convolutions gave a map with holes and shifted values, and the others errors from deep inside
BAD_PREDICTORS = [("valid convolutions", lambda x: x[:, :, 1:-1, 1:-1]),
                  ("upsampling", lambda x: torch.nn.functional.interpolate(x, scale_factor=2)),
                  ("fewer windows", lambda x: x[:1]), ("classification", lambda x: x.mean((2, 3))),
                  ("a tuple", lambda x: (x, x))]


@pytest.mark.parametrize("predictor", [p for _, p in BAD_PREDICTORS], ids=[name for name, _ in BAD_PREDICTORS])
@pytest.mark.parametrize("tta", [False, True])
def test_outputs_that_are_not_one_map_a_window_are_refused(predictor, tta):
    with pytest.raises(ValueError, match=r"predictor returned .* for \d+ windows of 32x32: expected an"):
        sliding_window_predict(predictor, torch.rand(1, 64, 64), window=32, overlap=0.0, batch_size=2,
                               activation=None, tta=tta)


@pytest.mark.parametrize("window,batch_size,overlap", [(96, 4, 0.5), (torch.tensor(33), torch.tensor(3), 0.25)])
def test_numbers_of_numpy_and_torch_are_options_as_python_s(window, batch_size, overlap):
    """``window=np.int64(32)`` failed with an IndexError deep in the row buffer."""
    import numpy as np

    image = torch.rand(2, 150, 130)
    expected, _ = sliding_window_predict(_identity, image, window=int(window), overlap=overlap,
                                         batch_size=int(batch_size), activation=None)
    for w, b, o in ((np.int64(window), np.int32(batch_size), np.float32(overlap)), (window, batch_size, overlap)):
        got, _ = sliding_window_predict(_identity, image, window=w, overlap=o, batch_size=b, activation=None)
        assert torch.equal(got, expected)
    with pytest.raises(TypeError, match="torch.from_numpy"):
        sliding_window_predict(_identity, image.numpy())


@pytest.fixture
def one_thread():
    """One torch thread: the windows are tiny, and two threads contending with other work on a small machine make
    them many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _whole_image_reference(model, image, window, overlap, batch_size, blend, tta):
    """The accumulate-everything algorithm the bands must reproduce bit for bit: one C×H×W accumulator, windows in
    row order, divided once by the summed weights."""
    from lib.core.inference import axis_weight_sums, window_grid

    padded = reflect_pad(image, window, window)
    ph, pw = padded.shape[-2:]
    ys, xs = window_grid(ph, pw, window, overlap)
    corners = [(y, x) for y in ys for x in xs]
    weights = gaussian_weights(window) if blend == "gaussian" else None
    acc = None
    with torch.inference_mode():
        for start in range(0, len(corners), batch_size):
            chunk = corners[start:start + batch_size]
            windows = torch.stack([padded[:, y:y + window, x:x + window] for y, x in chunk])
            out = None
            for dims in [(), (-1,), (-2,), (-2, -1)] if tta else [()]:
                probs = model(windows.flip(dims) if dims else windows).float().softmax(1)
                probs = probs.flip(dims) if dims else probs
                out = probs if out is None else out + probs
            out = out / 4 if tta else out
            out = out * weights if weights is not None else out
            acc = torch.zeros(out.shape[1], ph, pw) if acc is None else acc
            for k, (y, x) in enumerate(chunk):
                acc[:, y:y + window, x:x + window] += out[k]
        acc /= torch.outer(axis_weight_sums(ph, ys, window, blend), axis_weight_sums(pw, xs, window, blend))
    probabilities = acc[:, :image.shape[1], :image.shape[2]].contiguous()
    return probabilities, probabilities.max(0).indices


# (height, width, window-row batch): tiny, one window, not a stride multiple, one row of windows, wider than tall,
# taller than wide, and a batch of exactly one window row (a band boundary after every batch)
STREAM_SIZES = [(20, 25, 7), (32, 32, 7), (90, 71, 7), (32, 150, 7), (65, 200, 11), (200, 65, 3), (80, 100, 5)]
STREAM_CASES = [(*s, overlap, blend, tta) for s in STREAM_SIZES for overlap in (0.0, 0.5) for blend, tta in
                (("mean", False), ("gaussian", False), ("mean", True))]


@pytest.mark.parametrize("height,width,batch_size,overlap,blend,tta", STREAM_CASES)
def test_bands_reproduce_the_whole_image_accumulation_exactly(height, width, batch_size, overlap, blend, tta,
                                                              one_thread):
    torch.manual_seed(height + width)
    model = UNet(2, 3, 4).eval()
    image = torch.randn(2, height, width)
    expected = _whole_image_reference(model, image, 32, overlap, batch_size, blend, tta)
    got = sliding_window_predict(model, image, window=32, overlap=overlap, batch_size=batch_size, blend=blend, tta=tta)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


@pytest.mark.parametrize("height,overlap,batch_size", [(48, 0.5, 4), (300, 0.5, 5), (301, 0.25, 1), (500, 0.0, 64)])
def test_bands_read_each_row_once_and_hold_a_bounded_accumulator(height, overlap, batch_size):
    from lib.core.inference import sliding_window_bands, window_grid

    width, window = 200, 48
    image = torch.randn(1, height, width)
    reads, bands = [], []

    def read_region(top, bottom, left, right):
        assert (left, right) == (0, width)  # one column block
        reads.append((top, bottom))
        return image[:, top:bottom]

    for top, left, probs, labels in sliding_window_bands(lambda x: x.repeat(1, 2, 1, 1), read_region, height, width,
                                                         window, overlap, batch_size):
        assert left == 0 and probs.shape[2] == width
        bands.append((top, probs.shape[1]))
        assert labels.shape == probs.shape[1:] and probs.shape[0] == 2
    assert [t for t, _ in bands] == list(itertools.accumulate([0] + [h for _, h in bands[:-1]]))  # in order, no gap
    assert sum(h for _, h in bands) == height
    assert reads[0][0] == 0 and reads[-1][1] == height
    assert all(b0 == a1 for (_, b0), (a1, _) in zip(reads, reads[1:]))  # each input row read once, in order
    ys, xs = window_grid(height, width, window, overlap)
    rows_per_group = -(-batch_size // len(xs))  # window rows cut together: about a batch
    stride = max(1, round(window * (1 - overlap)))
    # a band is one group, but the last holds the groups its batches spanned, up to the bottom edge
    assert max(h for _, h in bands) <= 2 * rows_per_group * stride + window


# (height, width, block_width) at window 32: blocks of one window column (the minimum), a block boundary that is no
# stride multiple of the block width, wider than tall, and a narrow image under the block width
BLOCK_CASES = [(65, 200, 32), (90, 171, 50), (40, 300, 64), (70, 120, 1000)]


@pytest.mark.parametrize("height,width,block_width", BLOCK_CASES)
@pytest.mark.parametrize("overlap,blend,tta", [(0.5, "mean", False), (0.25, "gaussian", False), (0.5, "mean", True)])
def test_column_blocks_reproduce_the_whole_image_accumulation_exactly(height, width, block_width, overlap, blend,
                                                                      tta, one_thread):
    """Bit for bit with a predictor that sees one window at a time (each pixel sums the same windows in the same
    order); with the batched U-Net, whose outputs move by ~1e-8 with the batch's make-up, to 1e-6 and the same
    labels."""
    torch.manual_seed(height * width)
    model = UNet(2, 3, 4).eval()
    image = torch.randn(2, height, width)

    def one_by_one(x):
        return torch.cat([model(w[None]) for w in x])

    expected = _whole_image_reference(one_by_one, image, 32, overlap, 7, blend, tta)
    got = sliding_window_predict(one_by_one, image, window=32, overlap=overlap, batch_size=7, blend=blend, tta=tta,
                                 block_width=block_width)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    batched = sliding_window_predict(model, image, window=32, overlap=overlap, batch_size=7, blend=blend, tta=tta,
                                     block_width=block_width)
    assert (batched[0] - expected[0]).abs().max() <= 1e-6 and torch.equal(batched[1], expected[1])


@pytest.mark.parametrize("width,block_width,overlap", [(1000, 100, 0.5), (997, 96, 0.25), (480, 200, 0.0)])
def test_column_blocks_bound_memory_along_the_width(width, block_width, overlap):
    """Every read and every block is at most about ``block_width`` wide; the blocks cover each pixel once; each
    block reads its rows once, in order; only the windows straddling a block boundary run twice."""
    from lib.core.inference import column_blocks, sliding_window_bands, window_grid

    height, window = 150, 48
    image = torch.randn(1, height, width)
    reads, covered, windows_run = [], torch.zeros(height, width, dtype=torch.int64), []

    def read_region(top, bottom, left, right):
        reads.append((left, top, bottom, right - left))
        return image[:, top:bottom, left:right]

    def predictor(x):
        windows_run.append(x.shape[0])
        return x.repeat(1, 2, 1, 1)

    for top, left, probs, labels in sliding_window_bands(predictor, read_region, height, width, window, overlap, 8,
                                                         activation=None, block_width=block_width):
        assert probs.shape[2] <= block_width and labels.shape == probs.shape[1:]
        assert torch.allclose(probs[0], image[0, top:top + probs.shape[1], left:left + probs.shape[2]], atol=1e-6)
        covered[top:top + probs.shape[1], left:left + probs.shape[2]] += 1
    assert torch.equal(covered, torch.ones_like(covered))
    assert max(r[3] for r in reads) <= block_width + window
    for left in {r[0] for r in reads}:
        rows = [(a, b) for x, a, b, _ in reads if x == left]
        assert rows[0][0] == 0 and rows[-1][1] == height and all(b == a for (_, b), (a, _) in zip(rows, rows[1:]))
    ys, xs = window_grid(height, width, window, overlap)
    blocks = column_blocks(width, xs, window, block_width)
    seams = len(blocks) - 1
    assert len(blocks) > 1 and sum(windows_run) <= len(ys) * (len(xs) + seams * -(-window // (xs[1] - xs[0])))


def _positional_predictor(window: int, classes: int = 3):
    """A predictor whose output at a pixel depends on the input there and on the pixel's place in its window (a fixed
    random pattern), so that a window cut or added at the wrong place, or twice, changes the result."""
    g = torch.Generator().manual_seed(window)
    pattern, mix = torch.randn(classes, window, window, generator=g), torch.randn(classes, 1, 1, generator=g)
    return lambda x: x[:, :1] * mix + pattern


def _per_window_reference(predictor, image, window, overlap, blend, tta):
    """The plain loop the row-wise cutting and overlap-add must reproduce bit for bit: every window on its own, in
    row order, added into one whole-image accumulator, divided once by the summed weights."""
    from lib.core.inference import axis_weight_sums, window_grid

    height, width = image.shape[-2:]
    ys, xs = window_grid(height, width, window, overlap)
    weights = gaussian_weights(window) if blend == "gaussian" else None
    acc = None
    for y in ys:
        for x in xs:
            win = image[None, :, y:y + window, x:x + window]
            out = None
            for dims in [(), (-1,), (-2,), (-2, -1)] if tta else [()]:
                probs = predictor(win.flip(dims) if dims else win).float().softmax(1)
                probs = probs.flip(dims) if dims else probs
                out = probs if out is None else out + probs
            out = (out / 4 if tta else out)[0]
            out = out * weights if weights is not None else out
            acc = torch.zeros(out.shape[0], height, width) if acc is None else acc
            acc[:, y:y + window, x:x + window] += out
    acc /= torch.outer(axis_weight_sums(height, ys, window, blend), axis_weight_sums(width, xs, window, blend))
    return acc, acc.max(0).indices


# window 32: (height, width, overlap, batch_size, blend, tta, block_width). A row of windows is cut and added in one
# go (one add per slice of stride columns), the window flush with the right edge apart, and a run shorter than the
# slices window by window; batches split rows and span several.
ROW_CASES = [
    (70, 100, 0.3, 5, "mean", False, 8192),  # stride 22 does not divide the window: slices of 22 and 10 columns
    (40, 150, 0.9, 7, "mean", False, 8192),  # stride 3: runs of 7 split the rows of 41, shorter than the 11 slices
    (40, 150, 0.9, 100, "gaussian", False, 8192),  # by 11 slices; a batch spans parts of three rows
    (36, 100, 0.95, 50, "mean", False, 8192),  # stride 2: 16 slices
    (64, 96, 0.0, 3, "mean", False, 8192),  # overlap 0: one slice, no flush window
    (65, 97, 0.0, 4, "gaussian", False, 8192),  # overlap 0 and flush windows overlapping their neighbours by 31
    (50, 32, 0.5, 2, "mean", False, 8192),  # one window wide (and the rows flush at the bottom)
    (32, 32, 0.5, 1, "mean", True, 8192),  # a single window
    (90, 200, 0.5, 1, "mean", False, 8192),  # one window per batch
    (60, 130, 0.75, 3, "mean", True, 8192),  # runs no longer than the 4 slices: added window by window
    (60, 130, 0.75, 9, "gaussian", True, 8192),  # runs of up to 9: by slices, a batch ending with the flush window
    (80, 300, 0.5, 10, "mean", False, 64),  # column blocks of two windows
    (80, 301, 0.9, 50, "gaussian", False, 100),  # column blocks at overlap 0.9, the last one with a flush window
]


@pytest.mark.parametrize("held", [40 * 3 * 32 * 32 * 4, 10**12])
@pytest.mark.parametrize("height,width,overlap,batch_size,blend,tta,block_width",
                         [ROW_CASES[k] for k in (0, 2, 5, 6, 10, 12)])
def test_outputs_held_back_as_on_a_gpu_reproduce_a_per_window_loop(height, width, overlap, batch_size, blend, tta,
                                                                  block_width, held, one_thread, monkeypatch):
    """On an accelerator outputs wait until enough have run (40 windows here, or the whole image), and are
    added many groups at once, the row flush with the bottom edge with them: still bit for bit the loop."""
    import lib.core.inference as inference

    monkeypatch.setattr(inference, "_stitch_bytes", lambda device: held)
    predictor = _positional_predictor(32)
    image = torch.randn(1, height, width, generator=torch.Generator().manual_seed(height * width))
    expected = _per_window_reference(predictor, image, 32, overlap, blend, tta)
    bands = list(inference.sliding_window_bands(predictor, lambda a, b, c, d: image[:, a:b, c:d], height, width, 32,
                                                overlap, batch_size, blend, tta, block_width=block_width))
    if held > 10**9:
        assert len(bands) == len(inference.column_blocks(width, window_grid(height, width, 32, overlap)[1], 32,
                                                         block_width))  # one band a column block
    got = sliding_window_predict(predictor, image, window=32, overlap=overlap, batch_size=batch_size, blend=blend,
                                 tta=tta, block_width=block_width)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


@pytest.mark.parametrize("window,overlap,blend,held", [(17, 0.0, "mean", 0), (33, 0.25, "gaussian", 0),
                                                      (18, 0.5, "mean", 10**12), (5, 0.3, "mean", 10**12)])
def test_test_time_flips_reproduce_a_per_window_loop_for_any_window(window, overlap, blend, held, one_thread,
                                                                    monkeypatch):
    """Each flipped view is flipped back after its softmax, as in the loop: the CPU's vectorised softmax rounds the
    last window² mod 8 pixels apart, so flipping before it changed a few values by an ulp for such windows."""
    import lib.core.inference as inference

    monkeypatch.setattr(inference, "_stitch_bytes", lambda device: held)
    predictor = _positional_predictor(window)
    image = 3 * torch.randn(1, 64, 120, generator=torch.Generator().manual_seed(window))
    expected = _per_window_reference(predictor, image, window, overlap, blend, True)
    got = sliding_window_predict(predictor, image, window=window, overlap=overlap, batch_size=7, blend=blend,
                                 tta=True)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


@pytest.mark.parametrize("height,width,overlap,batch_size,blend,tta,block_width", ROW_CASES)
def test_row_wise_cutting_and_adding_reproduce_a_per_window_loop(height, width, overlap, batch_size, blend, tta,
                                                                 block_width, one_thread):
    predictor = _positional_predictor(32)
    image = torch.randn(1, height, width, generator=torch.Generator().manual_seed(height * width))
    expected = _per_window_reference(predictor, image, 32, overlap, blend, tta)
    got = sliding_window_predict(predictor, image, window=32, overlap=overlap, batch_size=batch_size, blend=blend,
                                 tta=tta, block_width=block_width)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def _with_nan(p: torch.Tensor) -> torch.Tensor:
    p = p.clone()
    p[1, 0, 0] = p[2, 0, 1] = p[0, 0, 3] = float("nan")
    p[:, 0, 2] = float("nan")
    return p


@pytest.mark.parametrize("make", [
    lambda: torch.rand(3, 40, 50),
    lambda: torch.randint(0, 3, (3, 40, 50)).float(),  # ties: the first maximum
    lambda: torch.rand(1, 7, 9),  # one class
    lambda: torch.rand(8, 20, 30)[:, :, 5:25],  # more classes, a strided view
    lambda: _with_nan(torch.rand(3, 4, 5)),  # NaN: the first NaN, as max(0)
])
def test_class_argmax_is_max_indices(make):
    from lib.core.inference import class_argmax

    torch.manual_seed(0)
    p = make()
    assert torch.equal(class_argmax(p), p.max(0).indices)
