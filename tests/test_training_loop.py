"""The pieces of train.py's loop that keep a GPU busy: losses read in blocks, the background checkpoint writer with
best.pth as a link, the torch.compile switch, and the TensorBoard panel drawn without matplotlib."""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import train
from dataloader.patches import PatchDataset
from lib.core.device import Runtime
from lib.core.distributed import DistInfo
from lib.core.errors import EXIT_INTERRUPTED, UserError, cli_main
from lib.core.params import load_params, replace
from lib.core.visualize import colorize, validation_panel
from lib.prepare import prepare_patches
from lib.training import _quiet_event_thread_errors, batches, new_run_name, smallest_batch
from model.checkpoint import CheckpointWriter, link_checkpoint, save_checkpoint
from model.unet_model import UNet
from tests.conftest import assert_user_error, run_main, write_params


def _run(monkeypatch, params_file: Path, data: Path, name: str, interval: int, *extra: str) -> int:
    monkeypatch.setattr(train, "readout_interval", lambda device: interval)
    return train.main(["--params", str(params_file), "-f", str(data / "patches_s48"), "-e", "2", "-b", "4",
                       "--precision", "fp32", "--name", name, *extra])


def _loss_curve(data: Path, name: str) -> list[tuple[int, float]]:
    acc = EventAccumulator(str(data / "runs" / name), size_guidance={"scalars": 0}).Reload()
    return [(s.step, s.value) for s in acc.Scalars("train/loss_iter")]


@pytest.mark.parametrize("interval", [4, 32])
def test_reading_losses_in_blocks_changes_nothing(tiny_patches, monkeypatch, interval):
    """The same weights, history and per-step loss curve whether the losses are read every step (CPU) or in blocks
    (GPU), also with blocks that do not divide the epoch's steps and blocks longer than an epoch."""
    params_file, data = tiny_patches
    assert _run(monkeypatch, params_file, data, f"every1_{interval}", 1) == 0
    assert _run(monkeypatch, params_file, data, f"every{interval}", interval) == 0
    one = torch.load(data / "checkpoints" / f"every1_{interval}" / "last.pth", weights_only=True)
    block = torch.load(data / "checkpoints" / f"every{interval}" / "last.pth", weights_only=True)
    assert all(torch.equal(one["model_state"][k], block["model_state"][k]) for k in one["model_state"])
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in one["history"]]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in block["history"]]
    curve = _loss_curve(data, f"every{interval}")
    assert curve == _loss_curve(data, f"every1_{interval}")
    steps_per_epoch = len(curve) // 2
    assert steps_per_epoch % 4 and steps_per_epoch < 32  # the cases: blocks that end mid-epoch, one epoch long


class _Recorder:
    def __init__(self) -> None:
        self.scalars: list[tuple[str, float, int]] = []

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.append((tag, value, step))


class _Bar:
    def __init__(self) -> None:
        self.n = 0

    def update(self, n: int) -> None:
        self.n += n

    def set_postfix(self, **kwargs) -> None:
        pass


class _Stop:
    def __init__(self, requested: bool) -> None:
        self.requested = requested


@pytest.mark.parametrize("values, stop, outcome, counted", [
    ([0.5, 0.25, 1.0], False, "running", 3),
    ([0.5, 0.25, 1.0], True, "stopped", 3),
    ([0.5, math.nan, 1.0], False, "non-finite", 1),
    ([math.inf], False, "non-finite", 0),
    ([0.5, 0.25, -math.inf], True, "non-finite", 2),
])
def test_read_losses_counts_up_to_the_first_non_finite_loss(values, stop, outcome, counted):
    progress = train.Progress(epoch=2, step=10, loss_sum=1.0, loss_count=10, steps_done=90)
    writer, bar = _Recorder(), _Bar()
    result = train.read_losses([torch.tensor(v) for v in values], progress, Runtime(torch.device("cpu")),
                               _Stop(stop), writer, bar)
    assert result == outcome
    assert (progress.step, progress.loss_count, bar.n) == (10 + counted, 10 + counted, counted)
    assert progress.steps_done == 90 + counted
    assert progress.loss_sum == pytest.approx(1.0 + sum(values[:counted]))
    # the step of the first non-finite loss is where progress stands; each finite loss is logged at the run's step
    assert writer.scalars == [("train/loss_iter", v, 90 + k) for k, v in enumerate(values[:counted])]


