"""predict.py end to end: masks written, metrics against a hand-computed case, bad input."""

from __future__ import annotations

import contextlib
import errno
import json
import re

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from lib.core.errors import UserError
from lib.core.params import load_params
from lib.generate import generate_split
from model.checkpoint import save_checkpoint
from model.unet_model import UNet
from tests.conftest import REPO, assert_user_error, constant_checkpoint, run_cli, run_main

PARAMS = load_params(REPO / "parameters.json")


@pytest.fixture(scope="module")
def test_set(tmp_path_factory):
    from lib.core.params import replace

    root = tmp_path_factory.mktemp("predict")
    params = replace(PARAMS, "data", height=100, width=60, line_length=[20, 60])
    folder = generate_split(root / "test", "test", 3, params, progress=False)
    return root, folder


def _hand_metrics(masks: list[np.ndarray], label: int) -> dict:
    """IoU of a prediction that says ``label`` everywhere, from the class pixel counts of the masks."""
    counts = np.bincount(np.concatenate([m.ravel() for m in masks]), minlength=3)
    total = counts.sum()
    iou = [0.0, 0.0, 0.0]
    iou[label] = counts[label] / total  # TP = pixels of that class, union = all pixels
    return {"iou": iou, "miou": float(np.mean(iou))}


def test_masks_and_metrics_match_a_hand_computed_case(test_set, tmp_path):
    root, folder = test_set
    ckpt = constant_checkpoint(tmp_path / "bg.pth", label=0)
    out, metrics_file = tmp_path / "out", tmp_path / "m.json"
    result = run_cli("predict.py", "--checkpoint", str(ckpt), "--input", str(folder / "images"), "--output",
                     str(out), "--masks", str(folder / "masks"), "--metrics", str(metrics_file), "--quiet")
    assert result.returncode == 0, result.stderr
    written = sorted(p.name for p in out.iterdir())
    assert written == ["i0.png", "i1.png", "i2.png"]
    first = Image.open(out / "i0.png")
    assert first.mode == "P" and first.size == (60, 100) and set(np.unique(np.asarray(first))) == {0}
    assert first.getpalette()[:9] == [v for c in PARAMS.class_colors for v in c]
    masks = [np.asarray(Image.open(folder / "masks" / f"i{i}.png")) for i in range(3)]
    expected = _hand_metrics(masks, 0)
    metrics = json.loads(metrics_file.read_text())
    assert metrics["n_images"] == 3
    assert metrics["miou"] == pytest.approx(expected["miou"])
    assert [metrics["iou"][n] for n in PARAMS.class_names] == pytest.approx(expected["iou"])
    per_image = [_hand_metrics([m], 0)["miou"] for m in masks]
    assert metrics["mean_image_miou"] == pytest.approx(np.mean(per_image))
    assert "mIoU" in result.stdout and "background" in result.stdout
    again = run_main("predict.py", "--checkpoint", str(ckpt), "--input", str(folder / "images"), "--output",
                     str(out), "--masks", str(folder / "masks"), "--metrics", str(metrics_file), "--quiet")
    assert again.returncode == 0, again.stderr  # an earlier metrics file is replaced
    empty = tmp_path / "empty.json"
    empty.write_bytes(b"")  # as --metrics "$(mktemp)" gives it
    into_empty = run_main("predict.py", "--checkpoint", str(ckpt), "--input", str(folder / "images"), "--output",
                          str(out), "--masks", str(folder / "masks"), "--metrics", str(empty), "--quiet")
    assert into_empty.returncode == 0 and json.loads(empty.read_text())["n_images"] == 3, into_empty.stderr


def test_single_file_probabilities_and_options(test_set, tmp_path):
    _, folder = test_set
    ckpt = constant_checkpoint(tmp_path / "line.pth", label=1)
    result = run_cli("predict.py", "--checkpoint", str(ckpt), "--input", str(folder / "images" / "i1.png"),
                     "--output", str(tmp_path / "o"), "--save-probabilities", "--overlap", "0.25", "--blend",
                     "gaussian", "--tta", "--quiet")
    assert result.returncode == 0, result.stderr
    # the device and precision it ran in, which the checkpoint's training precision decides by default
    assert re.search(r"wrote 1 mask\(s\) to .*, cpu (fp32|bf16)$", result.stdout.strip()), result.stdout
    probs = np.load(tmp_path / "o" / "i1_probabilities.npy")
    assert probs.shape == (3, 100, 60) and np.allclose(probs.sum(0), 1, atol=1e-4) and (probs[1] > 0.99).all()
    assert set(np.unique(np.asarray(Image.open(tmp_path / "o" / "i1.png")))) == {1}


