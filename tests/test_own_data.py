"""A user's own data set: 4 classes, RGB images of varying sizes (one RGBA, one smaller than a patch), colour-coded
masks, Img_i/Mask_i names — prepare → train → predict → evaluate through the commands' ``main`` (conftest.run_main),
with no code change."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lib.core.imageio import read_image, read_mask
from tests.conftest import REPO, assert_user_error, run_main

CLASSES = [
    {"name": "background", "index": 0, "color": [0, 0, 0]},
    {"name": "cell", "index": 1, "color": [255, 0, 0]},
    {"name": "nucleus", "index": 2, "color": [0, 0, 255]},
    {"name": "vessel", "index": 3, "color": [255, 255, 0]},
]
SIZES = [(70, 90), (64, 100), (90, 60), (80, 80), (40, 60)]  # (height, width); the last is smaller than a patch
TINTS = np.array([[200, 190, 180], [150, 40, 40], [40, 40, 160], [120, 120, 20]])


def _draw(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    labels = np.zeros((height, width), np.uint8)
    for cls in (1, 2, 3):
        for _ in range(2):
            h, w = rng.integers(6, 16, size=2)
            y, x = rng.integers(0, height - h), rng.integers(0, width - w)
            labels[y:y + h, x:x + w] = cls
    image = TINTS[labels] + rng.normal(0, 8, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8), labels


def _write_split(folder: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir(parents=True)
    colors = np.array([c["color"] for c in CLASSES], np.uint8)
    for i in range(n):
        image, labels = _draw(rng, *SIZES[i % len(SIZES)])
        if i == 1:  # RGBA: the alpha channel is dropped
            rgba = np.concatenate([image, np.full(image.shape[:2] + (1,), 128, np.uint8)], axis=2)
            Image.fromarray(rgba, "RGBA").save(folder / "images" / f"Img_{i}.png")
        else:
            Image.fromarray(image, "RGB").save(folder / "images" / f"Img_{i}.png")
        Image.fromarray(colors[labels], "RGB").save(folder / "masks" / f"Mask_{i}.png")


@pytest.fixture(scope="module")
def own_data(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("own")
    _write_split(root / "train", 6, 0)
    _write_split(root / "test", 3, 1)
    raw = json.loads((REPO / "parameters.json").read_text())
    raw["data"].update(root=str(root), training_folder="train", test_folder="test", image_prefix="Img_",
                       mask_prefix="Mask_")
    raw["classes"] = CLASSES
    raw["patches"].update(size=48, per_image=4, rotate90=True, foreground_fraction=0.5)
    raw["model"].update(base_channels=4)
    raw["training"].update(folder="patches_s48", epochs=2, batch_size=8, loss="dice_ce",
                           class_weights=[0.5, 1.0, 1.0, 2.0], checkpoints_dir=str(root / "checkpoints"),
                           runs_dir=str(root / "runs"), val_fraction=0.2, precision="fp32")
    params = root / "params.json"
    params.write_text(json.dumps(raw, indent=1))
    return root, params


@pytest.fixture(scope="module")
def own_trained(own_data) -> tuple[Path, Path, Path]:
    """Patches cut and a U-Net trained by the commands' ``main``: ``(root, params file, best checkpoint)``."""
    root, params = own_data
    prepared = run_main("-m", "lib.prepare", "--params", str(params))
    assert prepared.returncode == 0, prepared.stderr
    patches = root / "patches_s48"
    assert len(list((patches / "images").glob("*.png"))) == 6 * 4 * 8  # flips × 90° rotations: 8 symmetries
    first = read_image(patches / "images" / "p0.png")
    assert first.shape == (48, 48, 3)
    assert set(np.unique(read_mask(patches / "masks" / "p0.png", [tuple(c["color"]) for c in CLASSES]))) <= {0, 1, 2, 3}

    trained = run_main("train.py", "--params", str(params), "--name", "own")
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "val mIoU" in trained.stdout and "vessel" in trained.stdout
    return root, params, root / "checkpoints" / "own" / "best.pth"


def test_prepare_train_predict_evaluate(own_trained):
    root, _, checkpoint = own_trained

    out, metrics_file = root / "pred", root / "metrics.json"
    predicted = run_main("predict.py", "--checkpoint", str(checkpoint),
                         "--input", str(root / "test" / "images"), "--masks", str(root / "test" / "masks"),
                         "--output", str(out), "--metrics", str(metrics_file), "--quiet")
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    metrics = json.loads(metrics_file.read_text())
    assert list(metrics["iou"]) == ["background", "cell", "nucleus", "vessel"] and metrics["n_images"] == 3
    for i, (h, w) in enumerate(SIZES[:3]):
        mask = Image.open(out / f"Img_{i}.png")
        assert mask.size == (w, h) and mask.mode == "P"
        assert mask.getpalette()[:12] == [v for c in CLASSES for v in c["color"]]


