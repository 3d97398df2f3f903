"""Large images: predict.py streams a tiled TIFF band by band into a tiled palette BigTIFF (and a zarr array of
probabilities), with the labels, probabilities and metrics of the whole-image computation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from lib.core.imageio import read_image, read_mask
from lib.segmenter import Segmenter
from tests.conftest import assert_user_error, random_checkpoint, run_main

COLORS = [(0, 0, 0), (230, 40, 40), (120, 250, 80)]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A random-weight U-Net checkpoint (window 48), a 700×530 tiled uint8 TIFF with a tiled mask, and the same
    image as PNG."""
    root = tmp_path_factory.mktemp("large")
    random_checkpoint(root / "c.pth")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (700, 530), dtype=np.uint8)
    mask = rng.integers(0, 3, (700, 530)).astype(np.uint8)
    for sub in ("images", "masks", "png"):
        (root / sub).mkdir()
    tifffile.imwrite(root / "images" / "big.tif", image, tile=(128, 128), compression="zlib")
    tifffile.imwrite(root / "masks" / "big.tif", mask, tile=(128, 128))
    return root


def _predict(world: Path, out: str, *extra: str):
    done = run_main("predict.py", "--checkpoint", str(world / "c.pth"), "--input", str(world / "images"), "--masks",
                    str(world / "masks"), "--output", str(world / out), "--metrics", str(world / f"{out}.json"),
                    "--quiet", "--precision", "fp32", "--batch-size", "16", *extra)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((world / f"{out}.json").read_text())


@pytest.mark.parametrize("block_width", [8192, 100])  # one column block; blocks of 100 columns (labels via zarr)
def test_streamed_tiff_mask_equals_the_whole_image_prediction(world, block_width):
    out = f"tiff{block_width}"
    metrics = _predict(world, out, "--format", "tiff", "--save-probabilities", "--block-width", str(block_width))
    segmenter = Segmenter.from_checkpoint(world / "c.pth", "cpu", "fp32")
    segmenter.inference = type(segmenter.inference)(**{**segmenter.inference.__dict__, "batch_size": 16})
    probabilities, labels = segmenter.predict(read_image(world / "images" / "big.tif"))
    with tifffile.TiffFile(world / out / "big.tif") as tif:
        page = tif.pages[0]
        assert tif.is_bigtiff and page.is_tiled and page.photometric == tifffile.PHOTOMETRIC.PALETTE
        written = page.asarray()
    assert np.array_equal(written, labels.numpy().astype(np.uint8))
    assert len(np.unique(written)) >= 2  # a real label map, not a constant
    stored = zarr.open(str(world / out / "big_probabilities.zarr"), mode="r")
    assert stored.shape == (700, 530, 3) and stored.dtype == np.float16
    assert np.abs(stored[:].astype(np.float32) - probabilities.permute(1, 2, 0).numpy()).max() <= 1e-3
    png = _predict(world, f"png{block_width}", "--format", "png", "--block-width", str(block_width),
                   "--save-probabilities")
    assert metrics["miou"] == png["miou"] and metrics["iou"] == png["iou"]  # block-wise confusion = whole-image one
    assert np.array_equal(read_mask(world / f"png{block_width}" / "big.png", COLORS), written)
    saved = np.load(world / f"png{block_width}" / "big_probabilities.npy")
    assert np.abs(saved - probabilities.numpy()).max() <= 1e-6
    assert not [p.name for p in (world / out).iterdir() if p.name.startswith(".")]  # no temporary file left


def test_auto_format_switches_to_tiff_above_the_threshold(world):
    _predict(world, "auto", "--tiff-above", "0.3")  # 0.371 MP
    assert [p.name for p in (world / "auto").iterdir()] == ["big.tif"]
    _predict(world, "auto_png")  # below the default 64 MP: a palette PNG, as before
    assert [p.name for p in (world / "auto_png").iterdir()] == ["big.png"]


