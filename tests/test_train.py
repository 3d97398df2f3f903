"""train.py end to end on a tiny patch set: learning, TensorBoard tags, checkpoints, resume, bad input."""

from __future__ import annotations

import json
import math
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lib.core.params import load_params
from lib.generate import generate_split
from lib.prepare import prepare_patches
from lib.segmenter import Segmenter
from model.checkpoint import MODEL_KEYS, RESUME_KEYS, save_checkpoint
from tests.conftest import REPO, assert_user_error, child_env, run_cli, run_main, write_params


def _train(params_file: Path, data: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_cli("train.py", "--params", str(params_file), "-f", str(data / "patches_s48"), *extra)


def _one_epoch(params_file: Path, data: Path, name: str) -> Path:
    """Train run ``name`` for one epoch in this process; its last.pth."""
    done = run_main("train.py", "--params", str(params_file), "-f", str(data / "patches_s48"), "-e", "1",
                    "--name", name, "--precision", "fp32")
    assert done.returncode == 0, done.stderr[-2000:]
    return data / "checkpoints" / name / "last.pth"


def _weights(path: Path) -> dict:
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def trained(tiny_patches):
    params_file, data = tiny_patches
    result = _train(params_file, data, "-e", "3", "-l", "0.05", "--name", "reference", "--precision", "fp32")
    assert result.returncode == 0, result.stderr[-3000:]
    return params_file, data, result


def test_loss_falls_and_checkpoints_load_with_weights_only(trained):
    params_file, data, result = trained
    ckpt = data / "checkpoints" / "reference"
    last, best = _weights(ckpt / "last.pth"), _weights(ckpt / "best.pth")
    history = last["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert last["model_config"] == {"n_channels": 1, "n_classes": 3, "base_channels": 4, "bilinear": False}
    assert last["class_names"] == ["background", "line", "ellipse"] and len(last["class_colors"]) == 3
    norm = last["normalization"]
    assert set(norm) == {"mode", "dtype", "scale", "mean", "std", "low", "high"}
    assert (norm["mode"], norm["dtype"], norm["scale"], norm["low"]) == ("zscore", "uint8", 255.0, None)
    assert 0 < norm["mean"][0] < 1 and 0 < norm["std"][0] < 1  # [0, 1] units, as before the modes
    assert set(last) == set(MODEL_KEYS) | set(RESUME_KEYS)  # the contents defined in model/checkpoint.py
    assert last["epoch"] == 3 and last["params"]["training"]["epochs"] == 3
    assert best["best_miou"] == max(h["val_miou"] for h in history)
    assert "epoch 3/3" in result.stdout and "val mIoU" in result.stdout


def test_validation_holds_out_whole_source_images(trained):
    params_file, data, _ = trained
    import csv

    last = _weights(data / "checkpoints" / "reference" / "last.pth")
    with open(data / "patches_s48" / "manifest.csv") as handle:
        sources = {row["source"] for row in csv.DictReader(handle)}
    assert len(last["val_sources"]) == 2 and set(last["val_sources"]) < sources


def test_tensorboard_holds_the_tags(trained):
    _, data, _ = trained
    acc = EventAccumulator(str(data / "runs" / "reference"), size_guidance={"images": 0, "scalars": 0}).Reload()
    scalars = set(acc.Tags()["scalars"])
    expected = {"train/loss_iter", "train/loss", "train/lr", "val/loss", "val/miou", "val/iou_background",
                "val/iou_line", "val/iou_ellipse"}
    assert expected <= scalars, scalars
    assert len(acc.Scalars("val/miou")) == 3
    steps = [s.step for s in acc.Scalars("train/loss_iter")]  # one per step, numbered on across the 3 epochs
    assert len(steps) % 3 == 0 and len(steps) > 3 and sorted(steps) == list(range(len(steps)))
    assert "val/examples" in acc.Tags()["images"]
    hparams = EventAccumulator(str(data / "runs" / "reference")).Reload()
    assert "hparam/val_miou" in hparams.Tags()["scalars"]


def test_resume_after_ctrl_c_equals_an_uninterrupted_run(trained, tmp_path):
    params_file, data, _ = trained
    env = child_env(PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "train.py", "--params", str(params_file), "-f", str(data / "patches_s48"), "-e", "3",
           "-l", "0.05", "--name", "resumed", "--precision", "fp32"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("run resumed"):  # printed just before the first step
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=120)
    ckpt = data / "checkpoints" / "resumed"
    assert proc.returncode == 130, err[-2000:]
    assert "resume with: python train.py --load" in err and "Traceback" not in err
    interrupted = _weights(ckpt / "interrupted.pth")
    assert interrupted["epoch"] == 0  # stopped inside the first epoch
    resumed = subprocess.run([*cmd[:2], "--load", str(ckpt / "interrupted.pth")], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    reference = _weights(data / "checkpoints" / "reference" / "last.pth")
    final = _weights(ckpt / "last.pth")
    assert [h["train_loss"] for h in final["history"]] == [h["train_loss"] for h in reference["history"]]
    assert [h["val_loss"] for h in final["history"]] == [h["val_loss"] for h in reference["history"]]
    for key, value in reference["model_state"].items():
        assert torch.equal(final["model_state"][key], value), key


def test_sigterm_saves_interrupted_pth_at_a_step_boundary_like_ctrl_c(trained):
    """A batch scheduler sends SIGTERM before it stops a job (preemption, a time limit): it killed the run at once,
    losing the epoch so far. Now it ends as a first Ctrl-C does, with the status a shell gives SIGTERM (143)."""
    params_file, data, _ = trained
    cmd = [sys.executable, "train.py", "--params", str(params_file), "-f", str(data / "patches_s48"), "-e", "2",
           "-l", "0.05", "--name", "preempted", "--precision", "fp32"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=child_env(PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("run preempted"):  # printed just before the first step
            proc.send_signal(signal.SIGTERM)
            break
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "interrupted (SIGTERM) at epoch 1" in err and "Traceback" not in err
    assert "resume with: python train.py --load" in err
    assert _weights(data / "checkpoints" / "preempted" / "interrupted.pth")["epoch"] == 0


def test_empty_folder_and_missing_manifest(tiny_patches, tmp_path):
    params_file, _ = tiny_patches
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_user_error(run_main("train.py", "--params", str(params_file), "-f", str(empty)), str(empty), "empty")
    (empty / "images").mkdir()
    (empty / "images" / "p0.png").write_bytes(b"")
    assert_user_error(run_main("train.py", "--params", str(params_file), "-f", str(empty)), "manifest.csv")


def test_bad_checkpoints(trained, tmp_path):
    params_file, data, _ = trained
    folder = ["--params", str(params_file), "-f", str(data / "patches_s48")]
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    assert_user_error(run_main("train.py", *folder, "--load", str(text)), str(text), "checkpoint")
    good = (data / "checkpoints" / "reference" / "last.pth").read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good[: len(good) // 2])
    assert_user_error(run_main("train.py", *folder, "--load", str(truncated)), str(truncated))
    state = _weights(data / "checkpoints" / "reference" / "last.pth")
    four = {**state, "model_config": {**state["model_config"], "n_classes": 4},
            "class_names": [*state["class_names"], "d"], "class_colors": [*state["class_colors"], [9, 9, 9]]}
    other = tmp_path / "four_classes.pth"
    save_checkpoint(other, four)
    assert_user_error(run_main("train.py", *folder, "--load", str(other)), str(other), "4 classes")
    # a weight missing: a RuntimeError traceback from load_state_dict on resuming
    state["model_state"].pop("inc.double_conv.0.weight")
    save_checkpoint(other, state)
    assert_user_error(run_main("train.py", *folder, "--load", str(other), "-e", "9"), str(other),
                      "lacks inc.double_conv.0.weight")
    reference = data / "checkpoints" / "reference" / "last.pth"
    done = _weights(reference)["epoch"]
    assert_user_error(run_main("train.py", *folder, "--load", str(reference)),
                      f"already finished {done} epochs (pass -e with more")
    # -e fewer than the run did: the message quoted the flag as the epochs the run had finished
    assert_user_error(run_main("train.py", *folder, "--load", str(reference), "-e", "1"),
                      f"already finished {done} epochs; -e 1 is not more than that")


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_patches):
    params_file, data = tiny_patches
    first = _train(params_file, data, "-e", "1", "--name", "diverge", "--precision", "fp32")
    assert first.returncode == 0, first.stderr[-2000:]
    last = data / "checkpoints" / "diverge" / "last.pth"
    good = last.read_bytes()
    # continue the run for a second epoch with an absurd learning rate: the loss blows up
    result = run_main("train.py", "--load", str(last), "-e", "3", "-l", "1e38")
    assert result.returncode == 3, result.stderr[-2000:]
    assert "non-finite loss" in result.stderr and "Traceback" not in result.stderr
    assert last.read_bytes() == good
    assert all(torch.isfinite(v.float()).all() for v in _weights(last)["model_state"].values())


def test_the_checkpoint_records_how_the_patches_it_learnt_were_cut(tiny_patches, tmp_path):
    """patches.size 64 in the parameters file but a folder of 48×48 patches (prepared with --patch-size, or before
    the size was changed): the checkpoint says 48, so predict.py slides the window the model learnt. The rest of
    ``patches`` is the folder's too: it kept the parameters file's per_image, seed and sampling, so the run could
    not be rebuilt from its checkpoint (a QA run)."""
    params_file, data = tiny_patches
    raw = json.loads(params_file.read_text())
    cut = dict(raw["patches"])
    raw["patches"].update(size=64, per_image=cut["per_image"] + 5, seed=cut["seed"] + 1, foreground_fraction=0.5,
                          rotate90=not cut.get("rotate90", False))
    other = write_params(tmp_path / "params_64.json", raw)
    result = run_main("train.py", "--params", str(other), "-f", str(data / "patches_s48"), "-e", "1",
                      "--name", "size48", "--precision", "fp32")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "holds patches of 48x48, not patches.size 64" in result.stderr
    state = _weights(data / "checkpoints" / "size48" / "last.pth")
    assert state["params"]["patches"] == {**load_params(params_file).to_dict()["patches"], "size": 48}
    # resumed with the same file: its patches are lib.prepare's, not settings the run ignores (a spurious note)
    resumed = run_main("train.py", "--params", str(other), "--load", str(data / "checkpoints" / "size48" / "last.pth"),
                       "-e", "2")
    assert resumed.returncode == 0 and "differ from the parameters" in resumed.stderr  # (-f and --precision)
    assert "patches." not in resumed.stderr, resumed.stderr[-2000:]
    assert Segmenter.from_checkpoint(data / "checkpoints" / "size48" / "last.pth", device="cpu").window == 48


def test_a_resumed_run_keeps_its_split_and_reports_a_params_file_it_ignores(tiny_patches, tmp_path):
    params_file, data = tiny_patches
    last = _one_epoch(params_file, data, "keeps")
    before = last.read_bytes()
    # the seed and the validation share drew the validation images: changed, it would validate on trained images
    assert_user_error(run_main("train.py", "--load", str(last), "-e", "2", "--seed", "3"),
                      "--seed 3", str(last), "--seed 0")
    assert_user_error(run_main("train.py", "--load", str(last), "-e", "2", "--val-fraction", "0.5"),
                      "--val-fraction 0.5", "--val-fraction 0.25")
    # so did the patch folder's source images: a folder of other sources is refused too
    params = load_params(params_file)
    more = generate_split(tmp_path / "more", "training", 11, params, progress=False)
    prepare_patches(more, tmp_path / "patches_more", params, progress=False)
    assert_user_error(run_main("train.py", "--load", str(last), "-e", "2", "-f", str(tmp_path / "patches_more")),
                      "patches_more: its validation images would be", "resume with the run's patch folder")
    assert last.read_bytes() == before
    raw = json.loads(params_file.read_text())
    raw["training"]["learning_rate"] = 0.2
    raw["training"]["epochs"] = 7  # -e 2 below sets it: not ignored, so not in the note
    raw["model"]["base_channels"] = 8
    other = write_params(tmp_path / "other.json", raw)
    resumed = run_main("train.py", "--load", str(last), "-e", "2", "--params", str(other))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    note = [ln for ln in resumed.stderr.splitlines() if ln.startswith("note:")]
    assert len(note) == 1, resumed.stderr
    assert "model.base_channels (8; the run: 4)" in note[0] and "training.learning_rate" in note[0], note[0]
    assert "training.epochs" not in note[0]
    state = _weights(last)
    assert state["epoch"] == 2 and state["model_config"]["base_channels"] == 4
    assert state["params"]["training"]["learning_rate"] == json.loads(params_file.read_text())["training"][
        "learning_rate"]


def test_a_run_that_diverges_in_its_first_epoch_says_no_checkpoint_was_written(tiny_patches):
    params_file, data = tiny_patches
    result = run_main("train.py", "--params", str(params_file), "-f", str(data / "patches_s48"), "-e", "1",
                      "-l", "1e38", "--name", "diverge_at_once", "--precision", "fp32")
    assert result.returncode == 3, result.stderr[-2000:]
    assert "non-finite loss at epoch 1" in result.stderr and "No checkpoint was written" in result.stderr
    assert not (data / "checkpoints" / "diverge_at_once" / "last.pth").exists()


def test_a_warm_up_with_the_published_schedule_is_noted_not_ignored_silently(tiny_patches):
    """training.warmup_fraction shapes the cosine schedule only: with the published one the rate stayed flat and
    nothing said so."""
    params_file, data = tiny_patches
    result = run_main("train.py", "--params", str(params_file), "-f", str(data / "patches_s48"), "-e", "1",
                      "--warmup-fraction", "0.2", "--name", "warm_published", "--precision", "fp32")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "note: training.warmup_fraction 0.2 applies to the cosine schedule only; this run keeps the published " \
        "schedule" in result.stderr
    (epoch,) = _weights(data / "checkpoints" / "warm_published" / "last.pth")["history"]
    assert epoch["lr"] == epoch["lr_end"]


def test_without_validation_images_best_follows_last(tiny_patches):
    params_file, data = tiny_patches
    result = run_main("train.py", "--params", str(params_file), "-f", str(data / "patches_s48"), "-e", "2",
                      "--val-fraction", "0", "--name", "no_val", "--precision", "fp32")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "note: no validation images (8 source image(s), training.val_fraction 0.0): best.pth follows last.pth" \
        in result.stderr
    run = data / "checkpoints" / "no_val"
    last, best = _weights(run / "last.pth"), _weights(run / "best.pth")
    assert best["epoch"] == last["epoch"] == 2 and best["val_sources"] == []
    assert all(torch.equal(best["model_state"][k], v) for k, v in last["model_state"].items())
    hparams = EventAccumulator(str(data / "runs" / "no_val")).Reload()
    assert math.isnan(hparams.Scalars("hparam/best_val_miou")[0].value)  # not -inf: there is no best


def test_a_resumed_run_goes_on_in_its_folder_and_never_from_behind_its_last(tiny_patches, tmp_path):
    """A checkpoint loaded from another folder wrote into checkpoints/<run> of the working folder, replacing a run
    of the same name there; a second --load of an interrupted.pth the run had gone past rolled last.pth back."""
    params_file, data = tiny_patches
    original = _one_epoch(params_file, data, "goes_on")
    shutil.copy(original, original.with_name("older.pth"))  # as an interrupted.pth the run will go past
    copy = tmp_path / "elsewhere" / "goes_on" / "last.pth"
    copy.parent.mkdir(parents=True)
    shutil.copy(original, copy)
    other = json.loads(params_file.read_text())
    other["training"]["momentum"] = 0.5  # a --params file the resumed run ignores: its note came before the error
    (tmp_path / "other.json").write_text(json.dumps(other))
    assert_user_error(run_main("train.py", "--load", str(copy), "-e", "2", "--params", str(tmp_path / "other.json")),
                      f"{copy}: saved by run goes_on of {original.parent}, which has checkpoints", "--name NEW")
    state = _weights(original)
    state.update(step_in_epoch=3, world_size=2)  # an interrupted.pth of a 2-process run
    save_checkpoint(tmp_path / "two.pth", state)
    assert_user_error(run_main("train.py", "--load", str(tmp_path / "two.pth"), "-e", "2", "--name", "two"),
                      "two.pth: saved at step 3 of epoch 2 by 2 process(es)", "resume it with -b 8 on 2 process(es)")
    state.update(world_size=1)  # saved at a step of batches of 8: with -b 16 it would skip patches
    save_checkpoint(tmp_path / "eight.pth", state)
    assert_user_error(run_main("train.py", "--load", str(tmp_path / "eight.pth"), "-e", "2", "-b", "16", "--name",
                               "sixteen"), "eight.pth: saved at step 3 of epoch 2 by 1 process(es) with batch size 8",
                      "resume it with -b 8 on 1 process(es)")
    assert not (data / "checkpoints" / "two").exists()  # the new name is taken only once every check has passed
    before = original.read_bytes()
    branch = run_main("train.py", "--load", str(copy), "-e", "2", "--name", "branch", "--amp")
    assert branch.returncode == 0, branch.stderr[-2000:]
    assert "note: --amp applies on CUDA only; this run is on cpu in fp32" in branch.stderr
    assert _weights(data / "checkpoints" / "branch" / "last.pth")["epoch"] == 2 and (data / "runs" / "branch").is_dir()
    assert original.read_bytes() == before and copy.read_bytes() == before
    assert_user_error(run_main("train.py", "--load", str(copy), "-e", "2", "--name", "branch"),
                      "--name branch: a run of that name exists")
    resumed = run_main("train.py", "--load", str(original), "-e", "2")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    after = original.read_bytes()
    assert_user_error(run_main("train.py", "--load", str(original.with_name("older.pth")), "-e", "3"),
                      f"{original} is further on (epoch 2 done, step 0; this one: epoch 1 done, step 0)",
                      "pass --name NEW to go on from older.pth as a new run")
    assert original.read_bytes() == after


@pytest.mark.parametrize("given,expected", [("patches_s96", "root/patches_s96"), ("./p", "p"), ("sub/p", "sub/p"),
                                            ("../p", "../p"), (".", "."), ("..", ".."), ("/abs/p", "/abs/p"),
                                            ("p/", "root/p"), ("/", "/")])
def test_a_patch_folder_name_lies_under_the_data_root_and_a_path_is_taken_as_given(given, expected):
    """-f ./p and -f sub/p were looked up under data/, and -f . failed with an IndexError."""
    import train
    from lib.core.params import replace

    params = replace(replace(load_params(REPO / "parameters.json"), "data", root="root"), "training", folder=given)
    assert train.patch_folder(params) == Path(expected)


def test_an_empty_patch_folder_is_refused_in_one_line(tiny_patches):
    params_file, _ = tiny_patches
    assert_user_error(run_main("train.py", "--params", str(params_file), "-f", ""), "-f/training.folder ''",
                      "expected a patch folder name or path")


def test_the_loss_of_a_part_epoch_is_restored_on_rank_0_alone(trained):
    """An interrupted.pth holds the epoch's loss so far summed over its processes (gather_epoch_loss): on resume,
    rank 0 takes it and the others start at zero, so that the epoch's all-reduced loss counts it once."""
    import train
    from model.checkpoint import model_from_checkpoint

    _, data, _ = trained
    state = _weights(data / "checkpoints" / "reference" / "last.pth")
    state["epoch_loss"] = [6.0, 4]
    net = model_from_checkpoint(state)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    for rank, expected in ((0, (6.0, 4)), (1, (0.0, 0))):
        progress = train.restore(state, optimizer, scaler, rank)
        assert (progress.loss_sum, progress.loss_count) == expected
    # a run that was not in fp16 saved an empty scaler state: resumed in fp16, a fresh scaler (it raised)
    assert state["scaler_state"] == {}
    train.restore(state, optimizer, torch.amp.GradScaler("cpu", enabled=True))


def test_a_copy_of_a_run_that_has_only_its_interrupted_pth_is_refused_too(tiny_patches, tmp_path):
    """The copy check looked for the run's last.pth alone: a run stopped in its first epoch has only
    interrupted.pth, and its copy resumed into the run's own TensorBoard folder."""
    params_file, data = tiny_patches
    state = _weights(_one_epoch(params_file, data, "first_epoch"))
    home = data / "checkpoints" / "first_epoch"
    for name in ("last.pth", "best.pth"):
        (home / name).unlink()
    state.update(epoch=0, step_in_epoch=2)
    save_checkpoint(home / "interrupted.pth", state)
    copy = tmp_path / "copied" / "interrupted.pth"
    copy.parent.mkdir()
    shutil.copy(home / "interrupted.pth", copy)
    assert_user_error(run_main("train.py", "--load", str(copy), "-e", "2"),
                      f"{copy}: saved by run first_epoch of {home}, which has checkpoints")


def test_a_run_resumed_under_a_new_name_keeps_a_best_pth_of_its_own(tiny_patches, tmp_path):
    """It kept the loaded run's best mIoU to beat: an epoch below it left the new folder without best.pth."""
    params_file, data = tiny_patches
    state = _weights(_one_epoch(params_file, data, "best_before"))
    state["best_miou"] = 1.0  # no epoch of the new run beats it
    save_checkpoint(tmp_path / "high.pth", state)
    result = run_main("train.py", "--load", str(tmp_path / "high.pth"), "-e", "2", "--name", "best_after")
    assert result.returncode == 0, result.stderr[-2000:]
    best = _weights(data / "checkpoints" / "best_after" / "best.pth")
    assert best["epoch"] == 2 and best["best_miou"] < 1.0


def test_the_run_s_own_folder_by_another_path_is_no_copy(tiny_patches):
    """The copy check compared paths: the run's own folder named another way (a bind mount, an automount path; here
    a path through ``..``) was refused as a copy of the run."""
    params_file, data = tiny_patches
    last = _one_epoch(params_file, data, "aliased")
    state = _weights(last)
    folder = Path(state["checkpoint_dir"])
    state["checkpoint_dir"] = str(folder.parent / ".." / folder.parent.name / folder.name)
    save_checkpoint(last, state)
    result = run_main("train.py", "--load", str(last), "-e", "2")
    assert result.returncode == 0, result.stderr[-2000:]


def test_a_checkpoint_the_run_went_past_is_refused_as_such_whatever_its_batches(tiny_patches):
    """A stale interrupted.pth of a 2-process run, loaded in one process, was told to resume on 2 processes, which
    was then refused as behind last.pth."""
    params_file, data = tiny_patches
    last = _one_epoch(params_file, data, "went_past")
    state = _weights(last)
    state.update(epoch=0, step_in_epoch=3, world_size=2)
    save_checkpoint(last.with_name("interrupted.pth"), state)
    assert_user_error(run_main("train.py", "--load", str(last.with_name("interrupted.pth")), "-e", "2"),
                      f"{last} is further on (epoch 1 done, step 0; this one: epoch 0 done, step 3)")


def test_a_checkpoint_whose_parameters_lack_the_batch_size_resumes(tiny_patches, tmp_path):
    """Parameters missing from a checkpoint take their defaults, as everywhere; the resume check read the batch size
    from the raw dict and raised a KeyError."""
    params_file, data = tiny_patches
    state = _weights(_one_epoch(params_file, data, "sparse_params"))
    del state["params"]["training"]["batch_size"]
    save_checkpoint(tmp_path / "sparse.pth", state)
    result = run_main("train.py", "--load", str(tmp_path / "sparse.pth"), "-e", "2", "--name", "sparse_after")
    assert result.returncode == 0, result.stderr[-2000:]
