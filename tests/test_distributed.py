"""torchrun with gloo on CPU: two processes train, rank 0 alone writes, metrics reduce exactly, checkpoints load
in a single process and resume there; a worker exits without finalisation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dataloader.patches import PatchDataset
from lib.core.device import Runtime, memory_format
from lib.core.imageio import save_image, save_mask
from lib.core.losses import make_loss
from lib.core.metrics import mean_iou
from lib.core.params import params_from_dict
from lib.training import evaluate
from model.checkpoint import load_checkpoint, model_from_checkpoint
from tests.conftest import assert_user_error, file_digests, random_checkpoint, run_cli

COLORS = [(0, 0, 0), (230, 40, 40), (120, 250, 80)]


@pytest.fixture(scope="module")
def ddp_run(tiny_patches):
    params_file, data = tiny_patches
    result = run_cli("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
                     "--params", str(params_file), "-f", str(data / "patches_s48"), "-e", "2", "-l", "0.05",
                     "--name", "ddp", "--precision", "fp32", env={"OMP_NUM_THREADS": "1"}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return params_file, data, result


def test_two_processes_train_and_rank_0_alone_writes(ddp_run):
    _, data, result = ddp_run
    assert "2 process(es)" in result.stdout
    assert result.stdout.count("epoch 2/2  train loss") == 1  # one summary line: rank 0 only
    assert sorted(p.name for p in (data / "checkpoints" / "ddp").iterdir()) == ["best.pth", "last.pth"]
    events = list((data / "runs" / "ddp").glob("events.out.tfevents.*"))
    # events.out.tfevents.<time>.<host>.<pid>.<n>: the host name may hold dots, the pid is the next-to-last field
    assert events and len({p.name.split(".")[-2] for p in events}) == 1  # all from one process
    state = load_checkpoint(data / "checkpoints" / "ddp" / "last.pth")
    assert state["world_size"] == 2
    assert not any(k.startswith("module.") for k in state["model_state"])


def test_reduced_validation_miou_equals_a_single_process_evaluation(ddp_run):
    _, data, _ = ddp_run
    state = load_checkpoint(data / "checkpoints" / "ddp" / "last.pth")
    params = params_from_dict(state["params"])
    model = model_from_checkpoint(state).eval()
    patches = PatchDataset(state["patch_folder"], params.class_colors)
    val_idx = patches.subset_indices(state["val_sources"])
    cpu = torch.device("cpu")
    loss, cm = evaluate(model, patches.images, patches.masks, val_idx, state["normalization"],
                        make_loss("ce", None, cpu), params.n_classes, Runtime(cpu, "fp32", memory_format(cpu)))
    assert mean_iou(cm) == pytest.approx(state["history"][-1]["val_miou"], abs=1e-12)
    assert loss == pytest.approx(state["history"][-1]["val_loss"], rel=1e-5)


def test_a_distributed_checkpoint_resumes_in_a_single_process(ddp_run):
    params_file, data, _ = ddp_run
    result = run_cli("train.py", "--load", str(data / "checkpoints" / "ddp" / "last.pth"), "-e", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    state = load_checkpoint(data / "checkpoints" / "ddp" / "last.pth")
    assert state["epoch"] == 3 and state["world_size"] == 1 and len(state["history"]) == 3


def test_sync_batchnorm_is_refused_clearly_without_cuda(tiny_patches):
    params_file, data = tiny_patches
    result = run_cli("train.py", "--params", str(params_file), "-f", str(data / "patches_s48"), "--sync-bn",
                     "--device", "cpu", "--name", "syncbn")
    assert_user_error(result, "--sync-bn", "CUDA")
    assert not (data / "checkpoints" / "syncbn").exists()


EXIT_SCRIPT = ("import sys; from lib.core.distributed import exit_process; print('unflushed', end=''); "
               "exit_process({code})")


@pytest.mark.parametrize("world_size", ["1", "2"])
@pytest.mark.parametrize("code, status, stderr", [("None", 0, ""), ("130", 130, ""), ("'a message'", 1, "a message")])
def test_exit_process_keeps_sys_exit_semantics_and_flushes_output(world_size, code, status, stderr):
    """A torchrun worker leaves with os._exit (no finalisation); its status and buffered output are kept."""
    result = run_cli("-c", EXIT_SCRIPT.format(code=code), env={"WORLD_SIZE": world_size})
    assert (result.returncode, result.stdout, result.stderr.strip()) == (status, "unflushed", stderr)


def test_a_torchrun_worker_skips_finalisation():
    """atexit handlers run only in a plain process: the worker really leaves before finalisation."""
    script = "import atexit; atexit.register(print, 'finalised'); " + EXIT_SCRIPT.format(code=0)
    plain, worker = (run_cli("-c", script, env={"WORLD_SIZE": w}) for w in ("1", "2"))
    assert plain.stdout == "unflushedfinalised\n" and worker.stdout == "unflushed"


@pytest.fixture(scope="module")
def image_set(tmp_path_factory):
    """A random-weight checkpoint and five gray images of different sizes with masks."""
    root = tmp_path_factory.mktemp("predict_ddp")
    random_checkpoint(root / "c.pth")
    rng = np.random.default_rng(1)
    for sub in ("images", "masks"):
        (root / sub).mkdir()
    for i, (h, w) in enumerate([(300, 200), (90, 120), (150, 400), (40, 60), (250, 250)]):
        save_image(root / "images" / f"im{i}.png", rng.integers(0, 256, (h, w), dtype=np.uint8))
        save_mask(root / "masks" / f"im{i}.png", rng.integers(0, 3, (h, w)).astype(np.uint8), COLORS)
    return root


def test_predict_on_two_processes_writes_the_masks_and_metrics_of_one(image_set):
    """The images are split across the processes; the masks (PNG and tiled TIFF) and the metrics JSON are those of
    a single process, and rank 0 alone prints the table."""
    def predict(out: str, *launcher: str):
        result = run_cli(*launcher, "predict.py", "--checkpoint", str(image_set / "c.pth"), "--input",
                         str(image_set / "images"), "--masks", str(image_set / "masks"), "--output",
                         str(image_set / out), "--metrics", str(image_set / f"{out}.json"), "--precision", "fp32",
                         "--device", "cpu",
                         "--tiff-above", "0.05", "--quiet", env={"OMP_NUM_THREADS": "1"}, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    predict("one")
    two = predict("two", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
    assert two.stdout.count("mean of per-image mIoU") == 1 and "(2 processes)" in two.stdout
    one_files = file_digests(image_set / "one")
    assert sorted(one_files) == ["im0.tif", "im1.png", "im2.tif", "im3.png", "im4.tif"]
    assert file_digests(image_set / "two") == one_files
    assert json.loads((image_set / "two.json").read_text()) == json.loads((image_set / "one.json").read_text())


@pytest.mark.parametrize("pixels,world_size,expected", [
    ([5, 1, 1, 1, 1], 2, [[0], [1, 2, 3, 4]]),  # the largest alone; the rest balance it
    ([1, 2, 3, 4], 2, [[0, 3], [1, 2]]),
    ([7, 7, 7], 3, [[0], [1], [2]]),
    ([3], 2, [[0], []]),  # more processes than images: one idles
    ([2, 2, 2], 1, [[0, 1, 2]]),
])
def test_images_are_shared_by_pixel_count(pixels, world_size, expected):
    from predict import assign_images

    assert assign_images(pixels, world_size) == expected


def test_more_torchrun_processes_than_gpus_is_one_clear_error(monkeypatch):
    from lib.core import distributed
    from lib.core.errors import UserError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: pytest.fail("set_device was reached"))
    with pytest.raises(UserError, match=r"process 2 on this machine but only 1 CUDA device\(s\) are visible: one "
                                        r"process per GPU \(--nproc_per_node at most 1\), or --device cpu"):
        distributed.init_distributed("cuda")


@pytest.mark.parametrize("fault, culprit, saved", [("events:2", "runs", 1), ("enospc:1", "checkpoints", None),
                                                   ("enospc:3", "checkpoints", 2)])  # the last epoch's last.pth
def test_a_full_disk_ends_every_process_together(tiny_patches, fault, culprit, saved):
    """Rank 0 raised a failed write alone (TensorBoard's after the epoch's checkpoint; a checkpoint's at the next
    save), and rank 1, waiting in the epoch's stop exchange, died with a traceback (gloo: "Connection closed by
    peer"; NCCL would have waited for its timeout)."""
    params_file, data = tiny_patches
    name = f"ddp_full_{fault.replace(':', '_')}"
    result = run_cli("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "tests/fault_injection.py",
                     "train.py", "--params", str(params_file), "-f", str(data / "patches_s48"), "-e", "3",
                     "--name", name, "--precision", "fp32", env={"OMP_NUM_THREADS": "1", "FAULT": fault}, timeout=300)
    assert result.returncode != 0
    where = data / "runs" / name if culprit == "runs" else data / "checkpoints" / name / "last.pth"
    assert f"error: {where}: cannot write (No space left on device)" in result.stderr, result.stderr[-3000:]
    assert "[rank1]" not in result.stderr and "Connection closed" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.count("error:") == 1 and "<NO_OTHER_FAILURES>" not in result.stderr  # every process: 2
    if saved is not None:
        assert torch.load(data / "checkpoints" / name / "last.pth", weights_only=True)["epoch"] == saved