@pytest.mark.parametrize("output,args", [("images", ["--input", "{w}/images"]),
                                         ("images", ["--input", "{w}/images", "--format", "png"]),
                                         ("images", ["--input", "{w}/images/i0.tif"]),
                                         (".", ["--input", "{w}"]),
                                         (".", ["--input", "{w}/images"]),
                                         ("masks", ["--input", "{w}/images", "--masks", "{w}/masks"]),
                                         ("masks", ["--input", "{w}/images"])])  # the ground truth, not read here
def test_an_output_folder_that_inputs_are_read_from_is_refused(test_set, tmp_path, output, args):
    """Masks written beside TIFF images (PNG masks replace nothing), into the data folder holding images/ or into the
    masks folder clash with the inputs or are read as images by the next run: refused before anything is written."""
    _, folder = test_set
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
        for i in range(2):
            tifffile.imwrite(tmp_path / sub / f"i{i}.tif", np.asarray(Image.open(folder / sub / f"i{i}.png")))
    checkpoint = constant_checkpoint(tmp_path / "c.pth", 1)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    result = run_main("predict.py", "--checkpoint", str(checkpoint), *[a.format(w=tmp_path) for a in args],
                      "--output", str(tmp_path / output), "--quiet")
    assert_user_error(result, f"--output {tmp_path / output}", "a folder of the input data")
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_masks_pair_with_their_images_by_name_whatever_the_suffix(test_set, tmp_path):
    """predict.py pairs images and masks by the rule of training (dataloader.pairs): a PNG image with a TIFF mask, a
    .TIF image with a .tif mask, dots in the name."""
    _, folder = test_set
    names = {"a.1.png": "a.1.tif", "b 2.TIF": "b 2.tif", "c.tiff": "c.png"}
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    for k, (image, mask) in enumerate(names.items()):
        pixels, truth = (np.asarray(Image.open(folder / sub / f"i{k}.png")) for sub in ("images", "masks"))
        for path, array in ((tmp_path / "images" / image, pixels), (tmp_path / "masks" / mask, truth)):
            if path.suffix.lower().startswith(".tif"):
                tifffile.imwrite(path, array)
            else:
                Image.fromarray(array).save(path)
    result = run_main("predict.py", "--checkpoint", str(constant_checkpoint(tmp_path / "c.pth", 0)), "--input",
                      str(tmp_path / "images"), "--masks", str(tmp_path / "masks"), "--output", str(tmp_path / "o"),
                      "--metrics", str(tmp_path / "m.json"), "--quiet")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "m.json").read_text())["n_images"] == 3


@pytest.mark.parametrize("target,fragment", [("truth", "would replace an input file"),
                                             ("image", "would replace an input file"),
                                             ("out", "would replace an output file"),
                                             ("checkpoint", "would replace an input file"),
                                             ("linked", "exists and is no metrics file")])
def test_metrics_file_may_not_replace_an_input_an_output_or_another_file(test_set, tmp_path, target, fragment):
    """``--metrics`` naming a ground-truth mask, an image, a mask to be written, the checkpoint or a hard link of it
    (best.pth and last.pth): refused before anything is written (it replaced the ground truth with JSON)."""
    _, folder = test_set
    checkpoint = constant_checkpoint(tmp_path / "c.pth", 1)
    (tmp_path / "linked.pth").hardlink_to(checkpoint)
    paths = {"truth": folder / "masks" / "i0.png", "image": folder / "images" / "i0.png",
             "out": tmp_path / "o" / "i0.png", "checkpoint": checkpoint, "linked": tmp_path / "linked.pth"}
    before = {p: p.read_bytes() for p in [*(folder / "masks").iterdir(), *(folder / "images").iterdir(), checkpoint]}
    result = run_main("predict.py", "--checkpoint", str(checkpoint), "--input", str(folder / "images"), "--masks",
                      str(folder / "masks"), "--output", str(tmp_path / "o"), "--metrics", str(paths[target]),
                      "--quiet")
    assert_user_error(result, f"--metrics {paths[target]}", fragment)
    assert all(p.read_bytes() == data for p, data in before.items()) and not (tmp_path / "o" / "i0.png").exists()
    assert (tmp_path / "linked.pth").read_bytes() == checkpoint.read_bytes()


