"""Faults: kills at many moments, a full disk, unwritable outputs; reproducibility; checkpoints carry no code."""

from __future__ import annotations

import errno
import json
import os
import pickle
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import lib.core.atomic as atomic
from lib.core.errors import UserError
from lib.core.imageio import read_image, read_mask
from lib.core.params import load_params
from model.checkpoint import load_checkpoint, save_checkpoint
from tests.conftest import REPO, assert_user_error, child_env, file_digests, run_cli

FAULT = str(REPO / "tests" / "fault_injection.py")


def _faulty(fault: str, *args: str) -> subprocess.CompletedProcess:
    return run_cli(FAULT, *args, env={"FAULT": fault})


def _weights(path: Path) -> dict:
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def reference(tiny_patches):
    params_file, data = tiny_patches
    train = ["train.py", "--params", str(params_file), "-f", str(data / "patches_s48"), "-e", "4", "-l", "0.05",
             "--precision", "fp32"]
    result = run_cli(*train, "--name", "kill-reference")
    assert result.returncode == 0, result.stderr[-2000:]
    return train, data, _weights(data / "checkpoints" / "kill-reference" / "last.pth")


# (fault, what it hits) — a training step, a checkpoint half written, a checkpoint whole but not yet renamed
# (best.pth is a hard link to the last.pth of the best epoch: renamed into place, never written)
KILLS = [("step", "first epoch, no checkpoint yet"), ("partial", "first last.pth half written"),
         ("replace", "first best.pth linked, not renamed"), ("step", "second epoch"),
         ("replace", "third epoch's last.pth"), ("partial", "the fourth epoch's last.pth half written"),
         ("step", "last epoch")]
KILL_COUNTS = [3, 1, 2, 20, 4, 4, 40]