def test_notebooks_prepare_and_segment_own_data(own_trained, tmp_path, monkeypatch):
    """The preparation and inference notebooks take the own set's parameters file: RGB images, Img_/Mask_ names,
    colour masks and four classes, with no edit to a notebook."""
    from tests.test_notebooks import n_figures, run_notebook, text

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    root, params, checkpoint = own_trained
    prepared = run_notebook("image_preparation.ipynb", tmp_path, params_file=str(params), data_root=str(root),
                            patch_size=32, per_image=2, seed=5, overwrite=True, n_show=8)
    assert n_figures(prepared) >= 2
    assert "96 patches of 32x32" in text(prepared)  # 6 images × 2 windows × 8 symmetries
    assert read_image(root / "patches_s32" / "images" / "p0.png").shape == (32, 32, 3)
    assert "8 variants, all equal to apply_augmentation of the original: True" in text(prepared)

    # no data_root: the notebook reads data.root of the parameters file, as the README's headless example does
    segmented = run_notebook("inference.ipynb", tmp_path, checkpoint=str(checkpoint), params_file=str(params),
                             example=2, device="cpu", precision="fp32")
    printed = text(segmented)
    assert n_figures(segmented) >= 1 and "segmented 3 test images" in printed
    assert "Img_2: mIoU" in printed
    for name in ("background", "cell", "nucleus", "vessel"):
        assert re.search(rf"^{name}\s+\S+$", printed, re.MULTILINE), printed


def _bad_set(tmp_path: Path) -> Path:
    _write_split(tmp_path / "set", 2, 3)
    return tmp_path / "set"


def _prepare(params: Path, src: Path, out: Path):
    return run_main("-m", "lib.prepare", "--params", str(params), "--src", str(src), "--out", str(out))


def test_colour_that_is_no_class(own_data, tmp_path):
    _, params = own_data
    src = _bad_set(tmp_path)
    mask = np.array(Image.open(src / "masks" / "Mask_0.png"))
    mask[3, 3] = [10, 200, 30]
    Image.fromarray(mask).save(src / "masks" / "Mask_0.png")
    assert_user_error(_prepare(params, src, tmp_path / "out"), "Mask_0.png", "(10, 200, 30)", "no class colour")
    assert not (tmp_path / "out" / "manifest.csv").exists()


def test_index_value_that_is_no_class(own_data, tmp_path):
    _, params = own_data
    src = _bad_set(tmp_path)
    Image.fromarray(np.full((70, 90), 4, np.uint8), "L").save(src / "masks" / "Mask_0.png")
    assert_user_error(_prepare(params, src, tmp_path / "out"), "Mask_0.png", "[4]", "0..3")


def test_mask_without_image_and_image_without_mask(own_data, tmp_path):
    _, params = own_data
    src = _bad_set(tmp_path)
    (src / "images" / "Img_1.png").rename(tmp_path / "moved.png")
    assert_user_error(_prepare(params, src, tmp_path / "out"), "Mask_1.png", "mask without an image")
    (tmp_path / "moved.png").rename(src / "images" / "Img_1.png")
    (src / "masks" / "Mask_0.png").unlink()
    assert_user_error(_prepare(params, src, tmp_path / "out"), "Img_0.png", "no mask")


def test_size_mismatch_and_mixed_gray_and_colour(own_data, tmp_path):
    _, params = own_data
    src = _bad_set(tmp_path)
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(src / "masks" / "Mask_1.png")
    assert_user_error(_prepare(params, src, tmp_path / "out"), "Mask_1.png", "10x10")
    src2 = _bad_set(tmp_path / "b")
    Image.fromarray(np.zeros((64, 100), np.uint8)).save(src2 / "images" / "Img_1.png")
    assert_user_error(_prepare(params, src2, tmp_path / "out2"), "Img_1.png",
                      "image of uint8, 1 channel among images of uint8, 3 channels")


def test_sixteen_bit_gray_is_kept_as_stored(tmp_path):
    values = np.array([[0, 256, 65535], [4096, 32768, 1000]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    got = read_image(tmp_path / "g16.png")
    assert got.dtype == np.uint16 and got.tolist() == values.tolist()