@pytest.mark.parametrize("shape", [(64, 80), (20, 30)])  # streamed in blocks; smaller than the window (whole)
def test_probabilities_that_are_not_finite_are_refused(tmp_path, shape):
    """A float model whose normalisation divides by 1e-3 and an image at 3e38: the normalised input overflows
    float32, so the probabilities would be NaN and the mask quietly class 0."""
    state = torch.load(constant_checkpoint(tmp_path / "c.pth", 1), weights_only=True)
    state["normalization"] = {"mode": "zscore", "dtype": "float32", "scale": 1.0, "mean": [0.0], "std": [1e-3],
                              "low": None, "high": None}
    save_checkpoint(tmp_path / "c.pth", state)
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "hot.tif", np.full(shape, 3e38, np.float32))
    tifffile.imwrite(tmp_path / "in" / "fine.tif", np.full(shape, 0.5, np.float32))
    out = tmp_path / "out"
    result = run_main("predict.py", "--checkpoint", str(tmp_path / "c.pth"), "--input", str(tmp_path / "in"),
                      "--output", str(out), "--quiet")
    assert_user_error(result, "hot.tif (rows 0..", "probabilities are not finite")
    assert not (out / "hot.png").exists()


@pytest.mark.parametrize("existed", [False, True])
def test_an_image_refused_before_any_output_leaves_no_output_folder_made_by_the_run(tmp_path, existed):
    """NaN pixels show only when the rows are read, after the checks of the headers: the folder the run made for its
    outputs goes with the refusal, one that was there before stays."""
    checkpoint = constant_checkpoint(tmp_path / "c.pth", 1)
    state = torch.load(checkpoint, weights_only=True)
    state["normalization"] = {"mode": "zscore", "dtype": "float32", "scale": 1.0, "mean": [0.0], "std": [1.0],
                              "low": None, "high": None}
    save_checkpoint(checkpoint, state)
    (tmp_path / "in").mkdir()
    image = np.full((64, 80), 0.5, np.float32)
    image[40, 3] = np.nan
    tifffile.imwrite(tmp_path / "in" / "a.tif", image)
    out = tmp_path / "deep" / "out"
    if existed:
        out.mkdir(parents=True)
    result = run_main("predict.py", "--checkpoint", str(checkpoint), "--input", str(tmp_path / "in"), "--output",
                      str(out), "--quiet")
    assert_user_error(result, "a.tif (rows 0..", "NaN or infinite")
    assert out.is_dir() == existed and (tmp_path / "deep").is_dir() == existed
    assert not existed or not any(out.iterdir())


@pytest.mark.parametrize("writes_before_the_disk_is_full", [0, 2])  # the header; a band of rows
def test_probabilities_that_fill_the_disk_are_one_line_and_leave_no_temporary_file(tmp_path, monkeypatch,
                                                                                   writes_before_the_disk_is_full):
    """The .npy is written band by band into a temporary file: a write that fails names the file and the reason,
    and the temporary file goes (at once for the header, on discard for a band, as segment_file does)."""
    import predict
    from lib.core import atomic
    from lib.core.errors import UserError

    class FillsUp:
        def __init__(self, handle, room: int):
            self.handle, self.room = handle, room

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def write(self, data):
            if not self.room:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.room -= 1
            return self.handle.write(data)

    @contextlib.contextmanager
    def full_disk(path):
        with atomic.atomic_open(path) as handle:
            yield FillsUp(handle, writes_before_the_disk_is_full)

    monkeypatch.setattr(predict, "atomic_open", full_disk)
    path = tmp_path / "a_probabilities.npy"
    with pytest.raises(UserError, match=r"a_probabilities\.npy: cannot write \(No space left on device\)"):
        sink = predict.ProbabilitySink(path, 4, 6, 3, streamed=False)
        try:
            for top in range(4):
                sink.write(top, 0, torch.rand(3, 1, 6))
        finally:
            sink.discard()
    assert list(tmp_path.iterdir()) == []