@pytest.mark.parametrize("case", range(len(KILLS)), ids=[f"{k}:{n}" for (k, _), n in zip(KILLS, KILL_COUNTS)])
def test_sigkill_at_any_moment_keeps_loadable_checkpoints_and_resume_is_exact(reference, case):
    train, data, expected = reference
    kind, count = KILLS[case][0], KILL_COUNTS[case]
    name = f"kill-{case}"
    killed = _faulty(f"{kind}:{count}", *train, "--name", name)
    assert killed.returncode == -9, killed.stderr[-2000:]
    folder = data / "checkpoints" / name
    for ckpt in ("last.pth", "best.pth"):
        if (folder / ckpt).exists():
            load_checkpoint(folder / ckpt)  # always whole
    if not (folder / "last.pth").exists():
        assert not any(p.suffix == ".pth" for p in folder.iterdir())
        return
    resumed = run_cli("train.py", "--load", str(folder / "last.pth"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert not list(folder.glob(".*.tmp"))  # the kill's temporary file is gone with the rerun
    final = _weights(folder / "last.pth")
    assert [h["train_loss"] for h in final["history"]] == [h["train_loss"] for h in expected["history"]]
    for key, value in expected["model_state"].items():
        assert torch.equal(final["model_state"][key], value), key


def test_two_runs_with_the_same_seed_are_identical_also_with_deterministic_algorithms(reference):
    train, data, expected = reference
    result = run_cli(*train, "--name", "repeat", "--deterministic")
    assert result.returncode == 0, result.stderr[-2000:]
    again = _weights(data / "checkpoints" / "repeat" / "last.pth")
    assert [h["val_loss"] for h in again["history"]] == [h["val_loss"] for h in expected["history"]]
    assert all(torch.equal(again["model_state"][k], v) for k, v in expected["model_state"].items())
    assert again["seed"] == expected["seed"] and again["params"] == expected["params"]
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?|unknown", again["git_commit"])
    assert set(again["versions"]) == {"python", "torch", "numpy"}


def test_full_disk_gives_a_clear_error_and_keeps_the_previous_checkpoint(reference):
    train, data, _ = reference
    # epoch 1: last.pth written, best.pth linked (no write); epoch 2's last.pth fails, in the background writer
    result = _faulty("enospc:2", *train, "--name", "disk-full")
    assert_user_error(result, "last.pth", "No space left on device")
    kept = load_checkpoint(data / "checkpoints" / "disk-full" / "last.pth")
    assert kept["epoch"] == 1
    assert not list((data / "checkpoints" / "disk-full").glob(".*.tmp"))


def test_a_full_disk_in_tensorboards_writer_thread_is_one_line_after_the_epochs_checkpoint(reference):
    """The real writer thread fails (its record write): its own traceback stays unprinted (it matches TensorBoard's
    thread class by name, so a renamed class would bring the traceback back and fail here), and the run says it in
    one line once the epoch is saved."""
    train, data, _ = reference
    result = _faulty("eventfile:5", *train, "--name", "events-full")
    assert_user_error(result, f"{data / 'runs' / 'events-full'}: cannot write (No space left on device)")
    assert "Exception in thread" not in result.stderr
    assert _weights(data / "checkpoints" / "events-full" / "last.pth")["epoch"] == 1


def test_output_folder_that_cannot_be_created(reference, tmp_path):
    train, _, _ = reference
    blocker = tmp_path / "file"
    blocker.write_text("x")
    params_file = Path(train[2])
    raw = json.loads(params_file.read_text())
    raw["training"]["checkpoints_dir"] = str(blocker / "checkpoints")
    bad = tmp_path / "p.json"
    bad.write_text(json.dumps(raw))
    result = run_cli(*[bad.as_posix() if a == str(params_file) else a for a in train], "--name", "nowhere")
    assert_user_error(result, "cannot create the output folder")


def test_in_process_write_failure_leaves_the_old_file(tmp_path, monkeypatch):

    path = tmp_path / "c.pth"
    save_checkpoint(path, {"a": torch.ones(2)})
    before = path.read_bytes()

    def failing_fsync(fd):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(atomic.os, "fsync", failing_fsync)
    with pytest.raises(UserError, match="Read-only file system"):
        save_checkpoint(path, {"a": torch.zeros(2)})
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["c.pth"]


@pytest.mark.parametrize("fault", ["replace:5", "partial:6"])
def test_killed_generation_and_preparation_leave_whole_files_and_rerun_finishes(tiny_params_file, tmp_path, fault):
    params = ["--params", str(tiny_params_file)]
    clean = tmp_path / "clean"
    assert run_cli("-m", "lib.generate", *params, "--out", str(clean)).returncode == 0
    assert run_cli("-m", "lib.prepare", *params, "--src", str(clean / "images_training"),
                   "--out", str(clean / "patches")).returncode == 0
    out = tmp_path / "killed"
    for module, args in (("lib.generate", ["--out", str(out)]),
                         ("lib.prepare", ["--src", str(clean / "images_training"), "--out", str(out / "patches")])):
        killed = _faulty(fault, "-m", module, *params, *args)
        assert killed.returncode == -9
        for png in out.rglob("*.png"):
            if not png.name.startswith("."):
                Image.open(png).load()  # every visible PNG is whole
        assert not list(out.rglob(".complete.json")) or module == "lib.prepare"
        if module == "lib.prepare":
            assert not (out / "patches" / "manifest.csv").exists()
            assert_user_error(run_cli("train.py", *params, "-f", str(out / "patches")), "interrupted")
        rerun = run_cli("-m", module, *params, *args)
        assert rerun.returncode == 0, rerun.stderr
    assert file_digests(out) == file_digests(clean)  # byte-identical to an uninterrupted run


@pytest.mark.parametrize("fmt,suffix", [("png", ".png"), ("tiff", ".tif")])
def test_killed_prediction_leaves_whole_masks(reference, tmp_path, fmt, suffix):
    """Killed while the second mask is written (palette PNG, or the tiled TIFF written tile row by tile row): the
    first mask is whole, no part of the second is visible, and a rerun finishes."""
    _, data, _ = reference
    ckpt = data / "checkpoints" / "kill-reference" / "best.pth"
    args = ["predict.py", "--checkpoint", str(ckpt), "--input", str(data / "images_test" / "images"),
            "--output", str(tmp_path / "o"), "--quiet", "--format", fmt]
    assert _faulty("partial:2", *args).returncode == -9
    visible = [p for p in (tmp_path / "o").iterdir() if not p.name.startswith(".")]
    assert [p.name for p in visible] == [f"i0{suffix}"]
    assert read_mask(visible[0], load_params().class_colors).shape == (120, 72)  # decodes whole
    assert run_cli(*args).returncode == 0
    assert sorted(p.name for p in (tmp_path / "o").glob(f"*{suffix}")) == [f"i0{suffix}", f"i1{suffix}"]
    assert not list((tmp_path / "o").glob(".*"))  # the killed write's temporary file is gone with the rerun


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_carrying_code_is_refused_without_running_it(tmp_path, reference):
    _, data, _ = reference
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"model_state": _RunsCode(marker)}, evil)
    with pytest.raises(UserError, match=r"refused, not a plain-data checkpoint \(.*unsupported GLOBAL"):
        load_checkpoint(evil)  # torch's reason, not its advice on loading the file anyway
    result = run_cli("predict.py", "--checkpoint", str(evil), "--input", str(data / "images_test" / "images"),
                     "--output", str(tmp_path / "o"))
    assert_user_error(result, "evil.pth", "refused")
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError):
        torch.load(evil, weights_only=True)


