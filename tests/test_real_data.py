"""Real image data through the real commands, every bit kept: a 12-bit narrow-band set against its 8-bit control, a
4-channel uint16 TIFF set with Img_/Mask_ names (and the notebooks), float32 TIFFs with percentile normalisation and
int16 TIFFs with per-image normalisation."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from dataloader.manifest import SOURCES, read_manifest
from lib.core.imageio import read_image
from tests.conftest import REPO, run_main

CLASSES = [
    {"name": "background", "index": 0, "color": [0, 0, 0]},
    {"name": "cell", "index": 1, "color": [255, 0, 0]},
    {"name": "nucleus", "index": 2, "color": [0, 0, 255]},
]
SIZES = [(70, 90), (64, 100), (90, 60), (80, 80)]  # (height, width)


def _draw(rng: np.random.Generator, height: int, width: int, levels: np.ndarray, noise: float, dtype: str
          ) -> tuple[np.ndarray, np.ndarray]:
    """Rectangles of classes 1 and 2 on background; ``levels[class]`` holds the per-channel value of each class."""
    labels = np.zeros((height, width), np.uint8)
    for cls in (1, 2):
        for _ in range(3):
            h, w = rng.integers(8, 18, size=2)
            y, x = rng.integers(0, height - h), rng.integers(0, width - w)
            labels[y:y + h, x:x + w] = cls
    image = levels[labels] + rng.normal(0, noise, (height, width, levels.shape[1]))
    if np.dtype(dtype).kind != "f":
        info = np.iinfo(dtype)
        image = np.clip(np.round(image), info.min, info.max)
    return image.astype(dtype), labels


def _write_set(root: Path, levels: np.ndarray, noise: float, dtype: str, spikes: bool = False,
               offsets: bool = False) -> None:
    """``train/`` (6 images) and ``test/`` (2), Img_i.tif images (H×W×C, samples last) and Mask_i.tif uint16 masks."""
    for split, n, seed in (("train", 6, 0), ("test", 2, 1)):
        rng = np.random.default_rng(seed)
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for i in range(n):
            image, labels = _draw(rng, *SIZES[i % len(SIZES)], levels, noise, dtype)
            if offsets:  # per-image brightness, as between microscope sessions
                image = (image.astype(np.float64) + rng.uniform(-500, 500)).astype(dtype)
            if spikes:  # hot pixels far outside the signal, which percentile clipping removes
                image.reshape(-1, image.shape[-1])[rng.integers(0, image.shape[0] * image.shape[1], 20)] = 3000
            tifffile.imwrite(root / split / "images" / f"Img_{i}.tif", image if image.shape[2] > 1 else image[..., 0],
                             photometric="minisblack", planarconfig="contig" if image.shape[2] > 1 else None)
            tifffile.imwrite(root / split / "masks" / f"Mask_{i}.tif", labels.astype(np.uint16))


def _params(root: Path, **data) -> Path:
    raw = json.loads((REPO / "parameters.json").read_text())
    raw["data"].update(root=str(root), training_folder="train", test_folder="test", image_prefix="Img_",
                       mask_prefix="Mask_", **data)
    raw["classes"] = CLASSES
    raw["patches"].update(size=48, per_image=8)
    raw["model"].update(base_channels=4)
    raw["training"].update(folder="patches_s48", epochs=2, batch_size=8, learning_rate=0.05,
                           checkpoints_dir=str(root / "checkpoints"), runs_dir=str(root / "runs"), val_fraction=0.2,
                           precision="fp32", figure_patches=2)
    path = root / "params.json"
    path.write_text(json.dumps(raw, indent=1))
    return path


def _pipeline(root: Path, params: Path) -> tuple[Path, dict]:
    """prepare → train → predict with masks, through the commands' ``main`` (:func:`run_main`; the processes' own
    route is tested in test_bad_input.py and test_train.py): ``(best checkpoint, metrics)``."""
    for args in (["-m", "lib.prepare", "--params", str(params)], ["train.py", "--params", str(params), "--name", "r"]):
        done = run_main(*args)
        assert done.returncode == 0, done.stderr[-3000:]
    checkpoint = root / "checkpoints" / "r" / "best.pth"
    done = run_main("predict.py", "--checkpoint", str(checkpoint), "--input", str(root / "test" / "images"),
                    "--masks", str(root / "test" / "masks"), "--output", str(root / "pred"), "--metrics",
                    str(root / "metrics.json"), "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    return checkpoint, json.loads((root / "metrics.json").read_text())


def _patch_matches_source(root: Path, params_data: dict) -> None:
    """Every patch of the first source image is its window of the source, bit for bit (unflipped ones)."""
    patches = root / "patches_s48"
    for row in read_manifest(patches)[:16]:
        if row["flip"] != "none":
            continue
        source = read_image(root / "train" / "images" / f"{row['source']}.tif", **params_data)
        top, left = int(row["top"]), int(row["left"])
        patch = read_image(patches / "images" / row["file"])
        assert patch.dtype == source.dtype
        assert np.array_equal(patch, source[top:top + 48, left:left + 48])


@pytest.fixture(scope="module")
def four_channel(tmp_path_factory) -> tuple[Path, Path, Path, dict]:
    root = tmp_path_factory.mktemp("uint16x4")
    levels = np.array([[900, 1200, 600, 2000], [2400, 1300, 700, 2100], [1000, 3100, 2600, 1900]], float)
    _write_set(root, levels, 120, "uint16")
    params = _params(root)
    checkpoint, metrics = _pipeline(root, params)
    return root, params, checkpoint, metrics


def test_four_channel_uint16_tiff_set(four_channel):
    root, _, checkpoint, metrics = four_channel
    patches = root / "patches_s48"
    first = read_manifest(patches)[0]["file"]
    assert first.endswith(".tif") and read_image(patches / "images" / first).shape == (48, 48, 4)
    summary = json.loads((patches / SOURCES).read_text())
    assert summary["dtype"] == "uint16" and summary["channels"] == 4 and len(summary["images"]) == 6
    _patch_matches_source(root, {})
    state = torch.load(checkpoint, weights_only=True)
    assert state["model_config"]["n_channels"] == 4
    norm = state["normalization"]
    assert norm["mode"] == "zscore" and norm["dtype"] == "uint16" and len(norm["mean"]) == 4
    assert metrics["n_images"] == 2 and list(metrics["iou"]) == ["background", "cell", "nucleus"]
    assert metrics["miou"] > 0.5  # two epochs of a 4-wide U-Net: far above chance, not a precise figure
    mask = np.asarray(Image.open(root / "pred" / "Img_0.png"))
    assert mask.shape == SIZES[0] and set(np.unique(mask)) <= {0, 1, 2}


def test_four_channel_set_in_the_notebooks(four_channel, tmp_path, monkeypatch):
    from tests.test_notebooks import n_figures, run_notebook, text

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    root, params, checkpoint, _ = four_channel
    prepared = run_notebook("image_preparation.ipynb", tmp_path, params_file=str(params), data_root=str(root),
                            patch_size=32, per_image=2, seed=5, overwrite=True, n_show=8, display_channels=[3, 1, 0])
    assert n_figures(prepared) >= 3  # grid, variants, one panel per channel
    assert "48 patches of 32x32" in text(prepared) and "uint16, 4 channels" in text(prepared)
    segmented = run_notebook("inference.ipynb", tmp_path, checkpoint=str(checkpoint), params_file=str(params),
                             data_root=str(root), example=1, device="cpu", precision="fp32")
    printed = text(segmented)
    assert n_figures(segmented) >= 1 and "segmented 2 test images" in printed and "Img_1: mIoU" in printed
    assert re.search(r"^nucleus\s+\S+$", printed, re.MULTILINE), printed


def test_float32_tiffs_with_percentile_normalisation(tmp_path):
    levels = np.array([[-600.0], [400.0], [1500.0]])
    _write_set(tmp_path, levels, 150.0, "float32", spikes=True)
    params = _params(tmp_path, normalization="percentile", percentiles=[1.0, 99.0])
    checkpoint, metrics = _pipeline(tmp_path, params)
    _patch_matches_source(tmp_path, {})
    state = torch.load(checkpoint, weights_only=True)
    norm = state["normalization"]
    assert norm["mode"] == "percentile" and norm["dtype"] == "float32" and state["model_config"]["n_channels"] == 1
    from dataloader.patches import PatchDataset

    data = PatchDataset(tmp_path / "patches_s48", [tuple(c["color"]) for c in CLASSES])
    train = data.images[data.subset_indices(s for s in data.source_names() if s not in state["val_sources"])]
    assert np.allclose([norm["low"][0], norm["high"][0]], np.percentile(train.numpy(), [1.0, 99.0]), rtol=1e-6)
    assert norm["high"][0] < 2999  # the hot pixels are clipped away
    assert metrics["miou"] > 0.5


def test_int16_tiffs_with_per_image_normalisation(tmp_path):
    levels = np.array([[-300.0, 100.0], [500.0, 200.0], [200.0, 900.0]])
    _write_set(tmp_path, levels, 60.0, "int16", offsets=True)
    params = _params(tmp_path, normalization="image")
    checkpoint, metrics = _pipeline(tmp_path, params)
    norm = torch.load(checkpoint, weights_only=True)["normalization"]
    assert norm["mode"] == "image" and norm["dtype"] == "int16" and norm["mean"] is None
    stats = json.loads((tmp_path / "patches_s48" / SOURCES).read_text())["images"]["Img_0"]
    image = read_image(tmp_path / "train" / "images" / "Img_0.tif").astype(np.float64)
    assert np.allclose(stats["mean"], image.mean(axis=(0, 1))) and np.allclose(stats["std"],
                                                                                 image.std(axis=(0, 1), ddof=1))
    assert metrics["miou"] > 0.5


def test_uint8_tiffs_with_the_original_codes_scaling_and_step_schedule(tmp_path):
    """The original code's recipe where it differs from the defaults: inputs ``/ 255`` alone (``scale``) and
    ``StepLR`` (``step``: ×0.1 after every int(0.3 × 2) = 0, i.e. 1, epoch), through the real commands."""
    _write_set(tmp_path, np.array([[40.0], [120.0], [220.0]]), 20.0, "uint8")
    params = _params(tmp_path, normalization="scale")
    raw = json.loads(params.read_text())
    raw["training"]["schedule"] = "step"
    params.write_text(json.dumps(raw))
    checkpoint, metrics = _pipeline(tmp_path, params)
    state = torch.load(checkpoint.with_name("last.pth"), weights_only=True)
    assert state["normalization"] == {"mode": "scale", "dtype": "uint8", "scale": 255.0, "mean": None, "std": None,
                                      "low": None, "high": None}
    assert [h["lr"] for h in state["history"]] == pytest.approx([0.05, 0.005])
    assert metrics["miou"] > 0.5


def test_twelve_bit_narrow_band_reaches_the_eight_bit_control(tmp_path):
    """The bit-depth benchmark on its tiny setting: the 12-bit set (2000 + 4·v in 16-bit PNGs, 16-bit masks) through
    the real commands reaches the 8-bit set's test mIoU within 0.01, while >> 8 would keep 5 gray levels."""
    from benchmarks import bit_depth

    assert bit_depth.main(["--tiny", "--precision", "fp32", "--variants", "8-bit,12-bit",
                           "--out-dir", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "bit_depth.json").read_text())
    control, twelve = result["results"]
    assert (control["dtype"], twelve["dtype"]) == ("uint8", "uint16")
    assert twelve["gray_levels"] == control["gray_levels"] > 16
    assert abs(twelve["test_miou"] - control["test_miou"]) <= 0.01
    assert result["target"]["met"]
    values = np.arange(256, dtype=np.uint8)
    assert len(np.unique(bit_depth.shifted_to_eight_bit(bit_depth.to_twelve_bit(values)))) == 5  # 7..11