def test_discarding_probabilities_on_a_full_disk_keeps_the_error_that_stopped_the_image(tmp_path, monkeypatch):
    """What waits in the file's buffer is flushed when an image stops (NaN pixels, Ctrl-C), and that can fail too:
    the temporary file still goes, and no "cannot write" replaces the error that stopped the image."""
    import io

    import predict
    from lib.core import atomic

    class FullDisk(io.FileIO):
        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic, "open", lambda path, mode: io.BufferedWriter(FullDisk(path, "w")), raising=False)
    sink = predict.ProbabilitySink(tmp_path / "a_probabilities.npy", 4, 6, 3, streamed=False)  # the header, buffered
    sink.discard()  # its flush fails: no error of its own
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_gives_one_line_exit_130_and_leaves_only_whole_files(test_set, tmp_path, monkeypatch):
    """Ctrl-C while the second image is segmented: no traceback, exit 130, the first image's mask and probabilities
    whole, and no temporary file or folder of the second."""
    from lib.segmenter import Segmenter

    _, folder = test_set
    started, predict_bands = [], Segmenter.predict_bands

    def stopped_at_the_second(self, *args, **kwargs):
        started.append(args)
        if len(started) == 2:
            raise KeyboardInterrupt
        yield from predict_bands(self, *args, **kwargs)

    monkeypatch.setattr(Segmenter, "predict_bands", stopped_at_the_second)
    out = tmp_path / "o"
    result = run_main("predict.py", "--checkpoint", str(constant_checkpoint(tmp_path / "c.pth", 1)), "--input",
                      str(folder / "images"), "--output", str(out), "--format", "tiff", "--save-probabilities",
                      "--quiet")
    assert result.returncode == 130 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == ["interrupted: every file written so far is whole; rerun the command to "
                                          "finish"]
    assert sorted(p.name for p in out.iterdir()) == ["i0.tif", "i0_probabilities.zarr"]
    assert set(np.unique(tifffile.imread(out / "i0.tif"))) == {1}