def test_every_load_is_weights_only_and_no_shell_is_used():
    sources = [p for p in REPO.rglob("*.py") if ".venv" not in p.parts and "tests" not in p.parts]
    for path in sources:
        text = path.read_text()
        assert "shell=True" not in text, path
        for call in re.findall(r"torch\.load\(([^)]*)\)", text):
            assert "weights_only=True" in call, (path, call)
        assert "pickle.load" not in text, path


def test_sixteen_bit_and_rgba_inputs_are_read_as_documented(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert read_image(tmp_path / "a.png").shape == (4, 4, 3) and int(read_image(tmp_path / "a.png")[0, 0, 0]) == 200
    assert np.array_equal(read_image(tmp_path / "a.png", keep_alpha=True), rgba)
    Image.fromarray(np.full((4, 4), 65535, np.uint16)).save(tmp_path / "b.png")
    b = read_image(tmp_path / "b.png")
    assert b.dtype == np.uint16 and int(b.max()) == 65535  # kept, not scaled to 8 bit


def _ctrl_c_while_loading(command: list[str], cwd: Path, ignored: bool = False) -> subprocess.CompletedProcess:
    """Run a command as a process, send it SIGINT once torch's library is being loaded (its import takes a second or
    more), and return its exit status and output. ``ignored``: started with SIGINT ignored, as ``cmd &`` in a script."""
    import signal
    import sys
    import time

    preexec = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignored else None
    proc = subprocess.Popen([sys.executable, str(REPO / command[0]), *command[1:]], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env(),
                            preexec_fn=preexec)
    maps, deadline = Path(f"/proc/{proc.pid}/maps"), time.monotonic() + 60
    while "libtorch" not in maps.read_text() and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize("command", [["predict.py", "--checkpoint", "c.pth", "--input", "in", "--output", "out"],
                                     ["train.py", "-e", "1"]], ids=["predict", "train"])
def test_ctrl_c_while_a_command_loads_is_one_line_and_exit_130(tmp_path, command):
    """Importing torch takes seconds: a Ctrl-C then ends the command in one line, not a traceback from an import."""
    result = _ctrl_c_while_loading(command, tmp_path)
    assert result.returncode == 130 and result.stderr == "interrupted before the command started: nothing was written\n"
    assert list(tmp_path.iterdir()) == []


def test_a_ctrl_c_the_launcher_ignores_stays_ignored(tmp_path):
    """``cmd &`` in a script starts a command with Ctrl-C ignored: the handler of the start-up leaves it so."""
    result = _ctrl_c_while_loading(["predict.py", "--checkpoint", "c.pth", "--input", "in", "--output", "out"],
                                   tmp_path, ignored=True)
    assert result.returncode == 2 and result.stderr.startswith("error: ")  # it ran on to its own refusal


def test_importing_a_command_keeps_the_callers_ctrl_c():
    import signal

    import predict  # noqa: F401
    from lib.core import startup

    assert signal.getsignal(signal.SIGINT) is not startup._interrupted and not startup.running_a_command()