@pytest.mark.parametrize("mode, expected", [("default", None), ("reduce-overhead", "reduce-overhead"),
                                            ("max-autotune-no-cudagraphs", "max-autotune-no-cudagraphs")])
def test_compile_mode_reaches_torch_compile(tiny_patches, monkeypatch, mode, expected):
    params_file, data = tiny_patches
    calls = []

    def fake_compile(model, mode=None):
        calls.append((type(model).__name__, mode))
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    assert _run(monkeypatch, params_file, data, f"compiled_{mode}", 1, "--compile", mode) == 0
    assert calls == [("UNet", expected)]
    state = torch.load(data / "checkpoints" / f"compiled_{mode}" / "last.pth", weights_only=True)
    assert state["params"]["training"]["compile"] == mode


def test_compile_without_a_cpp_compiler_is_refused(tiny_patches, monkeypatch):
    params_file, data = tiny_patches
    monkeypatch.setattr(train.shutil, "which", lambda name: None)

    def no_reading(*args, **kwargs):
        raise AssertionError("the patches were read before --compile was refused")

    monkeypatch.setattr(train, "load_data", no_reading)  # refused before seconds of decoding
    result = run_main("train.py", "--params", str(params_file), "-f", str(data / "patches_s48"), "-e", "2",
                      "--name", "no_compiler", "--compile", "default")
    assert_user_error(result, "--compile default", "C++ compiler")
    assert not (data / "checkpoints" / "no_compiler").exists()


def test_background_writer_saves_a_snapshot_and_links_best(tmp_path):
    state = {"model_state": {"w": torch.arange(4.0)}, "history": [{"epoch": 1}]}
    writer = CheckpointWriter()
    writer.save(state, tmp_path / "last.pth", [tmp_path / "best.pth"])
    state["model_state"]["w"] += 100  # training goes on at once: the file holds the state at the call
    state["history"].append({"epoch": 2})
    writer.wait()
    for name in ("last.pth", "best.pth"):
        saved = torch.load(tmp_path / name, weights_only=True)
        assert torch.equal(saved["model_state"]["w"], torch.arange(4.0)) and saved["history"] == [{"epoch": 1}]
    first = (tmp_path / "best.pth").read_bytes()
    writer.save(state, tmp_path / "last.pth")  # a later epoch that is not the best: best.pth keeps its content
    writer.wait()
    assert (tmp_path / "best.pth").read_bytes() == first != (tmp_path / "last.pth").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pth", "last.pth"]  # no temporary file left


def test_link_falls_back_to_a_copy(tmp_path, monkeypatch):
    save_checkpoint(tmp_path / "last.pth", {"w": torch.ones(3)})

    def no_links(src, dst):
        raise OSError("hard links not supported")

    monkeypatch.setattr(os, "link", no_links)
    link_checkpoint(tmp_path / "last.pth", tmp_path / "best.pth")
    assert (tmp_path / "best.pth").read_bytes() == (tmp_path / "last.pth").read_bytes()
    assert os.stat(tmp_path / "best.pth").st_ino != os.stat(tmp_path / "last.pth").st_ino


def test_a_failed_background_write_is_raised_by_the_next_call(tmp_path):
    writer = CheckpointWriter()
    writer.save({"w": torch.ones(2)}, tmp_path / "missing" / "last.pth")
    with pytest.raises(UserError, match="missing/last.pth: cannot write"):
        writer.wait()
    writer.wait()  # raised once