@pytest.mark.parametrize("bands", [[48] * 14 + [28], [7, 300, 1, 392], [700]])
def test_chunk_rows_write_each_row_of_chunks_once(tmp_path, bands):
    """Bands of two column blocks (each top to bottom, interleaved as blocks never are, to be strict) land in the zarr
    array exactly, and every write covers whole rows of chunks but the last."""
    from predict import ChunkRows

    array = zarr.open_array(str(tmp_path / "a.zarr"), mode="w", shape=(700, 530), chunks=(256, 256), dtype="uint8")
    writes = []

    class Recording:
        shape, chunks = array.shape, array.chunks

        def __setitem__(self, index, value):
            writes.append((index[1].start, index[0].start, index[0].stop))
            array[index] = value

    expected = np.random.default_rng(0).integers(0, 3, (700, 530)).astype(np.uint8)
    rows = ChunkRows(Recording())
    tops = np.cumsum([0] + bands)
    for top, bottom in zip(tops[:-1], tops[1:]):
        for left, right in ((0, 300), (300, 530)):
            rows.write(int(top), left, expected[top:bottom, left:right])
    rows.close()
    assert np.array_equal(array[:], expected)
    for left in (0, 300):  # per block: chunk-aligned row ranges, in order, covering every row once
        spans = [(a, b) for x, a, b in writes if x == left]
        assert spans[0][0] == 0 and spans[-1][1] == 700 and all(b == a for (_, b), (a, _) in zip(spans, spans[1:]))
        assert all(a % 256 == 0 and (b % 256 == 0 or b == 700) for a, b in spans)


def _predict_into(world: Path, images: Path, masks: Path, out: Path, block_width: int, fmt: str = "tiff"):
    return run_main("predict.py", "--checkpoint", str(world / "c.pth"), "--input", str(images), "--masks",
                    str(masks), "--output", str(out), "--quiet", "--precision", "fp32", "--batch-size", "16",
                    "--format", fmt, "--save-probabilities", "--block-width", str(block_width))


def test_a_bad_mask_value_in_the_last_rows_is_refused_before_any_output(world, tmp_path):
    """predict.py reads every mask through before segmenting, so a value that is no class in the last tile of the
    second image's mask stops the run before the first image's mask is written, not once segmentation reaches it."""
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
        for name in ("a.tif", "big.tif"):
            (tmp_path / sub / name).write_bytes((world / sub / "big.tif").read_bytes())
    bad = read_mask(world / "masks" / "big.tif", COLORS).copy()
    bad[-3:, -40:] = 5
    tifffile.imwrite(tmp_path / "masks" / "big.tif", bad, tile=(128, 128))
    out = tmp_path / "out"
    assert_user_error(_predict_into(world, tmp_path / "images", tmp_path / "masks", out, 100), "big.tif", "[5]")
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("block_width, fmt", [(8192, "tiff"), (100, "tiff"), (8192, "png"), (100, "png")])
def test_an_image_tile_that_fails_to_decode_mid_run_leaves_no_file(world, tmp_path, block_width, fmt):
    """The image's last tile is garbage: the error comes once most of the image is segmented, and no mask, no
    probabilities (a zarr folder or an .npy written block by block) and no temporary file may be left behind."""
    (tmp_path / "images").mkdir()
    image = tmp_path / "images" / "big.tif"
    image.write_bytes((world / "images" / "big.tif").read_bytes())
    with tifffile.TiffFile(image) as tif:
        offset, count = tif.pages[0].dataoffsets[-1], tif.pages[0].databytecounts[-1]
    data = bytearray(image.read_bytes())
    data[offset:offset + count] = b"\x00" * count
    image.write_bytes(bytes(data))
    out = tmp_path / "out"
    done = _predict_into(world, tmp_path / "images", world / "masks", out, block_width, fmt)
    assert_user_error(done, "big.tif", "not a readable image")
    assert not out.exists()  # nor the output folder, which the run made
