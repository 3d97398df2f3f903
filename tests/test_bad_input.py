"""One table of bad inputs through the real commands: each gives exit code 2, one line naming the culprit, no
traceback, and leaves every file that existed before unchanged. The table calls each command's ``main`` in the test
process (:func:`run_main`); one case per command also runs as a real process (:func:`run_cli`)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lib.core.params import load_params
from lib.generate import generate_dataset
from lib.prepare import prepare_patches
from model.checkpoint import save_checkpoint
from tests.conftest import (
    assert_user_error,
    constant_checkpoint,
    file_digests,
    run_cli,
    run_main,
    tiny_params_dict,
    write_params,
)


@pytest.fixture(scope="module")
def world_template(tmp_path_factory) -> Path:
    """Parameters, generated images, patches and a good checkpoint: the world each case damages a copy of."""
    root = tmp_path_factory.mktemp("world")
    params_file = write_params(root / "params.json", tiny_params_dict(root / "data"))
    params = load_params(params_file)
    train, _ = generate_dataset(params, progress=False)
    prepare_patches(train, root / "data" / "patches_s48", params, progress=False)
    constant_checkpoint(root / "good.pth", 0)
    return root


@pytest.fixture
def world(world_template, tmp_path) -> Path:
    root = tmp_path / "w"
    shutil.copytree(world_template, root)
    raw = json.loads((root / "params.json").read_text().replace(str(world_template), str(root)))
    (root / "params.json").write_text(json.dumps(raw))
    return root


def _params(w: Path, mutate: Callable[[dict], None]) -> Path:
    raw = json.loads((w / "params.json").read_text())
    mutate(raw)
    path = w / "bad_params.json"
    path.write_text(json.dumps(raw))
    return path


def _gen(w, *a):
    return ["-m", "lib.generate", "--params", str(w / "params.json"), "--out", str(w / "new"), *a]


def _prep(w, *a):
    return ["-m", "lib.prepare", "--params", str(w / "params.json"), "--src", str(w / "data" / "images_training"),
            "--out", str(w / "patches_new"), *a]


def _train(w, *a):
    return ["train.py", "--params", str(w / "params.json"), "-f", str(w / "data" / "patches_s48"), *a]


def _predict(w, *a):
    test = w / "data" / "images_test"
    return ["predict.py", "--checkpoint", str(w / "good.pth"), "--input", str(test / "images"), "--masks",
            str(test / "masks"), "--output", str(w / "pred"), "--quiet", *a]


def _predict_without_masks(w):
    args = _predict(w)
    i = args.index("--masks")
    return args[:i] + args[i + 2:]


def _swap(args: list[str], flag: str, value: str) -> list[str]:
    i = args.index(flag)
    return [*args[: i + 1], value, *args[i + 2:]]


def _text_png(path: Path) -> None:
    path.write_text("this is not an image")


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def _mask_value(path: Path, value: int) -> None:
    mask = np.asarray(Image.open(path)).copy()
    mask[0, 0] = value
    Image.fromarray(mask, "L").save(path)


def _sixteen_bit_colours(mask_path: Path, params_path: Path) -> None:
    """Replace an index mask by a 16-bit RGB PNG of its class colours as stored 8-bit values (not × 257): keeping
    the high bytes alone read every one as black, the background."""
    import png

    labels = np.asarray(Image.open(mask_path))
    rgb = np.array(load_params(params_path).class_colors, np.uint16)[labels]
    with mask_path.open("wb") as handle:
        height, width, _ = rgb.shape
        png.Writer(width, height, greyscale=False, bitdepth=16).write(handle, rgb.reshape(height, -1))


def _as_tiff(png_path: Path, dtype, channels: int = 1, nan: bool = False, **kw) -> None:
    """Replace an image by a TIFF of the same pixels in another dtype, channel count or layout."""
    import tifffile

    a = np.asarray(Image.open(png_path)).astype(dtype)
    a = np.stack([a] * channels, axis=0 if kw.get("imagej") else -1) if channels > 1 else a
    if nan:
        a[0, 0] = np.nan
    extra = {"photometric": "minisblack", "planarconfig": "contig"} if channels > 1 and not kw else {}
    tifffile.imwrite(png_path.with_suffix(".tif"), a, **extra, **kw)
    png_path.unlink()


def _huge_png(path: Path, side: int = 3_000_000) -> None:
    """A PNG whose header says side × side 8-bit gray (9 TB decoded: more than any machine has; 300000² fitted in
    the memory of a 128-GB GPU machine) and whose pixels are missing: only the header is read before it is refused."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def _ckpt_edited(w: Path, edit: Callable[[dict], object]) -> Path:
    """good.pth with ``edit`` applied to its state, as other.pth."""
    state = torch.load(w / "good.pth", weights_only=True)
    edit(state)
    save_checkpoint(w / "other.pth", state)
    return w / "other.pth"