@pytest.mark.parametrize("images, channels", [
    (np.random.default_rng(0).integers(0, 256, (2, 8, 8)).astype(np.uint8), None),
    (np.random.default_rng(1).integers(0, 4096, (3, 8, 8, 4)).astype(np.uint16), [3, 1, 0]),
])
def test_validation_panel_lays_out_image_truth_and_prediction(images, channels):
    n, colors = len(images), [(0, 0, 0), (230, 40, 40), (120, 250, 80)]
    truths = np.random.default_rng(2).integers(0, 3, (n, 8, 8))
    preds = np.random.default_rng(3).integers(0, 3, (n, 8, 8))
    panel = validation_panel(images, truths, preds, colors, channels)
    assert panel.shape == (8 * n + 2 * (n - 1), 3 * 8 + 4, 3) and panel.dtype == np.uint8
    for i in range(n):
        row = panel[i * 10:i * 10 + 8]
        assert np.array_equal(row[:, 10:18], colorize(truths[i], colors))
        assert np.array_equal(row[:, 20:28], colorize(preds[i], colors))
        assert (row[:, 8:10] == 255).all() and (row[:, 18:20] == 255).all()
        if images.dtype == np.uint8:  # 8-bit gray shown as stored, in all three channels
            assert all(np.array_equal(row[:, :8, c], images[i]) for c in range(3))
    assert (panel[8:10] == 255).all()


def test_cosine_schedule_sets_each_step_rate(tiny_patches, monkeypatch):
    """With ``--schedule cosine`` the rate changes step by step; the epoch records give each epoch's first and last
    rate, and the epoch's line prints both."""
    from lib.core.schedule import schedule_factor

    params_file, data = tiny_patches
    rates = []
    real = train.set_rate
    monkeypatch.setattr(train, "set_rate", lambda optimizer, rate: (rates.append(rate), real(optimizer, rate)))
    assert _run(monkeypatch, params_file, data, "cosine", 1, "--schedule", "cosine", "--warmup-fraction", "0.25",
                "-l", "0.08") == 0
    steps = len(rates) // 2
    assert rates == [0.08 * schedule_factor("cosine", e, k, steps, 2, 0.01, 0.25) for e in range(2)
                     for k in range(steps)]
    history = torch.load(data / "checkpoints" / "cosine" / "last.pth", weights_only=True)["history"]
    assert [h["lr"] for h in history] == [rates[0], rates[steps]]
    assert [h["lr_end"] for h in history] == [rates[steps - 1], rates[-1]]
    names = list(history[0].get("val_iou", {}))
    assert f"lr {rates[0]:.2e} to {rates[steps - 1]:.2e}  " in train.summary_line(history[0], 2, names)
    constant = {**history[0], "lr_end": history[0]["lr"]}  # the published schedule: one rate an epoch
    assert f"lr {rates[0]:.2e}  " in train.summary_line(constant, 2, names)


@pytest.mark.parametrize("optimizer, kind, state_keys", [("sgd", torch.optim.SGD, {"momentum_buffer"}),
                                                          ("adamw", torch.optim.AdamW, {"step", "exp_avg",
                                                                                        "exp_avg_sq"})])
def test_optimizer_option_trains_and_resumes_with_its_optimizer(tiny_patches, monkeypatch, optimizer, kind,
                                                                 state_keys):
    """``--optimizer`` picks the optimiser (its state is what the checkpoint carries), a resumed run extends with the
    same one, and resuming with the other is refused in one line."""
    params_file, data = tiny_patches
    made = []
    real = train.make_optimizer
    monkeypatch.setattr(train, "make_optimizer", lambda *a: made.append(real(*a)) or made[-1])
    name = f"opt_{optimizer}"
    assert _run(monkeypatch, params_file, data, name, 1, "--optimizer", optimizer, "-l", "0.003") == 0
    assert type(made[-1]) is kind and made[-1].defaults["weight_decay"] == 1e-4
    last = data / "checkpoints" / name / "last.pth"
    state = torch.load(last, weights_only=True)
    assert state["params"]["training"]["optimizer"] == optimizer
    assert set(next(iter(state["optimizer_state"]["state"].values()))) == state_keys
    assert train.main(["--load", str(last), "-e", "3"]) == 0
    assert type(made[-1]) is kind and torch.load(last, weights_only=True)["epoch"] == 3
    other = "sgd" if optimizer == "adamw" else "adamw"
    refused = run_main("train.py", "--load", str(last), "-e", "4", "--optimizer", other)
    message = (f"error: {last}: the run was trained with the {optimizer} optimiser; resume it with --optimizer "
               f"{optimizer}")
    assert_user_error(refused, message)
    assert refused.stderr.strip() == message