@pytest.mark.parametrize("case", ["name-taken", "runs-unwritable"])
def test_a_refusal_of_rank_0_alone_ends_every_process(ddp_run, case):
    """Rank 0 alone takes the run's name and opens its outputs; its refusal left rank 1 in the next collective
    (the name's broadcast, the first DDP forward), where it died with a traceback."""
    params_file, data, _ = ddp_run
    name, env = ("ddp", {}) if case == "name-taken" else ("ddp_unwritable", {"FAULT": "eventfile:1"})
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command = ["train.py", "--params", str(params_file), "-f", str(data / "patches_s48"), "-e", "1", "--name", name,
               "--precision", "fp32"]
    if env:
        command = ["tests/fault_injection.py", *command]
    result = run_cli(*launcher, *command, env={"OMP_NUM_THREADS": "1", **env}, timeout=300)
    assert result.returncode != 0
    expected = "--name ddp: a run of that name exists" if case == "name-taken" else \
        f"{data / 'runs' / name}: cannot write (No space left on device)"
    assert result.stderr.count(expected) == 1, result.stderr[-3000:]  # rank 0 says why, the other ends quietly
    assert "[rank1]" not in result.stderr and "Connection" not in result.stderr, result.stderr[-3000:]
    assert "<NO_OTHER_FAILURES>" not in result.stderr