def test_a_rerun_removes_what_a_killed_run_left_for_its_image_and_nothing_else(tmp_path):
    """Temporary files of the image's mask (PNG or TIFF) and probabilities and its zarr scratch folders go, whatever
    the options of the rerun; another output's temporary file (image 'big.tif.v2') stays, as do other files."""
    import predict

    left = [".big.tif.k3j_9x0a.tmp", ".big.png.a1b2c3d4.tmp", ".big_probabilities.npy.zzzzzzzz.tmp"]
    kept = [".big.tif.v2.tif.zzzzzzzz.tmp", ".other.tif.k3j_9x0a.tmp", "big.tif", ".big.tif.notours.tmp"]
    for name in left + kept:
        (tmp_path / name).write_bytes(b"x")
    for folder in (".big_probabilities.zarr.tmp", ".big.labels.zarr.tmp"):
        (tmp_path / folder / "0.0").mkdir(parents=True)
    predict.remove_leftovers(tmp_path, ["big"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)


def test_the_output_folder_is_listed_once_whatever_the_number_of_images(test_set, tmp_path, monkeypatch):
    """The leftovers of a killed run are looked for in one listing of the output folder: a listing per image (three,
    with the glob of each output name) made a run over thousands of tiles quadratic in their number."""
    import os

    root, folder = test_set
    out = tmp_path / "out"
    out.mkdir()
    (out / ".i1.png.a1b2c3d4.tmp").write_bytes(b"x")  # a killed run's temporary mask: still removed
    listings = []
    real_scandir = os.scandir

    def counting_scandir(path="."):
        listings.append(os.path.abspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", counting_scandir)
    result = run_main("predict.py", "--checkpoint", str(constant_checkpoint(tmp_path / "bg.pth", label=0)),
                      "--input", str(folder / "images"), "--output", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    assert listings.count(str(out)) == 1
    assert sorted(p.name for p in out.iterdir()) == ["i0.png", "i1.png", "i2.png"]


@pytest.mark.parametrize("image", [torch.zeros(60, 60, dtype=torch.uint8), [[0] * 60] * 60])
def test_the_segmenter_takes_numpy_arrays_and_says_so(tmp_path, image):
    """A tensor or a list failed deep inside with an AttributeError ('torch.dtype' object has no attribute 'name')."""
    from lib.segmenter import Segmenter

    segmenter = Segmenter.from_checkpoint(constant_checkpoint(tmp_path / "c.pth", 1), device="cpu")
    with pytest.raises(TypeError, match=r"x: expected a NumPy array as read_image returns it, got (Tensor|list)"):
        segmenter.predict(image, "x")
    assert (segmenter.predict(np.zeros((60, 60), np.uint8))[1] == 1).all()


@pytest.mark.parametrize("shape", [(60,), (0, 0), (60, 0), (1, 60, 60, 1), ()])
def test_the_segmenter_refuses_arrays_that_are_no_image_in_one_line(tmp_path, shape):
    """A 1-D array raised an IndexError, an empty one NumPy's padding error, a 4-D one a wrong channel count."""
    from lib.segmenter import Segmenter

    segmenter = Segmenter.from_checkpoint(constant_checkpoint(tmp_path / "c.pth", 1), device="cpu")
    with pytest.raises(UserError, match=rf"^x: expected an H×W or H×W×C image, got an array of shape "
                                        rf"{re.escape(str(shape))}$"):
        segmenter.predict(np.zeros(shape, np.uint8), "x")


def test_an_ome_tiff_gives_masks_named_without_ome(tmp_path):
    """``slide.ome.tif`` gave ``slide.ome.tif`` (or ``.png``) masks, which claimed an OME-TIFF's metadata they lack."""
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "slide.ome.tif", np.zeros((60, 50), np.uint8), ome=True)
    for fmt, written in (("png", "slide.png"), ("tiff", "slide.tif")):
        result = run_main("predict.py", "--checkpoint", str(constant_checkpoint(tmp_path / "c.pth", 1)), "--input",
                          str(tmp_path / "in"), "--output", str(tmp_path / fmt), "--format", fmt, "--quiet")
        assert result.returncode == 0, result.stderr
        assert [p.name for p in (tmp_path / fmt).iterdir()] == [written]


def test_a_checkpoint_without_batchnorm_step_counters_loads(tmp_path):
    """``num_batches_tracked`` are no weights (load_state_dict fills them in); the weights' check took them for
    missing ones and refused checkpoints that loaded before."""
    from lib.segmenter import Segmenter
    from model.checkpoint import save_checkpoint

    state = torch.load(constant_checkpoint(tmp_path / "c.pth", 1), weights_only=True)
    stripped = UNet(1, 3, 4).state_dict()  # an OrderedDict with BatchNorm's version metadata, with which
    stripped.update(state["model_state"])  # load_state_dict needs every counter; a plain dict has none
    for key in [k for k in stripped if k.endswith("num_batches_tracked")]:
        del stripped[key]
    for model_state, metadata in ((stripped, True), (dict(stripped), False)):
        state["model_state"] = model_state
        save_checkpoint(tmp_path / "stripped.pth", state)
        loaded = torch.load(tmp_path / "stripped.pth", weights_only=True)["model_state"]
        assert hasattr(loaded, "_metadata") == metadata
        segmenter = Segmenter.from_checkpoint(tmp_path / "stripped.pth", device="cpu")
        assert (segmenter.predict(np.zeros((60, 60), np.uint8))[1] == 1).all()


def test_a_boolean_is_no_channel_count_of_a_checkpoint(tmp_path):
    from model.checkpoint import check_model_entries

    state = torch.load(constant_checkpoint(tmp_path / "c.pth", 1), weights_only=True)
    state["model_config"]["n_channels"] = True
    with pytest.raises(UserError, match=r"c.pth: model_config .*: expected positive integers n_channels"):
        check_model_entries(state, tmp_path / "c.pth")


# the precision inference runs in, by what was asked, what the checkpoint was trained in, the device and whether it
# computes bf16 natively (the CPU's flags; on CUDA, compute capability 8 or later, not emulated): expected
PRECISION_CASES = [
    ("auto", "fp32", "cpu", True, "fp32"),  # trained and validated in fp32: not run in bf16 unasked
    ("auto", "bf16", "cpu", True, "bf16"),
    ("auto", "bf16", "cpu", False, "fp32"),  # a bf16 model on a CPU without native bf16
    ("auto", "fp16", "cpu", True, "bf16"),  # a model of an fp16 GPU run, on a CPU (no fp16 there)
    ("auto", "fp16", "cpu", False, "fp32"),
    ("auto", None, "cpu", True, "bf16"),  # a checkpoint without the entry: the device's mixed precision
    ("auto", None, "cpu", False, "fp32"),
    ("auto", "float32", "cpu", True, "bf16"),  # a value that is no precision: as without the entry
    ("fp32", "bf16", "cpu", True, "fp32"),  # asked: as given
    ("bf16", "fp32", "cpu", False, "bf16"),
    ("auto", "fp32", "cuda", True, "fp32"),
    ("auto", "bf16", "cuda", True, "bf16"),
    ("auto", "bf16", "cuda", False, "fp16"),  # bf16 emulated on an older GPU: its fp16
    ("auto", "fp16", "cuda", True, "fp16"),
    ("auto", None, "cuda", True, "bf16"),
    ("auto", None, "cuda", False, "fp16"),
    ("auto", "fp16", "mps", False, "fp16"),
    ("auto", "bf16", "mps", False, "fp32"),
    ("auto", None, "mps", False, "fp32"),
]


@pytest.mark.parametrize("asked,trained,device_type,native,expected", PRECISION_CASES)
def test_inference_runs_in_the_training_precision_unless_asked_or_not_native(monkeypatch, asked, trained, device_type,
                                                                             native, expected):
    import lib.core.device as device

    monkeypatch.setattr(device, "cpu_has_bf16", lambda: native)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native or including_emulation)
    assert device.inference_precision(asked, trained, torch.device(device_type)) == expected


@pytest.mark.parametrize("trained,native,expected", [("fp32", True, "fp32"), ("bf16", True, "bf16"),
                                                     (None, True, "bf16"), ("bf16", False, "fp32")])
def test_the_segmenter_takes_the_checkpoint_precision(tmp_path, monkeypatch, trained, native, expected):
    """A model trained in fp32 was run in bf16 on a CPU with native bf16, though the README said inference runs in
    the training precision (a QA run: 0.05–0.08% of its labels moved)."""
    import lib.core.device as device
    from lib.segmenter import Segmenter

    monkeypatch.setattr(device, "cpu_has_bf16", lambda: native)
    state = torch.load(constant_checkpoint(tmp_path / "c.pth", 1), weights_only=True)
    if trained is None:
        state.pop("precision", None)
    else:
        state["precision"] = trained
    save_checkpoint(tmp_path / "t.pth", state)
    assert Segmenter.from_checkpoint(tmp_path / "t.pth", device="cpu").precision == expected
    assert Segmenter.from_checkpoint(tmp_path / "t.pth", device="cpu", precision="bf16").precision == "bf16"


@pytest.mark.parametrize("precision", ["float32", "FP32", "half"])
def test_a_precision_that_is_none_is_refused_not_run_in_fp16(tmp_path, precision):
    """Any value but fp32 and bf16 ran in fp16 autocast, on a CPU too, where fp16 is refused (a QA run)."""
    import lib.core.device as device
    from lib.segmenter import Segmenter

    path = constant_checkpoint(tmp_path / "c.pth", 1)
    with pytest.raises(UserError, match=f"precision '{precision}': expected auto, fp32, bf16 or fp16"):
        Segmenter.from_checkpoint(path, device="cpu", precision=precision)
    with pytest.raises(ValueError, match="precision must be one of"):
        device.autocast(torch.device("cpu"), precision)


def test_a_big_endian_array_is_segmented_as_its_native_twin(tmp_path):
    """torch.from_numpy refused a big-endian array (as tifffile returns some files' pixels with astype('>u2')) with
    a raw ValueError (a QA run)."""
    from lib.segmenter import Segmenter
    from tests.conftest import random_checkpoint

    state = torch.load(random_checkpoint(tmp_path / "c.pth"), weights_only=True)
    state["normalization"] = {"mode": "zscore", "dtype": "uint16", "scale": 65535.0, "mean": [0.5], "std": [0.2],
                              "low": None, "high": None}
    save_checkpoint(tmp_path / "u16.pth", state)
    segmenter = Segmenter.from_checkpoint(tmp_path / "u16.pth", device="cpu", precision="fp32")
    image = np.random.default_rng(0).integers(0, 65535, (70, 90), dtype=np.uint16)
    native, swapped = segmenter.predict(image), segmenter.predict(image.astype(">u2"))
    assert torch.equal(torch.as_tensor(native[0]), torch.as_tensor(swapped[0]))
    assert np.array_equal(np.asarray(native[1]), np.asarray(swapped[1]))