# (id, --name, accepted): a run name is one plain folder name, whatever the script of its letters
RUN_NAMES = [
    ("plain", "demo_2-b.v1", True),
    ("unicode-letters", "ünï_名前", True),
    ("200-bytes", "a" * 200, True),
    ("too-long", "a" * 201, False),
    ("too-long-in-bytes", "ü" * 101, False),
    ("slash", "a/b", False),
    ("parent", "..", False),
    ("hidden", ".hidden", False),
    ("dots", "...", False),
    ("option-like", "-x", False),
    ("space", "a b", False),
    ("empty", "", False),
]


@pytest.mark.parametrize("case", RUN_NAMES, ids=[c[0] for c in RUN_NAMES])
def test_run_names_are_plain_folder_names(tmp_path, case):
    _, name, accepted = case
    if accepted:
        assert new_run_name("patches_s96", name, tmp_path / "c", tmp_path / "r") == name
        assert (tmp_path / "c" / name).is_dir()  # claimed: made, and then taken
        (tmp_path / "c" / name).rmdir()
        (tmp_path / "r" / name).mkdir(parents=True)
        with pytest.raises(UserError, match="has saved no checkpoint.*remove .*r/") as err:  # a run killed early
            new_run_name("patches_s96", name, tmp_path / "c", tmp_path / "r")
        assert str(tmp_path / "c") not in str(err.value)  # names only the folders that exist
        (tmp_path / "c" / name).mkdir(parents=True)
        (tmp_path / "c" / name / "last.pth").touch()
        with pytest.raises(UserError, match="a run of that name exists; choose another name or --load"):
            new_run_name("patches_s96", name, tmp_path / "c", tmp_path / "r")
    else:
        with pytest.raises(UserError, match="expected a plain folder name") as err:
            new_run_name("patches_s96", name, tmp_path / "c", tmp_path / "r")
        assert len(str(err.value)) < 200


def test_runs_started_together_cannot_take_one_name(tmp_path):
    """The name is claimed by creating the run's checkpoint folder, one step that one run alone passes: two runs
    started at once with one --name both trained into one folder before (the later run's checkpoints replacing the
    other's). A default name moves on to ``_2``; a process that writes nothing (another rank) claims nothing."""
    import threading

    roots = (tmp_path / "c", tmp_path / "r")
    outcomes, start = [], threading.Barrier(8)

    def attempt() -> None:
        start.wait()
        try:
            outcomes.append(new_run_name("p", "same", *roots))
        except UserError as err:
            outcomes.append(str(err))

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert outcomes.count("same") == 1
    assert all("has saved no checkpoint (it is in its first epoch" in o for o in outcomes if o != "same")
    assert new_run_name("p", "same", *roots, claim=False) == "same"  # another rank of the run that has it
    first = new_run_name("p", None, *roots)
    second = new_run_name("p", None, *roots)
    assert second != first and second.startswith(first.rsplit("_", 1)[0]) and (tmp_path / "c" / second).is_dir()
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == sorted(["same", first, second])


