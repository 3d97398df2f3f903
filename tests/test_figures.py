"""figures.make_figures: the README's four figures from a data set and a checkpoint, all or none."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from model.checkpoint import save_checkpoint
from tests.conftest import assert_user_error, constant_checkpoint, run_main

NAMES = ["input_data.png", "patches.png", "prediction.png", "training_curve.png"]


@pytest.fixture(scope="module")
def checkpoint(tiny_patches):
    params_file, data = tiny_patches
    done = run_main("train.py", "--params", str(params_file), "-f", str(data / "patches_s48"), "-e", "1",
                    "--name", "figures", "--precision", "fp32")
    assert done.returncode == 0, done.stderr[-2000:]
    return data / "checkpoints" / "figures" / "best.pth"


def test_the_four_figures_are_written_to_the_chosen_folder(tiny_patches, checkpoint, tmp_path, monkeypatch):
    params_file, _ = tiny_patches
    loads, load = [], torch.load
    monkeypatch.setattr(torch, "load", lambda f, *a, **k: loads.append(str(f)) or load(f, *a, **k))
    done = run_main("-m", "figures.make_figures", "--checkpoint", str(checkpoint), "--params", str(params_file),
                    "--out", str(tmp_path / "figs"), "--example", "1")
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == NAMES
    assert loads.count(str(checkpoint)) == 1  # the history and the model come from one read of the checkpoint
    for name in NAMES:
        with Image.open(tmp_path / "figs" / name) as figure:
            assert figure.format == "PNG" and min(figure.size) > 100


@pytest.mark.parametrize("bad", ["example", "channels", "no-history"])
def test_an_error_writes_no_figure(tiny_patches, checkpoint, tmp_path, bad):
    """The figures are drawn first and written last: a failure at the prediction figure leaves none of them."""
    params_file, data = tiny_patches
    if bad == "example":
        args, fragments = ["--checkpoint", str(checkpoint), "--example", "7"], ["--example 7", "expected 0..1"]
    elif bad == "no-history":
        other = str(constant_checkpoint(tmp_path / "plain.pth", 0))
        args, fragments = ["--checkpoint", other], [other, "no training history"]
    else:
        other = constant_checkpoint(tmp_path / "two.pth", 0, n_channels=2)
        state = torch.load(other, weights_only=True)
        state["history"] = torch.load(checkpoint, weights_only=True)["history"]
        save_checkpoint(other, state)
        args, fragments = ["--checkpoint", str(other)], ["images_test/images/i0.png", "the model expects 2"]
    done = run_main("-m", "figures.make_figures", *args, "--params", str(params_file), "--out", str(tmp_path / "figs"))
    assert_user_error(done, *fragments)
    assert not (tmp_path / "figs").exists()


@pytest.mark.parametrize("validated", [True, False])
def test_the_training_curve_of_a_run_with_or_without_validation_draws_without_warnings(validated, recwarn):
    """A run without validation images (--val-fraction 0) has no validation curves: its panel says so, and no
    empty legend (with matplotlib's warning) is drawn."""
    import matplotlib.pyplot as plt

    from lib.core.visualize import plot_history

    history = [{"epoch": e, "train_loss": 1.0 / e} for e in (1, 2, 3)]
    if validated:
        for h in history:
            h.update(val_loss=0.5, val_miou=0.9, val_iou={"background": 0.99, "line": 0.81})
    figure = plot_history(history)
    ax_loss, ax_iou = figure.axes
    assert not [w for w in recwarn if "legend" in str(w.message)]
    assert ax_loss.get_legend() is not None
    assert (ax_iou.get_legend() is not None) == validated
    assert [t.get_text() for t in ax_iou.texts] == ([] if validated else ["no validation images in this run"])
    for ax in figure.axes:  # whole epochs only: a 3-epoch run's axis read 1.25, 1.5, ...
        assert all(float(tick).is_integer() for tick in ax.get_xticks())
    plt.close(figure)


@pytest.mark.parametrize("height, width", [(400, 200), (250, 380), (300, 300)])
def test_the_prediction_panels_take_the_image_s_shape(height, width):
    """The six-panel figure was 5.2 in tall whatever the image: a wide one sat in a band between two empty ones
    (3.6 in of the 5.2 for 250 × 380)."""
    import matplotlib.pyplot as plt
    import numpy as np

    from lib.core.visualize import show_prediction

    probabilities = np.random.default_rng(0).random((3, height, width)).astype(np.float32)
    fig = show_prediction(probabilities[0], probabilities.argmax(0), probabilities / probabilities.sum(0),
                          ["a", "b", "c"], [(0, 0, 0), (255, 0, 0), (0, 255, 0)], [0.9, 0.8, 0.7], 0.8)
    fig.canvas.draw()
    box = fig.axes[0].get_window_extent()  # the drawn image, in pixels
    assert box.height / box.width == pytest.approx(height / width, rel=0.05)
    assert fig.get_size_inches()[1] - box.height / fig.dpi < 1.5  # titles and margins, not empty bands
    plt.close(fig)


@pytest.mark.parametrize("show", ["pairs", "channels"])
@pytest.mark.parametrize("height, width", [(200, 400), (268, 27)])
def test_the_data_figures_take_the_image_s_shape(show, height, width):
    """show_pairs was 6 in tall and show_channels 3.2 in whatever the image: a wide image was a thin strip."""
    import matplotlib.pyplot as plt
    import numpy as np

    from lib.core.visualize import show_channels, show_pairs

    image = np.random.default_rng(0).integers(0, 4096, (height, width, 2), dtype=np.uint16)
    fig = show_pairs([image[..., 0]] * 2, [np.zeros((height, width), np.uint8)] * 2, [(0, 0, 0)]) \
        if show == "pairs" else show_channels(image)
    fig.canvas.draw()
    drawn = max(ax.get_window_extent().height for ax in fig.axes) * (2 if show == "pairs" else 1)
    assert fig.get_size_inches()[1] - drawn / fig.dpi < 1.5  # titles and margins, not empty bands
    plt.close(fig)


def _spots(background: float, spot: float, dtype: str):
    import numpy as np

    image = np.full((20, 30), background, dtype)
    image[5, 5] = image[10, 20] = spot
    return image


def _limits():
    """Spots at -1e308 on a flat 0, and one pixel at 1e308 (at 0, 0)."""
    image = _spots(0.0, -1e308, "float64")
    image[0, 0] = 1e308
    return image


# (id, image, expected picture where the spots are and at 0, 0): the same picture whatever the data's units
DISPLAYED = [
    ("spots-uint16", lambda: _spots(100, 101, "uint16"), 255, 0),  # the percentiles meet: min..max
    ("spots-float-tiny", lambda: _spots(1e-6, 2e-6, "float32"), 255, 0),  # were 0: invisible
    ("spots-float-large", lambda: _spots(1000, 1000.5, "float32"), 255, 0),  # were 128
    ("flat-uint16", lambda: _spots(4095, 4095, "uint16"), 128, 128),  # were black
    ("nan-pixel", lambda: _spots(0.25, float("nan"), "float32"), 0, 128),  # the whole image was black
    ("bool", lambda: _spots(False, True, "bool"), 255, 0),  # raised a TypeError
    ("infinities-alone", lambda: _spots(float("inf"), -float("inf"), "float64"), 0, 255),  # were mid-gray
    ("float64-limits", lambda: _limits(), 0, 255),  # hi - lo overflowed: black
    ("subnormal", lambda: _spots(0.0, 5e-324, "float64"), 255, 0),  # halving it, as the overflow's fix did, gave 0
]


@pytest.mark.parametrize("case", DISPLAYED, ids=[c[0] for c in DISPLAYED])
def test_display_stretches_whatever_the_units(case):
    from lib.core.visualize import display_image

    _, make, at_spots, elsewhere = case
    picture = display_image(make())
    assert picture.dtype.name == "uint8" and picture[5, 5] == at_spots and picture[0, 0] == elsewhere


@pytest.mark.parametrize("mask, message", [
    ([[-1, 0]], r"mask values -1\.\.0: expected class indices 0\.\.2"),  # took the last class's colour
    ([[0, 3]], r"mask values 0\.\.3"),
    ([[255, 0]], r"mask values 0\.\.255"),  # an "ignore" label: an IndexError
    (np.array([[2**64 - 1, 0]], np.uint64), r"mask values 0\.\.18446744073709551615"),  # not the wrapped -1
    ([[0.7, 1.2]], r"mask of float64 values: expected integer class indices"),  # shown as classes 0 and 1
])
def test_colorize_refuses_values_that_are_no_class(mask, message):
    from lib.core.visualize import colorize

    with pytest.raises(ValueError, match=message):
        colorize(mask, [(0, 0, 0), (255, 0, 0), (0, 255, 0)])


def test_the_panel_of_an_empty_image_has_a_height():
    from lib.core.visualize import panel_height

    assert 1.0 <= panel_height((5, 0), 2.4) <= 10.0  # a ZeroDivisionError


def test_a_prediction_of_many_classes_shows_the_most_predicted_and_tables_keep_long_names_apart():
    """A 256-class model drew 259 panels in one row (67330 px wide), titles over each other; the notebook's table
    of per-image IoU ran class names of 12 characters or more into each other (a QA run)."""
    import matplotlib.pyplot as plt
    import numpy as np

    from lib.core.visualize import predicted_classes, show_prediction
    from lib.evaluation import format_image_table

    rng = np.random.default_rng(0)
    probabilities = rng.random((40, 60, 50)).astype(np.float32)
    probabilities[[3, 17, 30]] += 0.6  # the most predicted, with a little of class 0
    probabilities[0, :5] += 2
    names = [f"class {i} with a name far longer than any title has room for" for i in range(40)]
    colors = [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in names]
    assert predicted_classes(probabilities.argmax(0), 40, 4) == [0, 3, 17, 30]
    assert predicted_classes(probabilities.argmax(0), 3, 4) == [0, 1, 2]
    fig = show_prediction(probabilities[0], probabilities.argmax(0), probabilities, names, colors,
                          list(rng.random(40)), 0.5)
    assert len(fig.axes) == 3 + 4 and fig._suptitle.get_text().startswith("class IoU (4 of 40 classes): class 0 w")
    assert max(len(ax.get_title()) for ax in fig.axes) <= len("prob ") + 24
    plt.close(fig)
    confusion = torch.eye(3, dtype=torch.int64) * 5
    table = format_image_table(["a.png", "bb.png"], [confusion, confusion], ["blood vessel", "x", "background tissue"])
    header, *rows = table.splitlines()
    assert header.split() == ["image", "mIoU", "blood", "vessel", "x", "background", "tissue"]
    assert all(len(row) == len(header) for row in rows)
    for name in ("blood vessel", "background tissue"):  # each value right-aligned under its name
        end = header.index(name) + len(name)
        assert all(row[end - 6:end] == "1.0000" for row in rows)


@pytest.mark.parametrize("channels,expected", [([2, 0, 1], [2, 0, 1]), ("1,2,3", [1, 2, 3]), ("[4, 0]", [4, 0]),
                                               ((3,), [3]), ("2", [2]), (2, [2])])
def test_display_channels_are_taken_as_papermill_passes_them(channels, expected):
    """papermill's -p passes a list as text: ``-p display_channels 1,2,3`` failed with a TypeError (a QA run)."""
    import numpy as np

    from lib.core.visualize import channel_indices, display_image

    assert channel_indices(channels) == expected
    image = np.arange(5 * 4 * 6, dtype=np.uint8).reshape(5, 4, 6) % 250
    shown = display_image(image, channels)
    assert np.array_equal(shown.reshape(5, 4, -1)[..., 0], image[..., expected[0]])
    with pytest.raises(ValueError, match="expected indices"):
        channel_indices("1;2")


@pytest.mark.parametrize("patches,canvas", [(2, "agg"), (8, "agg"), (16, "agg"), (32, "agg"), (8, "svg")])
def test_the_class_legend_lies_below_the_panels_of_any_grid(patches, canvas):
    """A grid of one row of patches was too short for the legend's fixed 8% margin: the masks covered its top. The
    legend is measured on any backend (Agg's renderer alone failed on svg, pdf and ps)."""
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.backends.backend_svg import FigureCanvasSVG

    from lib.core.visualize import add_class_legend, show_patch_grid

    colors = [(0, 0, 0), (255, 0, 0), (0, 255, 0)]
    fig = show_patch_grid([np.zeros((48, 48), np.uint8)] * patches, [np.ones((48, 48), np.uint8)] * patches, colors)
    if canvas == "svg":
        FigureCanvasSVG(fig)
    add_class_legend(fig, ["background", "line", "ellipse"], colors)
    fig.canvas.draw()
    legend_top = fig.legends[0].get_window_extent().y1
    assert legend_top <= min(ax.get_window_extent().y0 for ax in fig.axes) + 0.5
    plt.close(fig)
