"""Patch preparation: count, manifest, every patch equals its source region under its recorded flip."""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import os

import numpy as np
import pytest

from dataloader.manifest import mask_file
from dataloader.pairs import ImagePair, find_pairs, load_pair
from lib.core.errors import UserError
from lib.core.imageio import read_image, read_mask
from lib.core.padding import reflect_pad
from lib.core.params import load_params, replace
from lib.core.patch_sampling import apply_augmentation, augmentations, sample_positions
from lib.generate import generate_split
from lib.prepare import prepare_patches
from tests.conftest import REPO, assert_user_error, recoloured, run_cli

DEFAULT = load_params(REPO / "parameters.json")
SMALL = replace(replace(DEFAULT, "data", height=120, width=72, line_length=[20, 72]), "patches", size=48, per_image=3)


@pytest.fixture
def source(tmp_path):
    return generate_split(tmp_path / "src", "training", 3, SMALL, progress=False)


def _rows(folder):
    with open(folder / "manifest.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_count_and_every_patch_matches_its_source_region(tmp_path, source):
    out = tmp_path / "patches"
    n = prepare_patches(source, out, SMALL, progress=False)
    assert n == 3 * 3 * 4
    rows = _rows(out)
    assert len(rows) == n and len(list((out / "images").glob("*.png"))) == n
    assert {r["flip"] for r in rows} == {"none", "lr", "ud", "lrud"}
    sources = {p.name: load_pair(p, SMALL.class_colors) for p in find_pairs(source)}
    for r in rows:
        image, mask = sources[r["source"]]
        top, left = int(r["top"]), int(r["left"])
        assert 0 <= top <= image.shape[0] - 48 and 0 <= left <= image.shape[1] - 48
        window = (slice(top, top + 48), slice(left, left + 48))
        patch_img, patch_mask = load_pair(ImagePair("p", out / "images" / r["file"], out / "masks" / r["file"]),
                                          SMALL.class_colors)
        assert np.array_equal(patch_img, apply_augmentation(image[window], r["flip"], int(r["rot90"])))
        assert np.array_equal(patch_mask, apply_augmentation(mask[window], r["flip"], int(r["rot90"])))


def test_flipped_twins_are_flips_of_each_other(tmp_path, source):
    out = tmp_path / "patches"
    prepare_patches(source, out, SMALL, progress=False)
    rows = _rows(out)
    base = read_image(out / "images" / rows[0]["file"])
    for r, expected in zip(rows[:4], [base, base[:, ::-1], base[::-1], base[::-1, ::-1]]):
        assert np.array_equal(read_image(out / "images" / r["file"]), expected)


def test_same_seed_same_bytes(tmp_path, source):
    prepare_patches(source, tmp_path / "a", SMALL, progress=False)
    prepare_patches(source, tmp_path / "b", SMALL, progress=False)
    prepare_patches(source, tmp_path / "c", replace(SMALL, "patches", seed=9), progress=False)

    def digest(folder):
        return [hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*.png"))] + \
               [(folder / "manifest.csv").read_text()]

    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a") != digest(tmp_path / "c")


def test_overwrite_protection(tmp_path, source):
    out = tmp_path / "patches"
    prepare_patches(source, out, SMALL, progress=False)
    manifest = (out / "manifest.csv").read_text()
    with pytest.raises(UserError, match="--overwrite"):
        prepare_patches(source, out, replace(SMALL, "patches", seed=3), progress=False)
    assert (out / "manifest.csv").read_text() == manifest
    prepare_patches(source, out, replace(SMALL, "patches", seed=3), overwrite=True, progress=False)
    assert (out / "manifest.csv").read_text() != manifest


def _killed(out) -> None:
    """Leave ``out`` as a job killed mid-way leaves it: in progress, one patch mask missing, a write's temporary."""
    (out / ".complete.json").rename(out / ".in_progress.json")
    next((out / "masks").iterdir()).unlink()
    (out / "images" / ".p0.png.1a2b3c4d.tmp").write_bytes(b"half")


# (id, settings of the rerun): each decides the files, so a killed job is not resumed with another
OTHER_SETTINGS = [
    ("keep-alpha", lambda params: replace(params, "data", keep_alpha=True)),  # 3- and 4-channel patches mixed
    ("channel-axis", lambda params: replace(params, "data", channel_axis="last")),
    ("class-colours", recoloured),
]


@pytest.mark.parametrize("case", OTHER_SETTINGS, ids=[c[0] for c in OTHER_SETTINGS])
def test_a_killed_job_is_not_resumed_with_other_read_settings_or_colours(tmp_path, source, case):
    out = tmp_path / "patches"
    prepare_patches(source, out, SMALL, progress=False)
    _killed(out)
    with pytest.raises(UserError, match="holds an interrupted job of other settings"):
        prepare_patches(source, out, case[1](SMALL), progress=False)


def test_overwriting_a_killed_job_removes_its_temporary_files(tmp_path, source):
    out = tmp_path / "patches"
    prepare_patches(source, out, SMALL, progress=False)
    _killed(out)
    prepare_patches(source, out, replace(SMALL, "patches", per_image=1), overwrite=True, progress=False)
    assert not list(out.rglob("*.tmp"))


def test_hidden_files_of_the_user_s_own_stay(tmp_path, source):
    """Only the temporaries of this project's writes go (a first version removed any hidden ``.*.tmp``, and a hidden
    folder of that name raised IsADirectoryError)."""
    out = tmp_path / "patches"
    (out / ".cache.tmp").mkdir(parents=True)
    (out / ".mynotes.tmp").write_text("mine")
    prepare_patches(source, out, SMALL, progress=False)
    assert (out / ".mynotes.tmp").read_text() == "mine" and (out / ".cache.tmp").is_dir()


def test_a_folder_of_another_command_is_refused_even_with_overwrite(tmp_path, source):
    """prepare --overwrite into a generated folder removed its images and wrote patches in their place."""
    other = generate_split(tmp_path / "test", "test", 2, SMALL, progress=False)
    before = sorted(p.name for p in other.rglob("*"))
    with pytest.raises(UserError, match="holds the output of lib.generate, not of lib.prepare; choose another"):
        prepare_patches(source, other, SMALL, overwrite=True, progress=False)
    assert sorted(p.name for p in other.rglob("*")) == before
    patches = tmp_path / "patches"
    prepare_patches(source, patches, SMALL, progress=False)
    with pytest.raises(UserError, match="holds the output of lib.prepare, not of lib.generate; choose another"):
        generate_split(patches, "test", 2, SMALL, overwrite=True, progress=False)


def test_a_taken_output_folder_is_refused_before_the_inputs_are_read(tmp_path, source):
    """Without --overwrite, a finished or foreign output folder was refused only after every image had been read and
    checked (minutes for a large data set): it is refused first, here before the unreadable image is reached."""
    out = tmp_path / "patches"
    prepare_patches(source, out, SMALL, progress=False)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    next((source / "images").iterdir()).write_bytes(b"not an image")
    with pytest.raises(UserError, match=r"holds a finished job; pass --overwrite \(overwrite=True from Python"):
        prepare_patches(source, out, SMALL, progress=False)
    (out / "extra.txt").write_text("")
    (out / ".complete.json").unlink()
    with pytest.raises(UserError, match="holds files that no job of this project wrote"):
        prepare_patches(source, out, SMALL, progress=False)
    (out / "extra.txt").unlink()
    (out / ".complete.json").write_bytes(before[out / ".complete.json"])
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("inside", [".", "images", "masks", "images/patches"])
def test_an_output_folder_in_the_source_is_refused_even_with_overwrite(source, inside):
    """--out --src with --overwrite removed the source's images and masks, which match the patches' names."""
    before = {p: p.read_bytes() for p in source.rglob("*") if p.is_file()}
    with pytest.raises(UserError, match="is the source folder .*, lies inside it"):
        prepare_patches(source, source / inside, SMALL, overwrite=True, progress=False)
    assert {p: p.read_bytes() for p in source.rglob("*") if p.is_file()} == before


def test_an_output_folder_sharing_the_source_images_through_a_link_is_refused(tmp_path, source):
    """The source's images/ and masks/ are links into --out's: --overwrite removed the source images."""
    linked = tmp_path / "linked"
    linked.mkdir()
    for sub in ("images", "masks"):
        (linked / sub).symlink_to(source / sub)
    before = {p: p.read_bytes() for p in source.rglob("*") if p.is_file()}
    with pytest.raises(UserError, match="shares a folder with it through a link"):
        prepare_patches(linked, source, SMALL, overwrite=True, progress=False)
    assert {p: p.read_bytes() for p in source.rglob("*") if p.is_file()} == before
    prepare_patches(source, tmp_path / "apart", SMALL, progress=False)  # a folder apart is fine


def test_rotations_give_the_eight_symmetries():
    variants = augmentations(True, True)
    assert len(variants) == 8
    patch = np.arange(16).reshape(4, 4)
    outs = {apply_augmentation(patch, f, k).tobytes() for f, k in variants}
    assert len(outs) == 8
    assert augmentations(True, False) == [("none", 0), ("lr", 0), ("ud", 0), ("lrud", 0)]
    assert augmentations(False, False) == [("none", 0)]


def test_small_images_are_padded_to_a_patch():
    image = np.arange(30 * 20, dtype=np.uint8).reshape(30, 20)
    padded = reflect_pad(image, 48, 48, (0, 1))
    assert padded.shape == (48, 48) and np.array_equal(padded[:30, :20], image)
    tiny = reflect_pad(np.ones((3, 2), dtype=np.uint8), 48, 48, (0, 1))
    assert tiny.shape == (48, 48)


def test_foreground_sampling_centres_on_foreground():
    mask = np.zeros((200, 200), dtype=np.uint8)
    mask[150:152, 20:22] = 2
    rng = np.random.default_rng(0)
    positions = sample_positions(rng, mask, 48, 10, foreground_fraction=1.0)
    for top, left in positions:
        assert top <= 150 < top + 48 and left <= 20 < left + 48
    assert len(sample_positions(rng, np.zeros((60, 60), np.uint8), 48, 5, 1.0)) == 5  # no foreground: uniform


def _sample_positions_by_nonzero(rng, mask, size, count, foreground_fraction):
    """The sampling before class_row_counts: every pixel of the class found with np.nonzero for each patch."""
    h, w = mask.shape
    classes = [c for c in np.unique(mask) if c != 0]
    n_fg = int(round(foreground_fraction * count)) if classes else 0
    positions = []
    for i in range(count):
        if i < n_fg:
            ys, xs = np.nonzero(mask == classes[int(rng.integers(len(classes)))])
            j = int(rng.integers(len(ys)))
            top, left = np.clip(ys[j] - size // 2, 0, h - size), np.clip(xs[j] - size // 2, 0, w - size)
            positions.append((int(top), int(left)))
        else:
            positions.append((int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))))
    return positions


@pytest.mark.parametrize("shape,classes,fraction,band", [((200, 300), 3, 0.5, 2**16), ((97, 61), 7, 1.0, 100),
                                                         ((64, 64), 2, 0.25, 1), ((150, 40), 256, 0.8, 1000)])
def test_foreground_sampling_draws_the_pixels_of_the_nonzero_scan(shape, classes, fraction, band):
    """Same seed, same windows as scanning every pixel of the class (rare classes, a class absent, no foreground at
    all, bands of one row or a few), now with counts by band."""
    from lib.core.patch_sampling import class_band_counts

    rng = np.random.default_rng(sum(shape))
    mask = rng.choice(classes, size=shape, p=[0.6] + [0.4 / (classes - 1)] * (classes - 1)).astype(np.uint8)
    mask[mask == classes // 2] = 0  # a class with no pixel
    rows = max(1, band // shape[1])
    counts = class_band_counts(mask, rows)
    assert counts.shape == (-(-shape[0] // rows), int(mask.max()) + 1) and counts.sum() == mask.size
    assert np.array_equal(counts[0], np.bincount(mask[:rows].ravel(), minlength=counts.shape[1]))
    got = sample_positions(np.random.default_rng(5), mask, 32, 40, fraction, band_pixels=band)
    assert got == _sample_positions_by_nonzero(np.random.default_rng(5), mask, 32, 40, fraction)


def test_cli_defaults_and_flags(tmp_path, tiny_params_file):
    assert run_cli("-m", "lib.generate", "--params", str(tiny_params_file)).returncode == 0
    result = run_cli("-m", "lib.prepare", "--params", str(tiny_params_file), "--per-image", "2", "--patch-size", "32")
    assert result.returncode == 0, result.stderr
    out = tiny_params_file.parent / "data" / "patches_s32"
    assert len(_rows(out)) == 4 * 2 * 4
    again = run_cli("-m", "lib.prepare", "--params", str(tiny_params_file), "--per-image", "2", "--patch-size", "32")
    assert_user_error(again, "patches_s32", "--overwrite")


def test_a_tiled_tiff_is_never_decoded_whole(tmp_path, monkeypatch):
    """Memory does not grow with the data set or the image: a TIFF's statistics come band by band, and its patches
    and their masks window by window (its mask was read whole, one byte a pixel: 1.6 GB for a 40000² slide), and
    the result is that of the whole arrays."""
    import json

    import tifffile

    from lib.core import imageio
    from lib.core.statistics import image_statistics

    rng = np.random.default_rng(4)
    (tmp_path / "src" / "images").mkdir(parents=True)
    (tmp_path / "src" / "masks").mkdir()
    arrays = {}
    for name, (h, w) in (("a", (300, 260)), ("b", (130, 410))):
        image = rng.integers(0, 4096, (h, w, 3), dtype=np.uint16)
        mask = rng.integers(0, 3, (h, w), dtype=np.uint8)
        tifffile.imwrite(tmp_path / "src" / "images" / f"{name}.tif", image, tile=(64, 64),
                         photometric="minisblack", planarconfig="contig")
        tifffile.imwrite(tmp_path / "src" / "masks" / f"{name}.tif", mask, tile=(64, 64))
        arrays[name] = image, mask
    opened = imageio._tiff_open

    def never_whole(path, read, *args, **kwargs):
        assert not read, f"{path} decoded whole"
        return opened(path, read, *args, **kwargs)

    monkeypatch.setattr(imageio, "_tiff_open", never_whole)
    params = replace(SMALL, "patches", foreground_fraction=0.5)
    out = tmp_path / "patches"
    assert prepare_patches(tmp_path / "src", out, params, progress=False, whole_bytes=0) == 2 * 3 * 4
    monkeypatch.undo()
    for r in _rows(out):
        top, left = int(r["top"]), int(r["left"])
        image, mask = (array[top:top + 48, left:left + 48] for array in arrays[r["source"]])
        assert np.array_equal(read_image(out / "images" / r["file"]),
                              apply_augmentation(image, r["flip"], int(r["rot90"])))
        assert np.array_equal(read_mask(out / "masks" / mask_file(r["file"]), SMALL.class_colors),
                              apply_augmentation(mask, r["flip"], int(r["rot90"])))
    # the same windows as from the whole arrays, the foreground-centred ones included
    whole = tmp_path / "whole"
    prepare_patches(tmp_path / "src", whole, params, progress=False)
    assert (whole / "manifest.csv").read_text() == (out / "manifest.csv").read_text()
    summary = json.loads((out / "sources.json").read_text())
    for name, (image, _) in arrays.items():
        mean, std = image_statistics(image)
        assert np.allclose(summary["images"][name]["mean"], mean, rtol=1e-12)
        assert np.allclose(summary["images"][name]["std"], std, rtol=1e-12)


@pytest.mark.parametrize("size, per_image, noted", [(120, 3, True), (120, 1, False), (100, 3, False)])
def test_images_no_larger_than_a_patch_are_noted_as_giving_copies(tmp_path, source, capsys, size, per_image, noted):
    """Every window of an image no larger than a patch is the one window: its patches are copies (written silently
    before). The source images are 120×72."""
    params = replace(SMALL, "patches", size=size, per_image=per_image)
    prepare_patches(source, tmp_path / "out", params, progress=False)
    note = capsys.readouterr().err
    if noted:
        assert note == (f"note: 3 image(s) (i0, i1, i2) are no larger than a patch of {size}x{size}: each has one "
                        f"window, and its {per_image} patches are copies of it\n")
    else:
        assert "note:" not in note


def test_a_patch_folder_that_cannot_be_read_is_one_line(tmp_path, source, monkeypatch):
    """Without read rights, the manifest's PermissionError was a traceback."""
    from pathlib import Path

    from dataloader.manifest import read_manifest

    prepare_patches(source, tmp_path / "out", SMALL, progress=False)
    opened = Path.open

    def refuse_the_manifest(self, *args, **kwargs):
        if self.name == "manifest.csv":
            raise PermissionError(13, "Permission denied", str(self))
        return opened(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", refuse_the_manifest)
    with pytest.raises(UserError, match=r"manifest.csv: cannot read the patch folder \(Permission denied\)$"):
        read_manifest(tmp_path / "out")


def test_a_folder_a_job_is_writing_is_refused_to_a_second_job(tmp_path, source):
    """Two prepare runs started together on one folder both passed the claim check: once, one's patches ended under
    the other's completion marker (other seed), and the other crashed with a traceback renaming the marker. A second
    job is refused whatever its settings (a first version told one of other settings that the folder held an
    interrupted job, to be replaced with --overwrite), before it reads its inputs."""
    from lib.core.jobs import check_claimable, claimed

    out = tmp_path / "patches"
    signature = {"job": "lib.prepare", "seed": 0}
    with claimed(out, signature, ["images/*"], False) as resumed:
        assert not resumed
        for other, overwrite in ((signature, False), ({"job": "lib.prepare", "seed": 7}, False), (signature, True)):
            with pytest.raises(UserError, match="another job is reading or writing this folder now"):
                check_claimable(out, other, overwrite)
            with pytest.raises(UserError, match="another job is reading or writing this folder now"):
                with claimed(out, other, ["images/*"], overwrite):
                    pass
        # a real command too, in another process, with other settings and --overwrite: one line, exit 2, at once
        # (before reading its unreadable image), nothing written or removed
        (out / "images").mkdir()
        (out / "images" / "p0.png").write_bytes(b"being written")
        next((source / "images").iterdir()).write_bytes(b"not an image")
        result = run_cli("-m", "lib.prepare", "--src", str(source), "--out", str(out), "--patch-size", "48",
                         "--seed", "7", "--overwrite")
        assert_user_error(result, "another job is reading or writing this folder now")
        assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == [".in_progress.json", ".job.lock", "images",
                                                                           "images/p0.png"]
    assert (out / ".complete.json").is_file()
    with pytest.raises(UserError, match="holds a finished job"):  # released: the usual checks again
        with claimed(out, signature, ["images/*"], False):
            pass


def test_generation_checks_both_splits_before_writing_either(tmp_path):
    """With the test folder being written by another job, generate --overwrite replaced the training folder first
    and was refused only at the test folder, leaving the two of different settings."""
    from lib.core.jobs import claimed, reading
    from lib.generate import generate_dataset

    root = tmp_path / "data"
    params = replace(SMALL, "data", n_training=2, n_test=2, root=str(root))
    generate_dataset(params, progress=False)
    before = {p: p.read_bytes() for p in (root / "images_training").rglob("*") if p.is_file()}
    with claimed(root / "images_test", {"job": "lib.generate", "other": True}, [], True):
        with pytest.raises(UserError, match="images_test: another job is reading or writing"):
            generate_dataset(replace(params, "data", seed=5), overwrite=True, progress=False)
    with reading(root / "images_test"):  # a lib.prepare reading it (a first probe saw writers only)
        with pytest.raises(UserError, match="images_test: another job is reading or writing"):
            generate_dataset(replace(params, "data", seed=5), overwrite=True, progress=False)
    assert {p: p.read_bytes() for p in (root / "images_training").rglob("*") if p.is_file()} == before


@contextlib.contextmanager
def _writer_elsewhere(folder):
    """The folder's lock as another process's job holds it (this process's readers take its own locks again)."""
    fd = os.open(folder / ".job.lock", os.O_RDONLY | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        os.close(fd)


def test_a_data_or_patch_folder_a_job_has_not_finished_is_refused_to_its_readers(tmp_path, source):
    """lib.prepare read a data folder that lib.generate was still writing (or had been killed in), and train.py
    called a patch folder being written an interrupted one."""
    from dataloader.manifest import read_manifest

    patches = tmp_path / "patches"
    prepare_patches(source, patches, SMALL, progress=False)
    cases = [(source, lambda: prepare_patches(source, tmp_path / "out", SMALL, progress=False), "lib.generate"),
             (patches, lambda: read_manifest(patches), "lib.prepare")]
    for folder, read, job in cases:
        (folder / ".complete.json").rename(folder / ".in_progress.json")  # its job running, or killed
        with _writer_elsewhere(folder):
            with pytest.raises(UserError, match=f"{folder.name}: python -m {job} is writing this folder now .*; wait"):
                read()
        with pytest.raises(UserError, match=f"python -m {job} was interrupted writing this folder; rerun it"):
            read()
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["rgb tiff", "rgb png", "palette tiff", "one-strip zlib tiff", "16-bit png"])
def test_masks_of_every_kind_give_the_same_patches_read_whole_or_by_window(tmp_path, kind):
    """A colour mask of an image read window by window failed with a traceback (its rows are indices, its header
    has 3 channels); every kind gives the patches of the whole-image route (a PNG or a one-strip mask is held whole
    on both routes, as any read decodes it whole: these check the patches against the mask)."""
    import png
    import tifffile
    from PIL import Image

    rng = np.random.default_rng(1)
    colors = SMALL.class_colors
    (tmp_path / "src" / "images").mkdir(parents=True)
    (tmp_path / "src" / "masks").mkdir()
    indices = rng.integers(0, 3, (150, 130)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "src" / "images" / "a.tif", rng.integers(0, 4096, (150, 130), dtype=np.uint16),
                     tile=(32, 32))
    mask = tmp_path / "src" / "masks" / ("a.png" if "png" in kind else "a.tif")
    if kind == "rgb tiff":
        tifffile.imwrite(mask, np.array(colors, np.uint8)[indices], tile=(32, 32), photometric="rgb")
    elif kind == "rgb png":
        Image.fromarray(np.array(colors, np.uint8)[indices]).save(mask)
    elif kind == "palette tiff":
        colormap = np.zeros((3, 256), np.uint16)
        colormap[:, :3] = np.array(colors).T * 257
        tifffile.imwrite(mask, indices, photometric="palette", colormap=colormap, tile=(32, 32))
    elif kind == "one-strip zlib tiff":
        tifffile.imwrite(mask, indices, rowsperstrip=150, compression="zlib")
    else:
        png.from_array(indices.astype(np.uint16), "L;16").save(str(mask))
    params = replace(SMALL, "patches", foreground_fraction=0.5)
    by_window, whole = tmp_path / "by_window", tmp_path / "whole"
    prepare_patches(tmp_path / "src", by_window, params, progress=False, whole_bytes=0)
    prepare_patches(tmp_path / "src", whole, params, progress=False)
    assert (by_window / "manifest.csv").read_text() == (whole / "manifest.csv").read_text()
    for row in _rows(whole):
        name = mask_file(row["file"])
        assert (by_window / "masks" / name).read_bytes() == (whole / "masks" / name).read_bytes()
        top, left = int(row["top"]), int(row["left"])
        assert np.array_equal(read_mask(whole / "masks" / name, colors), apply_augmentation(
            indices[top:top + 48, left:left + 48], row["flip"], int(row["rot90"])))


def test_a_finished_folder_being_replaced_or_an_old_or_odd_marker_is_refused_in_one_line(tmp_path, source):
    """A folder whose lock was held but whose completion marker --overwrite had just cleared was read as it emptied;
    a marker of an older version (no job named) was said to be lib.prepare's, and one that is no JSON object raised
    an AttributeError (a review)."""
    from dataloader.manifest import read_manifest
    from lib.core.jobs import check_claimable

    patches = tmp_path / "patches"
    prepare_patches(source, patches, SMALL, progress=False)
    with _writer_elsewhere(patches):
        with pytest.raises(UserError, match="patches: another job is writing this folder now .*; wait for it to end"):
            read_manifest(patches)
    assert len(read_manifest(patches)) == 3 * 3 * 4
    for marker, message in (('{"split": "training", "n": 3, "data": {}}', "the job that wrote it was interrupted"),
                            ("[1]", "the job that wrote it was interrupted"), ("{", "the job that wrote it")):
        (source / ".in_progress.json").write_text(marker)
        with pytest.raises(UserError, match=message):
            find_pairs(source)
        odd = tmp_path / "odd"
        odd.mkdir(exist_ok=True)
        (odd / ".in_progress.json").write_text(marker)
        with pytest.raises(UserError, match="holds an interrupted job of other settings"):  # as an output folder
            check_claimable(odd, {"job": "lib.prepare"}, False)


@pytest.mark.parametrize("mask_layout", ["tiles", "one strip"])
def test_a_large_tiff_and_its_mask_are_read_by_window_unless_a_read_decodes_most_of_them(tmp_path, monkeypatch,
                                                                                          mask_layout):
    """After the check of every pair, no read of a tiled image above whole_bytes, nor of its tiled mask, spans the
    image (the mask was held whole: one byte a pixel); a mask of one compressed strip is read once, whole (read by
    window, it was decoded again for every window)."""
    import tifffile

    from lib.core import imageio
    from lib.prepare import check_pairs

    rng = np.random.default_rng(2)
    height, width = 2100, 2000  # above the 4 MP a count of class bands reads at once
    (tmp_path / "src" / "images").mkdir(parents=True)
    (tmp_path / "src" / "masks").mkdir()
    tifffile.imwrite(tmp_path / "src" / "images" / "a.tif", rng.integers(0, 8, (height, width), dtype=np.uint16),
                     tile=(256, 256), compression="zlib")
    mask = np.zeros((height, width), np.uint8)
    mask[1000:1010, 500:520] = 2
    layout = {"tile": (256, 256)} if mask_layout == "tiles" else {"rowsperstrip": height}
    tifffile.imwrite(tmp_path / "src" / "masks" / "a.tif", mask, compression="zlib", **layout)
    spans = {"images": [], "masks": []}
    checked, read = [], imageio.ImageRows.rows

    def recorded(self, top, bottom, *args):
        if checked:  # the cutting pass
            spans[self.path.parent.name].append(bottom - top)
        return read(self, top, bottom, *args)

    def check_then_record(*args, **kwargs):
        summary = check_pairs(*args, **kwargs)
        checked.append(True)
        return summary

    monkeypatch.setattr(imageio.ImageRows, "rows", recorded)
    monkeypatch.setattr("lib.prepare.check_pairs", check_then_record)
    params = replace(SMALL, "patches", foreground_fraction=0.5, per_image=6)
    prepare_patches(tmp_path / "src", tmp_path / "patches", params, progress=False, whole_bytes=2**20)
    assert spans["images"] and max(spans["images"]) == 48
    if mask_layout == "tiles":
        assert spans["masks"] and max(spans["masks"]) < height
    else:
        assert spans["masks"] == [height]


def test_a_folder_being_read_is_refused_to_a_job_that_would_rewrite_it(tmp_path, source):
    """A reader checked the folder and then read it holding nothing, so lib.prepare --overwrite could clear the files
    of a patch folder train.py was loading (a review)."""
    from dataloader.patches import PatchDataset
    from lib.core.jobs import claimed, reading

    patches = tmp_path / "patches"
    prepare_patches(source, patches, SMALL, progress=False)
    with reading(patches), reading(patches):  # readers do not exclude each other
        with pytest.raises(UserError, match="another job is reading or writing this folder now"):
            prepare_patches(source, patches, SMALL, overwrite=True, progress=False)
    with reading(source):  # the data a prepare reads
        with pytest.raises(UserError, match="another job is reading or writing this folder now"):
            with claimed(source, {"job": "lib.generate"}, ["images/*.png"], True):
                pass
    dataset = PatchDataset(patches, SMALL.class_colors)
    assert len(dataset.rows) == 3 * 3 * 4
    prepare_patches(source, patches, replace(SMALL, "patches", seed=5), overwrite=True, progress=False)
    # how the loaded patches were cut, read while they were held (train.py read the marker after, of the new job)
    assert dataset.cut_with["patches"]["seed"] == SMALL.patches.seed != 5