def test_a_second_ctrl_c_stops_at_once_and_says_what_to_resume_from(tmp_path, capsys):
    """The first Ctrl-C asks the loop to stop at a step boundary; a second one stops at once, and the one line printed
    names the newest checkpoint of the run's folder to resume from (last.pth, or the interrupted.pth a resumed run
    was loaded from), or, before the run saved one, says how to reuse its name (a generic "rerun the command" had
    been printed, and rerunning it was refused as the name was taken)."""
    previous = signal.getsignal(signal.SIGINT)
    folder = tmp_path / "run"
    try:
        stop = train.StopRequest(folder)
        assert signal.getsignal(signal.SIGINT) == stop._handle
        stop._handle(signal.SIGINT, None)
        assert stop.requested
        with pytest.raises(KeyboardInterrupt, match="before this run saved a checkpoint; remove .*run"):
            stop._handle(signal.SIGINT, None)
        folder.mkdir()
        (folder / "interrupted.pth").touch()
        with pytest.raises(KeyboardInterrupt, match="interrupted.pth$"):  # a resumed run's only checkpoint
            stop._handle(signal.SIGINT, None)
        (folder / "last.pth").touch()
        os.utime(folder / "interrupted.pth", (1, 1))  # an older interrupted.pth the run has gone past
        with pytest.raises(KeyboardInterrupt) as second:
            stop._handle(signal.SIGINT, None)
        stop.close()
        assert signal.getsignal(signal.SIGINT) == previous  # given back when the run ends
    finally:
        signal.signal(signal.SIGINT, previous)
    assert str(second.value) == f"stopped at once; resume with: python train.py --load {folder / 'last.pth'}"

    def stopped(reason: str):
        raise KeyboardInterrupt(reason)

    for reason, said in ((str(second.value), str(second.value)), ("", "rerun the command to finish")):
        with pytest.raises(SystemExit) as exit_:
            cli_main(stopped)(reason)
        assert exit_.value.code == EXIT_INTERRUPTED
        assert capsys.readouterr().err == f"interrupted: every file written so far is whole; {said}\n"


def test_sigterm_is_handled_as_ctrl_c_and_a_second_one_exits_143(tmp_path):
    """SIGTERM (a batch scheduler's) asks for the same stop as Ctrl-C, and a second one stops at once with the status a
    shell gives SIGTERM: it exited 130, Ctrl-C's, whatever the signal was."""
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        stop = train.StopRequest(tmp_path / "run")
        assert signal.getsignal(signal.SIGTERM) == stop._handle
        stop._handle(signal.SIGTERM, None)
        assert stop.requested and stop.signum == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt) as second:
            stop._handle(signal.SIGTERM, None)
        stop.close()
        assert {s: signal.getsignal(s) for s in previous} == previous
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    with pytest.raises(SystemExit) as exit_:
        cli_main(lambda: (_ for _ in ()).throw(second.value))()
    assert exit_.value.code == 143


def test_a_second_ctrl_c_while_interrupted_pth_is_written_waits_for_it(tmp_path, monkeypatch, capsys):
    """A second Ctrl-C right after the first stopped the run cut the background write of interrupted.pth short: the
    run named a file that was never renamed into place. Now it waits for it, then names it."""
    import model.checkpoint as checkpoint_module

    writing, save = threading.Event(), checkpoint_module.save_checkpoint

    def slow_save(path, state):
        writing.set()
        time.sleep(0.5)
        save(path, state)

    monkeypatch.setattr(checkpoint_module, "save_checkpoint", slow_save)
    previous = signal.getsignal(signal.SIGINT)
    try:
        stop = train.StopRequest(tmp_path)
        stop._handle(signal.SIGINT, None)  # the first Ctrl-C: the loop stops and saves interrupted.pth
        checkpoints = train.CheckpointWriter()
        checkpoints.save({"weights": torch.ones(3)}, tmp_path / "interrupted.pth")
        writing.wait()
        threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGINT)).start()  # the second, during the write
        code = train.interrupted(tmp_path, train.Progress(), Runtime(torch.device("cpu")), stop, checkpoints)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert code == EXIT_INTERRUPTED
    assert torch.equal(torch.load(tmp_path / "interrupted.pth")["weights"], torch.ones(3))
    err = capsys.readouterr().err
    assert "writing the checkpoint; the run stops once it is whole" in err
    assert err.rstrip().endswith(f"resume with: python train.py --load {tmp_path / 'interrupted.pth'}")


# (deterministic, device, bilinear, refused): only the bilinear upsampling's CUDA backward has no deterministic kernel
DETERMINISTIC = [(True, "cuda", True, True), (True, "cpu", True, False), (False, "cuda", True, False),
                 (True, "cuda", False, False)]