def _whole_model(path: Path) -> Path:
    """A common slip: ``torch.save(model)``, the module pickled with its class, in place of a state."""
    from model.unet_model import UNet

    torch.save(UNet(1, 3, 4), path)
    return path


def _duplicate_key(w: Path) -> Path:
    path = w / "dup.json"
    path.write_text((w / "params.json").read_text().replace('"training": {', '"training": {"epochs": 1, ', 1))
    return path


TRAIN = "data/images_training"
# (id, setup(world) -> argv, fragments the one-line message must contain)
CASES = [
    ("params-missing", lambda w: _swap(_gen(w), "--params", str(w / "nope.json")), ["nope.json", "not found"]),
    ("params-not-json", lambda w: (w.joinpath("p.json").write_text("{oops"), _swap(_train(w), "--params",
                                   str(w / "p.json")))[1], ["p.json", "invalid JSON", "line 1"]),
    ("params-unknown-key", lambda w: _swap(_prep(w), "--params", str(_params(w, lambda r: r["patches"].update(
        sizes=3)))), ["patches.sizes", "unknown key"]),
    ("params-wrong-type", lambda w: _swap(_gen(w), "--params", str(_params(w, lambda r: r["data"].update(
        n_test="ten")))), ["data.n_test", "integer"]),
    ("params-out-of-range", lambda w: _swap(_train(w), "--params", str(_params(w, lambda r: r["training"].update(
        val_fraction=2.0)))), ["training.val_fraction", "[0, 0.9]"]),
    ("data-folder-missing", lambda w: _swap(_prep(w), "--src", str(w / "nowhere")), ["nowhere", "not found"]),
    ("data-folder-empty", lambda w: ((w / "empty" / "images").mkdir(parents=True), _swap(_prep(w), "--src",
                                     str(w / "empty")))[1], ["empty/images", "no images"]),
    ("image-without-mask", lambda w: ((w / TRAIN / "masks" / "i1.png").unlink(), _prep(w))[1],
     ["i1.png", "no mask"]),
    ("mask-without-image", lambda w: ((w / TRAIN / "images" / "i2.png").unlink(), _prep(w))[1],
     ["masks/i2.png", "mask without an image"]),
    ("two-images-one-name", lambda w: (shutil.copy(w / TRAIN / "images" / "i1.png", w / TRAIN / "images" / "i1.bmp"),
                                       _prep(w))[1], ["i1.png", "shares the name 'i1' with i1.bmp"]),
    ("sizes-differ", lambda w: (Image.new("L", (30, 30)).save(w / TRAIN / "masks" / "i0.png"), _prep(w))[1],
     ["i0.png", "30x30", "72x120"]),
    ("mask-value-outside-classes", lambda w: (_mask_value(w / TRAIN / "masks" / "i3.png", 9), _prep(w))[1],
     ["i3.png", "[9]"]),
    ("sixteen-bit-colour-mask", lambda w: (_sixteen_bit_colours(w / TRAIN / "masks" / "i3.png", w / "params.json"),
                                           _prep(w))[1], ["masks/i3.png", "16-bit colours that are no 8-bit colours"]),
    ("truncated-png", lambda w: (_truncate(w / TRAIN / "images" / "i0.png"), _prep(w))[1],
     ["i0.png", "not a readable image"]),
    ("text-file-named-png", lambda w: (_text_png(w / TRAIN / "masks" / "i1.png"), _prep(w))[1],
     ["masks/i1.png", "not a readable image"]),
    ("mixed-dtypes", lambda w: (_as_tiff(w / TRAIN / "images" / "i0.png", np.float32), _prep(w))[1],
     ["i1.png", "image of uint8, 1 channel among images of float32, 1 channel (i0.tif)", "one pixel type"]),
    ("mixed-channel-counts", lambda w: (_as_tiff(w / TRAIN / "images" / "i2.png", np.uint8, 2), _prep(w))[1],
     ["i2.tif", "uint8, 2 channels among images of uint8, 1 channel"]),
    ("tiff-unsupported-axes", lambda w: (_as_tiff(w / TRAIN / "images" / "i0.png", np.uint16, 5, imagej=True,
                                                  metadata={"axes": "ZYX"}), _prep(w))[1],
     ["i0.tif", "unsupported TIFF axes 'ZYX'"]),
    ("float-image-nan", lambda w: (_as_tiff(w / TRAIN / "images" / "i0.png", np.float32, nan=True), _prep(w))[1],
     ["i0.tif", "1 pixel value(s) are NaN or infinite"]),
    ("patch-folder-missing", lambda w: _swap(_train(w), "-f", str(w / "gone")), ["gone", "not found"]),
    ("patch-folder-empty", lambda w: ((w / "hollow").mkdir(), _swap(_train(w), "-f", str(w / "hollow")))[1],
     ["hollow", "empty"]),
    ("no-manifest", lambda w: ((w / "data" / "patches_s48" / "manifest.csv").unlink(), _train(w))[1],
     ["manifest.csv", "not found"]),
    ("epochs-0", lambda w: _train(w, "-e", "0"), ["training.epochs", ">= 1"]),
    ("negative-lr", lambda w: _train(w, "-l", "-0.01"), ["training.learning_rate", "> 0"]),
    ("batch-size-0", lambda w: _train(w, "-b", "0"), ["training.batch_size", ">= 1"]),
    ("checkpoint-truncated", lambda w: (_truncate(w / "good.pth"), _predict(w))[1],
     ["good.pth", "not a readable checkpoint (", "zip archive"]),  # the reason, not only the exception's class
    ("checkpoint-not-one", lambda w: (_text_png(w / "good.pth"), _train(w, "--load", str(w / "good.pth")))[1],
     ["good.pth", "checkpoint"]),
    ("checkpoint-other-classes", lambda w: _train(w, "--load", str(constant_checkpoint(w / "c4.pth", 0, 4))),
     ["c4.pth", "4 classes"]),
    ("checkpoint-other-channels", lambda w: _train(w, "--load", str(constant_checkpoint(w / "c3.pth", 0,
                                                                                        n_channels=3))),
     ["c3.pth", "3 input channel"]),
    # a checkpoint edited by hand or written by other code: each entry is checked as it loads, naming what is wrong
    ("checkpoint-lacks-an-entry", lambda w: _swap(_predict(w), "--checkpoint",
                                                  str(_ckpt_edited(w, lambda s: s.pop("class_colors")))),
     ["other.pth", "lacks class_colors; expected keys"]),
    ("checkpoint-normalization-emptied", lambda w: _swap(_predict(w), "--checkpoint",
                                                         str(_ckpt_edited(w, lambda s: s.update(normalization={})))),
     ["other.pth: normalization: expected a dict of mode"]),  # a KeyError traceback
    ("checkpoint-normalization-of-other-channels", lambda w: _swap(_predict(w), "--checkpoint", str(_ckpt_edited(
        w, lambda s: s["normalization"].update(mean=[0.5, 0.5])))),
     ["other.pth: normalization: mean [0.5, 0.5]: expected 1 finite number(s), one per channel"]),
    ("checkpoint-classes-short", lambda w: _swap(_predict(w), "--checkpoint", str(_ckpt_edited(
        w, lambda s: s.update(class_names=s["class_names"][:2])))),
     ["other.pth: class_names has 2 entries, model_config.n_classes is 3"]),  # a traceback in the metrics
    ("checkpoint-weight-missing", lambda w: _swap(_predict(w), "--checkpoint", str(_ckpt_edited(
        w, lambda s: s["model_state"].pop("inc.double_conv.0.weight")))),
     ["other.pth: weights do not fit the model", "(lacks inc.double_conv.0.weight)"]),  # the key was not named
    ("checkpoint-weight-of-another-shape", lambda w: _swap(_predict(w), "--checkpoint", str(_ckpt_edited(
        w, lambda s: s["model_state"].update({"outc.conv.bias": torch.zeros(5)})))),
     ["other.pth: weights do not fit", "(outc.conv.bias is 5, the model's 3)"]),
    ("checkpoint-params-edited", lambda w: _swap(_predict(w), "--checkpoint", str(_ckpt_edited(
        w, lambda s: s["params"]["patches"].update(size="x")))),
     ["other.pth: params: patches.size: expected an integer"]),
    ("predict-image-unreadable", lambda w: (_text_png(w / "data/images_test/images/i1.png"), _predict(w))[1],
     ["i1.png", "not a readable image"]),
    ("predict-mask-other-size", lambda w: (Image.new("L", (5, 7)).save(w / "data/images_test/masks/i0.png"),
                                           _predict(w))[1], ["i0.png", "5x7"]),
    ("predict-mask-outside-classes", lambda w: (_mask_value(w / "data/images_test/masks/i0.png", 200),
                                                _predict(w))[1], ["i0.png", "[200]"]),
    ("predict-channels-differ", lambda w: (_as_tiff(w / "data/images_test/images/i1.png", np.uint8, 4),
                                           _predict(w))[1], ["i1.tif", "4 channel(s)", "the model expects 1"]),
    ("predict-dtype-differs", lambda w: (_as_tiff(w / "data/images_test/images/i0.png", np.uint16), _predict(w))[1],
     ["i0.tif", "image is uint16", "trained on uint8 images"]),
    ("predict-image-cannot-fit", lambda w: (_huge_png(w / "data/images_test/images/i1.png"),
                                            _predict_without_masks(w))[1],
     ["i1.png", "a 3000000x3000000 image needs 8381.9 GiB of memory decoded"]),
    ("params-percentiles-equal", lambda w: _swap(_train(w), "--params", str(_params(w, lambda r: r["data"].update(
        percentiles=[5, 5])))), ["data.percentiles", "low < high"]),
    ("predict-output-is-a-file", lambda w: ((w / "pred").write_text("x"), _predict(w))[1],
     ["pred", "a file, not a folder (the output folder)"]),
    ("predict-metrics-folder-is-a-file", lambda w: _predict(w, "--metrics", str(w / "good.pth" / "m.json")),
     ["good.pth", "a file, not a folder (the folder of --metrics)"]),
    ("predict-masks-is-a-file", lambda w: _swap(_predict(w), "--masks", str(w / "data/images_test/masks/i0.png")),
     ["masks/i0.png", "a file (expected the folder of masks)"]),
    ("predict-folder-where-a-mask-goes", lambda w: ((w / "pred" / "i1.png").mkdir(parents=True), _predict(w))[1],
     ["pred/i1.png", "a folder stands where the output file goes"]),
    ("predict-folder-where-probabilities-go", lambda w: ((w / "pred" / "i1_probabilities.npy").mkdir(parents=True),
                                                         _predict(w, "--save-probabilities"))[1],
     ["pred/i1_probabilities.npy", "a folder stands where the output file goes"]),
    ("predict-tiff-above-negative", lambda w: _predict(w, "--tiff-above", "-1"), ["--tiff-above -1.0", ">= 0"]),
    ("predict-tiff-above-nan", lambda w: _predict(w, "--tiff-above", "nan"), ["--tiff-above nan", ">= 0"]),
    ("predict-cuda-graphs-without-cuda", lambda w: _predict(w, "--device", "cpu", "--cuda-graphs"),
     ["--cuda-graphs", "needs a CUDA device", "cpu"]),
    ("batch-size-larger-than-the-set", lambda w: _train(w, "-b", "100000"),
     ["--batch-size 100000", "larger than the training set"]),
    ("predict-checkpoint-missing", lambda w: _swap(_predict(w), "--checkpoint", str(w / "none.pth")),
     ["none.pth", "not found"]),
    ("predict-image-truncated", lambda w: (_truncate(w / "data/images_test/images/i0.png"), _predict(w))[1],
     ["i0.png"]),
    ("predict-mask-missing", lambda w: ((w / "data/images_test/masks/i1.png").unlink(), _predict(w))[1],
     ["i1.png", "no mask"]),
    ("predict-output-is-an-input-folder", lambda w: _swap(_predict(w), "--output", str(w / "data/images_test/images")),
     ["--output", "data/images_test/images", "a folder of the input data"]),
    ("predict-overlap-out-of-range", lambda w: _predict(w, "--overlap", "0.99"), ["inference.overlap", "0.95"]),
    ("checkpoint-not-resumable", lambda w: _train(w, "--load", str(w / "good.pth")),
     ["good.pth", "cannot resume", "optimizer_state"]),
    ("predict-block-width-below-the-window", lambda w: _predict(w, "--block-width", "10"),
     ["--block-width 10", "window"]),
    ("predict-tiff-image-without-mask", lambda w: (_as_tiff(w / "data/images_test/images/i1.png", np.uint8),
                                                   (w / "data/images_test/masks/i1.png").unlink(), _predict(w))[2],
     ["i1.tif", "no mask", "masks/i1.png, .tif or another image suffix"]),
    ("predict-two-images-one-name", lambda w: (shutil.copy(w / "data/images_test/images/i1.png",
                                                           w / "data/images_test/images/i1.jpg"), _predict(w))[1],
     ["i1.png", "shares the name 'i1' with i1.jpg"]),
    ("predict-metrics-without-masks", lambda w: [*_predict_without_masks(w), "--metrics", str(w / "m.json")],
     ["--metrics", "needs --masks"]),
    ("predict-metrics-is-a-folder", lambda w: _predict(w, "--metrics", str(w / "data")), ["--metrics", "is a folder"]),
    ("generate-image-cannot-fit", lambda w: _swap(_gen(w), "--params", str(_params(w, lambda r: r["data"].update(
        height=3_000_000, width=3_000_000)))),
     ["data.height x data.width = 3000000x3000000", "GiB of memory to draw one image"]),
    ("checkpoint-a-whole-model", lambda w: _swap(_predict(w), "--checkpoint", str(_whole_model(w / "whole.pth"))),
     ["whole.pth", "refused", "GLOBAL model.unet_model.UNet was not an allowed global by default)",
      "expected the state a train.py run saves"]),  # the reason whole, torch's advice left out
    ("checkpoint-pickle-protocol-4", lambda w: (torch.save({"a": 1}, w / "p4.pth", pickle_protocol=4),
                                                _train(w, "--load", str(w / "p4.pth")))[1],
     ["p4.pth", "Unsupported operand"]),  # and torch's warning about the protocol is not printed
    ("flag-of-the-wrong-type", lambda w: _train(w, "-l", "fast"),
     ["argument -l/--learning-rate: invalid float value: 'fast'", "--help)"]),  # not argparse's usage block
    ("flag-not-among-the-choices", lambda w: _gen(w, "--generator", "other"),
     ["argument --generator: invalid choice: 'other'", "--help)"]),
    ("params-key-given-twice", lambda w: _swap(_train(w), "--params", str(_duplicate_key(w))),
     ["dup.json", "key 'epochs' appears twice"]),
    ("predict-image-is-a-pipe", lambda w: (os.mkfifo(w / "data/images_test/images/i2.png"),
                                           shutil.copy(w / "data/images_test/masks/i0.png",
                                                       w / "data/images_test/masks/i2.png"), _predict(w))[2],
     ["i2.png: not a regular file (a folder, a pipe or a device), expected an image"]),  # it blocked for ever
    ("predict-checkpoint-is-a-folder", lambda w: _swap(_predict(w), "--checkpoint", str(w / "data")),
     ["data: not a file"]),  # "checkpoint not found"
    ("predict-checkpoint-is-json", lambda w: ((w / "c.json").write_text('{"a": 1}'),
                                              _swap(_predict(w), "--checkpoint", str(w / "c.json")))[1],
     ["c.json", "not a checkpoint", "torch.save"]),
]


