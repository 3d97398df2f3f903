"""Large images: predict.py streams a tiled TIFF band by band into a tiled palette BigTIFF (and a zarr array of
probabilities), with the labels, probabilities and metrics of the whole-image computation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr

from lib.imageio import read_image
from lib.segmenter import Segmenter
from model import UNet
from model.checkpoint import save_checkpoint
from tests.conftest import constant_checkpoint, run_cli

COLORS = [(0, 0, 0), (230, 40, 40), (120, 250, 80)]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A random-weight U-Net checkpoint (window 48), a 700×530 tiled uint8 TIFF with a tiled mask, and the same
    image as PNG."""
    root = tmp_path_factory.mktemp("large")
    path = constant_checkpoint(root / "c.pth", 0)
    state = torch.load(path, weights_only=True)
    torch.manual_seed(3)
    model = UNet(1, 3, 4)
    with torch.no_grad():
        model.outc.conv.weight.normal_(0, 10.0)  # labels that follow the image, not a constant
    state["model_state"] = model.state_dict()
    save_checkpoint(path, state)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (700, 530), dtype=np.uint8)
    mask = rng.integers(0, 3, (700, 530)).astype(np.uint8)
    for sub in ("images", "masks", "png"):
        (root / sub).mkdir()
    tifffile.imwrite(root / "images" / "big.tif", image, tile=(128, 128), compression="zlib")
    tifffile.imwrite(root / "masks" / "big.tif", mask, tile=(128, 128))
    return root


def _predict(world: Path, out: str, *extra: str):
    done = run_cli("predict.py", "--checkpoint", str(world / "c.pth"), "--input", str(world / "images"), "--masks",
                   str(world / "masks"), "--output", str(world / out), "--metrics", str(world / f"{out}.json"),
                   "--quiet", "--precision", "fp32", "--batch-size", "16", *extra)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((world / f"{out}.json").read_text())


def test_streamed_tiff_mask_equals_the_whole_image_prediction(world):
    metrics = _predict(world, "tiff", "--format", "tiff", "--save-probabilities")
    segmenter = Segmenter.from_checkpoint(world / "c.pth", "cpu", "fp32")
    segmenter.inference = type(segmenter.inference)(**{**segmenter.inference.__dict__, "batch_size": 16})
    probabilities, labels = segmenter.predict(read_image(world / "images" / "big.tif"))
    with tifffile.TiffFile(world / "tiff" / "big.tif") as tif:
        page = tif.pages[0]
        assert tif.is_bigtiff and page.is_tiled and page.photometric == tifffile.PHOTOMETRIC.PALETTE
        written = page.asarray()
    assert np.array_equal(written, labels.numpy().astype(np.uint8))
    assert len(np.unique(written)) >= 2  # a real label map, not a constant
    stored = zarr.open(str(world / "tiff" / "big_probabilities.zarr"), mode="r")
    assert stored.shape == (700, 530, 3) and stored.dtype == np.float16
    assert np.abs(stored[:].astype(np.float32) - probabilities.permute(1, 2, 0).numpy()).max() <= 1e-3
    png = _predict(world, "png", "--format", "png")
    assert metrics["miou"] == png["miou"] and metrics["iou"] == png["iou"]  # band-wise confusion = whole-image one
    assert not [p.name for p in (world / "tiff").iterdir() if p.name.startswith(".")]  # no temporary file left


def test_auto_format_switches_to_tiff_above_the_threshold(world):
    _predict(world, "auto", "--tiff-above", "0.3")  # 0.371 MP
    assert [p.name for p in (world / "auto").iterdir()] == ["big.tif"]
    _predict(world, "auto_png")  # below the default 64 MP: a palette PNG, as before
    assert [p.name for p in (world / "auto_png").iterdir()] == ["big.png"]