@pytest.mark.parametrize("deterministic, device, bilinear, refused", DETERMINISTIC)
def test_deterministic_runs_that_would_fail_mid_training_are_refused_up_front(deterministic, device, bilinear, refused):
    from lib.core.errors import UserError

    if refused:
        with pytest.raises(UserError, match=r"^--deterministic: .*model.bilinear true.* or --device cpu$"):
            train.check_deterministic(deterministic, torch.device(device), bilinear)
    else:
        train.check_deterministic(deterministic, torch.device(device), bilinear)


def test_a_resumed_run_with_another_batch_size_logs_its_steps_after_the_earlier_ones(tiny_patches, monkeypatch):
    """``train/loss_iter`` is logged at the run's count of steps: with ``epoch × steps per epoch + step``, a run
    resumed at ``-b 8`` after an epoch at ``-b 4`` logged its second epoch in the middle of the first one."""
    params_file, data = tiny_patches
    assert _run(monkeypatch, params_file, data, "rebatched", 32, "-e", "1") == 0
    first = [step for step, _ in _loss_curve(data, "rebatched")]
    assert first == list(range(len(first)))
    last = data / "checkpoints" / "rebatched" / "last.pth"
    assert torch.load(last, weights_only=True)["steps_done"] == len(first)
    assert train.main(["--load", str(last), "-e", "2", "-b", "8"]) == 0
    steps = [step for step, _ in _loss_curve(data, "rebatched")]
    assert steps == list(range(len(first) + -(-len(first) // 2)))  # the second epoch's half as many steps after


@pytest.mark.parametrize("saved_rate, expected", [(0.0123, 0.0123), (None, "schedule")])
def test_an_epoch_resumed_mid_way_records_the_rate_it_began_at(tiny_patches, monkeypatch, tmp_path, saved_rate,
                                                                expected):
    """Resumed mid-epoch with another ``-e`` (so another schedule), the epoch's ``lr`` is the rate its first steps ran
    at, kept in the checkpoint; a checkpoint saved before that was kept gives the new schedule's (as before)."""
    params_file, data = tiny_patches
    name = f"midway_{saved_rate}"
    assert _run(monkeypatch, params_file, data, name, 32, "-e", "1") == 0
    state = torch.load(data / "checkpoints" / name / "last.pth", weights_only=True)
    state.update(step_in_epoch=2, epoch_rate=saved_rate)  # as an interrupted.pth saved at step 2 of epoch 2
    if saved_rate is None:
        del state["epoch_rate"], state["steps_done"]
    save_checkpoint(tmp_path / "midway.pth", state)
    assert train.main(["--load", str(tmp_path / "midway.pth"), "-e", "3", "-l", "0.05", "--name", f"{name}_b"]) == 0
    history = torch.load(data / "checkpoints" / f"{name}_b" / "last.pth", weights_only=True)["history"]
    assert history[1]["lr"] == pytest.approx(0.05 if expected == "schedule" else expected)  # published: 1.0 at first


def test_a_ctrl_c_as_the_run_takes_its_folder_stops_with_a_checkpoint(tiny_patches, monkeypatch):
    """A Ctrl-C after the run's name was taken (its folder made) and before the loop began stopped at once and left
    an empty folder, which the same ``--name`` then refused; now it stops at a step boundary with interrupted.pth."""
    params_file, data = tiny_patches
    real = train.open_outputs

    def open_outputs(*args):
        os.kill(os.getpid(), signal.SIGINT)
        return real(*args)

    monkeypatch.setattr(train, "open_outputs", open_outputs)
    assert _run(monkeypatch, params_file, data, "early_stop", 4) == EXIT_INTERRUPTED
    assert torch.load(data / "checkpoints" / "early_stop" / "interrupted.pth", weights_only=True)["step_in_epoch"] == 4


@pytest.mark.parametrize("n, batch_size, least, sizes", [
    (7, 3, 1, [3, 3, 1]),
    (7, 3, 2, [3, 4]),   # a lone last patch joins the batch before it
    (8, 3, 2, [3, 3, 2]),
    (6, 3, 2, [3, 3]),
    (1, 4, 2, [1]),      # no batch before it to join
    (0, 4, 2, []),
])
def test_batches_cover_the_indices_in_order_and_a_short_last_one_joins_the_one_before(n, batch_size, least, sizes):
    indices = torch.arange(n) * 10
    parts = list(batches(indices, batch_size, least))
    assert [len(p) for p in parts] == sizes
    assert torch.equal(torch.cat(parts) if parts else indices, indices)


@pytest.mark.parametrize("side, bottom, least", [(16, 1, 2), (31, 1, 2), (32, 2, 1), (47, 2, 1), (96, 6, 1)])
def test_patches_below_32_pixels_need_batches_of_two(side, bottom, least):
    assert UNet.bottom_side(side) == bottom
    assert UNet(1, 2, 4).eval()(torch.zeros(1, 1, side, side)).shape[-1] == side
    assert smallest_batch(side) == least


def test_16_pixel_patches_train_without_a_lone_last_patch_and_refuse_a_batch_of_one(tiny_patches, tmp_path):
    """At 16×16 the U-Net's bottom level is 1×1; BatchNorm raised a traceback on a batch of one patch (the last,
    partial batch of an epoch included). A lone last patch now joins the batch before it; ``-b 1`` is refused."""
    params_file, data = tiny_patches
    params = load_params(params_file)
    small = replace(params, "patches", size=16, per_image=1, flips=False)
    prepare_patches(data / "images_training", tmp_path / "patches_s16", small, progress=False)
    n = len(PatchDataset(tmp_path / "patches_s16", params.class_colors).images)
    common = ["--params", str(params_file), "-f", str(tmp_path / "patches_s16"), "-e", "1", "--val-fraction", "0",
              "--precision", "fp32"]
    assert run_main("train.py", *common, "-b", str(n - 1), "--name", "s16").returncode == 0
    assert torch.load(data / "checkpoints" / "s16" / "last.pth", weights_only=True)["steps_done"] == 1
    refused = run_main("train.py", *common, "-b", "1", "--name", "s16_b1")
    assert_user_error(refused, "--batch-size 1: with patches of 16x16", "use a batch of 2 or more")
    assert not (data / "checkpoints" / "s16_b1").exists() and not (data / "runs" / "s16_b1").exists()
    # under torchrun each process trains on its share: one patch a process is refused up front (a traceback on every
    # rank), except with SyncBatchNorm, whose statistics span the processes
    args = train.parse_args([*common, "-b", "1"])
    for processes, sync_bn, refused in ((n, False, True), (n, True, False), (n // 2, False, False)):
        rt = Runtime(torch.device("cpu"), dist=DistInfo(0, processes, 0))
        args.sync_bn, args.batch_size = sync_bn, 1 if sync_bn else 2
        params = train.resolve_params(args, None)
        if refused:
            with pytest.raises(UserError, match=rf"{n} training patch\(es\) of 16x16 over {n} processes leave 1 a "
                                                r"step, and BatchNorm cannot train"):
                train.load_data(params, None, args, rt)
        else:
            assert train.load_data(params, None, args, rt).least_batch == (1 if sync_bn else 2)


@pytest.mark.parametrize("method, calls", [("add_image", 1), ("add_scalar", 3)])
def test_a_full_disk_under_tensorboard_ends_the_run_in_one_line_after_its_checkpoint(tiny_patches, monkeypatch,
                                                                                     method, calls):
    """A failed TensorBoard write raised a traceback in the writer's thread and another in the run, losing the
    epoch: at its end (``add_image``) before its checkpoint, or mid-way (a step's ``add_scalar``) with no
    checkpoint of it at all. The run now ends after the epoch's checkpoint, in one line."""
    from torch.utils.tensorboard import SummaryWriter

    original, count = getattr(SummaryWriter, method), []

    def full_after(self, *args, **kwargs):
        count.append(1)
        if len(count) >= calls:
            raise OSError(28, "No space left on device")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SummaryWriter, method, full_after)
    params_file, data = tiny_patches
    name = f"tb_full_{method}"
    result = run_main("train.py", "--params", str(params_file), "-f", str(data / "patches_s48"), "-e", "2",
                      "--precision", "fp32", "--name", name)
    assert_user_error(result, f"{data / 'runs' / name}: cannot write (No space left on device)")
    state = torch.load(data / "checkpoints" / name / "last.pth", weights_only=True)
    assert (state["epoch"], state["step_in_epoch"]) == (1, 0)
    assert "epoch 1/2" in result.stdout  # the epoch's line, as without the failure


def test_the_writer_threads_failed_write_is_left_to_the_run_to_report(monkeypatch):
    reported = []
    monkeypatch.setattr(threading, "excepthook", lambda args: reported.append(type(args.thread).__name__))
    _quiet_event_thread_errors()
    _quiet_event_thread_errors()  # once per process, however often a run starts

    def failing(name: str) -> threading.Thread:
        def run(self):
            raise OSError(28, "No space left on device")
        return type(name, (threading.Thread,), {"run": run})()

    for name in ("_AsyncWriterThread", "OtherThread"):
        thread = failing(name)
        thread.start()
        thread.join()
    assert reported == ["OtherThread"]


@pytest.mark.parametrize("blocked", ["runs folder", "full disk"])
def test_a_run_that_cannot_open_its_outputs_gives_its_name_back(tiny_patches, tmp_path, monkeypatch, blocked):
    """A runs folder that could not be made (its parent a file), or a disk too full for the first TensorBoard
    record, left the run's folders behind, and the same --name was then refused as a run that had saved nothing."""
    params_file, data = tiny_patches
    name = "given_back_" + blocked.split()[0]
    common = ["-f", str(data / "patches_s48"), "-e", "1", "--precision", "fp32", "--name", name]
    if blocked == "runs folder":
        (tmp_path / "file").write_text("")
        raw = json.loads(params_file.read_text())
        raw["training"]["runs_dir"] = str(tmp_path / "file" / "runs")
        failing = write_params(tmp_path / "blocked.json", raw)
    else:
        from torch.utils.tensorboard import SummaryWriter

        def full(*args, **kwargs):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(SummaryWriter, "add_text", full)
        failing = params_file
    assert run_main("train.py", "--params", str(failing), *common).returncode == 2
    assert not (data / "checkpoints" / name).exists() and not (data / "runs" / name).exists()
    monkeypatch.undo()
    assert run_main("train.py", "--params", str(params_file), *common).returncode == 0


def test_a_run_stopped_after_a_failed_tensorboard_write_says_so(tiny_patches, monkeypatch):
    """Kept for the end of the epoch, the error of a full disk was dropped when Ctrl-C stopped the run first."""
    from torch.utils.tensorboard import SummaryWriter

    original, calls = SummaryWriter.add_scalar, []

    def full_then_ctrl_c(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
            raise OSError(28, "No space left on device")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SummaryWriter, "add_scalar", full_then_ctrl_c)
    params_file, data = tiny_patches
    result = run_main("train.py", "--params", str(params_file), "-f", str(data / "patches_s48"), "-e", "2",
                      "--precision", "fp32", "--name", "tb_then_stop")
    assert result.returncode == EXIT_INTERRUPTED
    assert (data / "checkpoints" / "tb_then_stop" / "interrupted.pth").is_file()
    assert (f"note: TensorBoard's records of this run stop where a write failed: {data / 'runs' / 'tb_then_stop'}: "
            "cannot write (No space left on device)") in result.stderr


def test_ctrl_c_during_the_runs_last_writes_waits_for_them(tiny_patches, monkeypatch):
    """A second Ctrl-C during the last writes (hparams, the last checkpoint) raised on rank 0 alone, leaving the
    other torchrun processes in the exchange of their outcome; now it waits, as in the end's checkpoint wait."""
    real = train.log_hparams

    def log_hparams_under_ctrl_c(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "log_hparams", log_hparams_under_ctrl_c)
    params_file, data = tiny_patches
    result = run_main("train.py", "--params", str(params_file), "-f", str(data / "patches_s48"), "-e", "1",
                      "--precision", "fp32", "--name", "ctrl_c_at_the_end")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "writing the checkpoint; the run stops once it is whole" in result.stderr and "done:" in result.stdout