def _check_bad_input(world: Path, case: tuple, run: Callable) -> None:
    _, setup, fragments = case
    argv = setup(world)
    before = file_digests(world)
    result = run(*argv)
    assert_user_error(result, *fragments)
    after = file_digests(world)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing that existed changed
    assert not (world / "patches_new").exists() and not (world / "new").exists()
    assert not (world / "pred").is_dir() or not any(p.is_file() for p in (world / "pred").rglob("*"))  # no mask


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(world, case):
    _check_bad_input(world, case, run_main)


# one case of each command as a real process: the `__main__` route, its exit status, and no warning at import
IN_A_PROCESS = [c for c in CASES if c[0] in ("params-wrong-type", "image-without-mask", "epochs-0",
                                                "predict-mask-other-size")]


@pytest.mark.parametrize("case", IN_A_PROCESS, ids=[c[0] for c in IN_A_PROCESS])
def test_bad_input_in_its_own_process(world, case):
    _check_bad_input(world, case, run_cli)


# (id, conversion of each training image, what the first patch must be: dtype and channels); its pixels must be the
# converted image's window exactly
ACCEPTED = [
    ("16-bit-gray", lambda a: (a.astype(np.uint16) * 16 + 7), ("uint16", 1)),
    ("rgba-of-gray", lambda a: np.stack([a, a, a, np.full_like(a, 255)], axis=-1), ("uint8", 3)),
]


