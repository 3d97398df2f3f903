"""The synthetic benchmark: sizes, values, determinism, class shares, borders, overwrite protection."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lib.core.errors import UserError
from lib.core.params import load_params, params_from_dict, replace
from lib.core.synthetic import ELLIPSE, LINE, ellipse_mask, image_rng, line_mask, synthetic_pair
from lib.generate import generate_dataset, generate_split
from tests.conftest import REPO, assert_user_error, file_digests, recoloured, run_cli, run_main

DEFAULT = load_params(REPO / "parameters.json")


def test_published_size_dtype_and_palette(tmp_path):
    params = replace(DEFAULT, "data", n_training=2, n_test=1)
    train, test = generate_dataset(params, tmp_path, progress=False)
    img = Image.open(train / "images" / "i0.png")
    mask = Image.open(train / "masks" / "i0.png")
    assert img.mode == "L" and img.size == (200, 400)  # 200 wide, 400 high
    assert mask.mode == "P" and mask.size == (200, 400)
    palette = mask.getpalette()[:9]
    assert palette == [v for c in DEFAULT.class_colors for v in c]
    assert set(np.unique(np.asarray(mask))) <= {0, 1, 2}
    assert sorted(p.name for p in (test / "images").iterdir()) == ["i0.png"]


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    params = replace(DEFAULT, "data", n_training=3, n_test=2, height=120, width=80)
    generate_dataset(params, tmp_path / "a", progress=False)
    generate_dataset(params, tmp_path / "b", progress=False)
    generate_dataset(replace(params, "data", seed=1), tmp_path / "c", progress=False)
    a, b, c = (file_digests(tmp_path / name, "*.png") for name in "abc")
    assert a == b
    assert set(a) == set(c) and all(a[k] != c[k] for k in a)


def test_training_and_test_streams_differ():
    train = synthetic_pair(image_rng(0, "training", 0), DEFAULT.data)[0]
    test = synthetic_pair(image_rng(0, "test", 0), DEFAULT.data)[0]
    assert not np.array_equal(train, test)


def test_background_statistics_and_class_shares():
    shares, kinds = [], set()
    for i in range(30):
        image, mask = synthetic_pair(image_rng(0, "training", i), DEFAULT.data)
        background = image[mask == 0] / 255.0
        assert 0.6 - 1e-9 <= background.min() and background.max() <= 1.0 + 1e-9
        assert 0.66 < background.mean() < 0.92
        shares.append(np.bincount(mask.ravel(), minlength=3) / mask.size)
        kinds |= set(np.unique(mask).tolist())
    mean_share = np.mean(shares, axis=0)
    assert 0.90 <= mean_share[0] <= 0.97, mean_share
    assert kinds == {0, 1, 2}


def test_shapes_are_flat_and_lines_drawn_over_ellipses():
    p = replace(DEFAULT, "data", n_lines=[1, 1], n_ellipses=[1, 1]).data
    for i in range(20):
        image, mask = synthetic_pair(image_rng(3, "training", i), p)
        for cls in (LINE, ELLIPSE):
            if (mask == cls).any():
                assert len(np.unique(image[mask == cls])) == 1  # each shape has its own flat gray level
    # an ellipse larger than the image lies under every line: line pixels remain only if lines are drawn on top
    huge = replace(DEFAULT, "data", n_lines=[1, 1], n_ellipses=[1, 1], ellipse_radius=[1000, 1000]).data
    for i in range(5):
        image, mask = synthetic_pair(image_rng(3, "training", i), huge)
        assert (mask == LINE).any() and (mask == ELLIPSE).any() and not (mask == 0).any()
        assert len(np.unique(image[mask == LINE])) == 1


@pytest.mark.parametrize("cy,cx", [(0, 0), (0, 199), (399, 0), (399, 199), (200, 0), (0, 100)])
def test_nothing_wraps_across_the_border(cy, cx):
    shape = (400, 200)
    for inside in (ellipse_mask(shape, cy, cx, 20, 10, 0.7), line_mask(shape, cy, cx, 150, 5, 0.3)):
        ys, xs = np.nonzero(inside)
        assert len(ys)
        # a shape centred at a corner or edge stays near it: nothing appears on the opposite side
        assert np.abs(ys - cy).max() <= 80 and np.abs(xs - cx).max() <= 80


def test_ellipse_and_line_geometry():
    e = ellipse_mask((100, 100), 50, 50, 20, 10, 0.0)
    assert e[50, 30] and e[50, 70] and not e[50, 29] and e[40, 50] and not e[39, 50]
    line = line_mask((100, 100), 50, 50, 40, 4, 0.0)
    assert line[50, 30] and line[50, 70] and not line[50, 71] and line[52, 50] and not line[53, 50]


def test_overwrite_protection_and_resume(tmp_path):
    params = replace(DEFAULT, "data", n_training=2, n_test=1, height=64, width=64, line_length=[20, 64])
    out = tmp_path / "split"
    generate_split(out, "training", 2, params, progress=False)
    before = file_digests(out, "*.png")
    with pytest.raises(UserError, match="--overwrite"):
        generate_split(out, "training", 2, params, progress=False)
    assert file_digests(out, "*.png") == before
    generate_split(out, "training", 2, params, overwrite=True, progress=False)
    assert file_digests(out, "*.png") == before
    # a killed run: in-progress marker, one image missing; rerunning finishes the job
    (out / ".complete.json").rename(out / ".in_progress.json")
    (out / "masks" / "i1.png").unlink()
    generate_split(out, "training", 2, params, progress=False)
    assert file_digests(out, "*.png") == before and (out / ".complete.json").exists()
    # ... but not with other class colours: the masks' palettes would mix
    (out / ".complete.json").rename(out / ".in_progress.json")
    with pytest.raises(UserError, match="holds an interrupted job of other settings"):
        generate_split(out, "training", 2, recoloured(params), progress=False)


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_no_job_wrote_is_never_replaced(tmp_path, overwrite):
    """The generation notebook (overwrite = True by default) run with a user's parameters file took the user's data
    folders: their PNG masks removed, synthetic images mixed in. overwrite replaces only what a job wrote."""
    params = replace(DEFAULT, "data", n_training=2, n_test=1, height=64, width=64, line_length=[20, 64])
    out = tmp_path / "train"
    for sub in ("images", "masks"):
        (out / sub).mkdir(parents=True)
        Image.new("L", (8, 8)).save(out / sub / "sample-01.png")
    before = file_digests(out, "*.png")
    with pytest.raises(UserError, match=r"output folder holds files that no job of this project wrote \(images/"):
        generate_split(out, "training", 2, params, overwrite=overwrite, progress=False)
    assert file_digests(out, "*.png") == before and sorted(p.name for p in out.iterdir()) == ["images", "masks"]


@pytest.mark.parametrize("leftover", ["empty folders", "hidden files"])
def test_a_folder_with_nothing_of_the_user_s_own_is_taken(tmp_path, leftover):
    """Empty subfolders (what a run killed while overwrite cleared them leaves) and hidden files (.DS_Store, a killed
    write's temporary) are nobody's data: such a folder is taken, with or without overwrite."""
    params = replace(DEFAULT, "data", n_training=2, n_test=1, height=64, width=64, line_length=[20, 64])
    for overwrite in (False, True):
        out = tmp_path / f"split{overwrite}"
        (out / "masks").mkdir(parents=True)
        (out / "images").mkdir()
        if leftover == "hidden files":
            (out / ".DS_Store").write_bytes(b"x")
            (out / "images" / ".i0.png.1a2b3c4d.tmp").write_bytes(b"x")
        generate_split(out, "training", 2, params, overwrite=overwrite, progress=False)
        assert (out / ".complete.json").is_file() and len(list((out / "masks").glob("*.png"))) == 2


def test_foreign_non_empty_folder_is_refused(tmp_path):
    (tmp_path / "images_training").mkdir()
    (tmp_path / "images_training" / "notes.txt").write_text("mine")
    result = run_cli("-m", "lib.generate", "--out", str(tmp_path), "--n", "1")
    assert_user_error(result, "images_training", "--overwrite")
    assert (tmp_path / "images_training" / "notes.txt").read_text() == "mine"


def test_cli_writes_both_splits(tmp_path, tiny_params_file):
    result = run_cli("-m", "lib.generate", "--params", str(tiny_params_file), "--out", str(tmp_path / "d"),
                     "--n", "3", "--seed", "5")
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "d" / "images_training" / "images").glob("*.png"))) == 3
    assert len(list((tmp_path / "d" / "images_test" / "masks").glob("*.png"))) == 2


# (semi-axis a, b, angle): a circle, an elongated ellipse at 30°, a small one
@pytest.mark.parametrize("a,b,angle", [(15.0, 15.0, 0.0), (20.0, 8.0, np.pi / 6), (6.0, 3.0, 1.0)])
def test_alternate_ellipses_cover_their_area(a, b, angle):
    from lib.core.synthetic_alt import supersampled_ellipse

    inside = supersampled_ellipse((100, 100), 50.3, 49.6, a, b, angle)
    assert inside[50, 50] and not inside[0, 0]
    assert abs(inside.sum() / (np.pi * a * b) - 1) < 0.05


@pytest.mark.parametrize("y0,x0,y1,x1,thickness",
                         [(10.5, 10, 10.5, 90, 4.0), (5, 5, 80, 60, 3.0), (50, 50, 50, 50, 5.0)])
def test_alternate_lines_are_capsules(y0, x0, y1, x1, thickness):
    from lib.core.synthetic_alt import capsule

    inside = capsule((100, 100), y0, x0, y1, x1, thickness)
    length = np.hypot(y1 - y0, x1 - x0)
    expected = length * thickness + np.pi * (thickness / 2) ** 2  # a rectangle and two half discs
    assert abs(inside.sum() / expected - 1) < 0.15
    assert inside[int(y0), int(x0)] and inside[int(y1), int(x1)]


def _whole_image_ellipse(shape, cy, cx, a, b, angle):
    """The supersampled ellipse evaluated at every pixel of the image (the rule, without the bounding box)."""
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    votes = np.zeros(shape, np.int8)
    for dy in (-0.25, 0.25):
        for dx in (-0.25, 0.25):
            y, x = ys + dy - cy, xs + dx - cx
            u, v = x * np.cos(angle) + y * np.sin(angle), -x * np.sin(angle) + y * np.cos(angle)
            votes += (u / a) ** 2 + (v / b) ** 2 <= 1.0
    return votes >= 2


def _whole_image_capsule(shape, y0, x0, y1, x1, thickness):
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    dy, dx = y1 - y0, x1 - x0
    t = np.clip(((ys - y0) * dy + (xs - x0) * dx) / max(dy * dy + dx * dx, 1e-12), 0.0, 1.0)
    return (ys - y0 - t * dy) ** 2 + (xs - x0 - t * dx) ** 2 <= (thickness / 2) ** 2


# shapes inside, at every edge and corner, reaching past the image, and a degenerate segment
@pytest.mark.parametrize("cy,cx", [(50.3, 49.6), (0.2, 30.0), (99.9, 99.7), (-3.0, 50.0), (50.0, 104.5)])
@pytest.mark.parametrize("a,b,angle", [(22.0, 22.0, 0.0), (22.0, 8.8, np.pi / 3), (6.0, 2.4, 2.9), (-9.0, -4.0, 0.5)])
def test_alternate_ellipses_drawn_in_their_box_equal_the_whole_image_rule(cy, cx, a, b, angle):
    from lib.core.synthetic_alt import supersampled_ellipse

    inside = supersampled_ellipse((100, 80), cy, cx, a, b, angle)
    assert inside.shape == (100, 80)
    assert np.array_equal(inside, _whole_image_ellipse((100, 80), cy, cx, a, b, angle))


@pytest.mark.parametrize("y0,x0,y1,x1,thickness", [(10.5, 10, 10.5, 70, 5.5), (99.5, 79.5, -40.0, 120.0, 2.5),
                                                   (0.0, 0.0, 0.0, 0.0, 5.0), (60.2, 3.3, 20.9, 77.1, 4.1),
                                                   (30.0, 10.0, 30.0, 60.0, -3.0)])
def test_alternate_capsules_drawn_in_their_box_equal_the_whole_image_rule(y0, x0, y1, x1, thickness):
    from lib.core.synthetic_alt import capsule

    inside = capsule((100, 80), y0, x0, y1, x1, thickness)
    assert np.array_equal(inside, _whole_image_capsule((100, 80), y0, x0, y1, x1, thickness))


def test_the_alternate_generator_is_its_own_and_reached_through_parameters(tmp_path):
    """``data.generator: alternate`` writes the second set: deterministic, all three classes, and unlike the default
    set drawn from the same random stream."""
    from lib.core.synthetic_alt import alternate_pair

    p = replace(DEFAULT, "data", generator="alternate", n_training=3, n_test=1)
    train, _ = generate_dataset(p, tmp_path, progress=False)
    kinds = set()
    for i in range(3):
        image, mask = alternate_pair(image_rng(p.data.seed, "training", i), p.data)
        assert np.array_equal(np.asarray(Image.open(train / "images" / f"i{i}.png")), image)
        assert np.array_equal(np.asarray(Image.open(train / "masks" / f"i{i}.png")), mask)
        assert image.dtype == np.uint8 and image.shape == (400, 200)
        kinds |= set(np.unique(mask).tolist())
        default_image, _ = synthetic_pair(image_rng(p.data.seed, "training", i), DEFAULT.data)
        assert not np.array_equal(image, default_image)
    assert kinds == {0, 1, 2}


def test_the_generator_flag_selects_the_second_set(tmp_path, tiny_params_file):
    from lib.core.params import GENERATORS as CHOICES
    from lib.generate import GENERATORS

    assert tuple(GENERATORS) == CHOICES  # parameters.json's choices are the generators there are
    result = run_main("-m", "lib.generate", "--params", str(tiny_params_file), "--out", str(tmp_path / "d"),
                      "--n", "1", "--generator", "alternate")
    assert result.returncode == 0, result.stderr
    p = replace(load_params(tiny_params_file), "data", generator="alternate")
    image, _ = GENERATORS["alternate"](image_rng(p.data.seed, "training", 0), p.data)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "d" / "images_training" / "images" / "i0.png")), image)


def test_the_generators_refuse_a_class_count_they_do_not_draw(tmp_path):
    """Two classes were accepted, then the masks' value 2 failed save_mask's check with a traceback."""
    raw = DEFAULT.to_dict()
    raw["classes"] = raw["classes"][:2]
    with pytest.raises(UserError, match=r"^classes: the synthetic generators draw 3 classes .* the parameters have 2"):
        generate_split(tmp_path / "out", "training", 2, params_from_dict(raw), progress=False)
    assert not (tmp_path / "out").exists()


def _first_draws(rng: np.random.Generator) -> tuple[int, ...]:
    return tuple(rng.integers(0, 2**63, 4))


@pytest.mark.parametrize("seed", [0, 7, 2**32 - 1])
def test_seeds_below_two_to_the_32_keep_their_streams(seed):
    """Every data set generated and measured so far came from ``default_rng([seed, split, index])``."""
    from lib.core.random_streams import keyed_rng

    for split, index in ((0, 0), (1, 0), (0, 5)):
        assert _first_draws(keyed_rng(seed, split, index)) == _first_draws(np.random.default_rng([seed, split, index]))


def test_seeds_of_two_to_the_32_or_more_share_no_stream_with_smaller_ones():
    """NumPy reads 2**32 + s as the words (s, 1) and pads lists with zeros to 4 words: seed 2**32's first training
    image was seed 0's first test image, and seed 2**32's first test image seed 0's second."""
    keys = [(split, index) for split in (0, 1) for index in range(3)]
    streams = [_first_draws(image_rng(seed, split, index)) for seed in (0, 1, 2**32, 2**32 + 1, 2**33, 2**63 - 1)
               for split in ("training", "test") for index in range(3)]
    assert len(set(streams)) == len(streams) == 6 * len(keys)
    from lib.core.random_streams import keyed_rng  # the patches' streams, keyed by (patches.seed, image index)

    patches = [_first_draws(keyed_rng(seed, index)) for seed in (0, 2**32, 2**33) for index in range(3)]
    assert len(set(patches)) == 9