@pytest.mark.parametrize("case", ACCEPTED, ids=[c[0] for c in ACCEPTED])
def test_documented_conversions_are_accepted(world, case):
    from dataloader.manifest import read_manifest
    from lib.core.imageio import read_image

    _, convert, (dtype, channels) = case
    folder = world / TRAIN / "images"
    converted = {}
    for path in folder.glob("*.png"):
        converted[path.stem] = convert(np.asarray(Image.open(path)))
        Image.fromarray(converted[path.stem]).save(path)
    result = run_cli(*_prep(world))
    assert result.returncode == 0, result.stderr
    row = read_manifest(world / "patches_new")[0]
    patch = read_image(world / "patches_new" / "images" / row["file"])
    top, left, size = int(row["top"]), int(row["left"]), patch.shape[0]
    assert patch.dtype.name == dtype and (1 if patch.ndim == 2 else patch.shape[2]) == channels
    assert np.array_equal(patch, converted[row["source"]][top:top + size, left:left + size, ...][..., :3]
                          if channels == 3 else converted[row["source"]][top:top + size, left:left + size])


def test_images_smaller_than_a_patch_are_padded_in_preparation(world):
    folder = world / TRAIN
    for sub in ("images", "masks"):
        for path in (folder / sub).glob("*.png"):
            img = Image.open(path)
            img.crop((0, 0, 30, 20)).save(path)
    result = run_cli(*_prep(world))
    assert result.returncode == 0, result.stderr
    assert Image.open(world / "patches_new" / "images" / "p0.png").size == (48, 48)


def test_case_count():
    assert len(CASES) + len(ACCEPTED) + 1 == 75  # reported in the README
