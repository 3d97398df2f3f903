"""The benchmarks run on their tiny setting and write their JSON with the expected keys (no timing assertions).

They run with one torch thread: on a shared machine two threads can be many times slower (oversubscription).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, run_cli

MACHINE_KEYS = {"cpu", "cores", "torch", "torch_threads"}


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread in this process for each test, then the other tests get theirs back."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def read_result(folder: Path, name: str) -> dict:
    result = json.loads((folder / f"{name}.json").read_text())
    assert result["benchmark"] == name
    assert MACHINE_KEYS <= set(result["machine"])
    return result


def test_run_all_runs_train_step_and_summarises(tmp_path: Path, capsys):
    from benchmarks import run_all

    assert run_all.main(["--tiny", "--only", "train_step", "--threads", "1", "--out-dir", str(tmp_path)]) == 0
    step = read_result(tmp_path, "train_step")
    (width,) = step["results"]
    assert {"width", "precision", "project", "plain", "speedup", "target", "met"} <= set(width)
    assert {"min_s", "median_s", "times_s", "patches_per_s"} <= set(width["project"])
    summary = read_result(tmp_path, "run_all")
    assert set(summary["seconds"]) == {"train_step"} and summary["targets"]
    assert "== targets ==" in capsys.readouterr().out


def test_run_all_reports_the_fraction_of_peak(tmp_path: Path, capsys):
    """make bench includes the hardware benchmark: a row for training and inference at each width, no verdict."""
    from benchmarks import run_all

    assert run_all.main(["--tiny", "--only", "hardware", "--threads", "1", "--out-dir", str(tmp_path)]) == 0
    hardware = read_result(tmp_path, "hardware")
    rows = read_result(tmp_path, "run_all")["targets"]
    assert [r["measure"].split(":")[0] for r in rows] == ["width 4", "width 4"]
    assert [r["value"] for r in rows] == [f"{100 * hardware['results'][0][k]:.1f}%"
                                          for k in ("train_fraction", "inference_fraction")]
    assert all(hardware["peak_precision"] in r["measure"] and r["verdict"] == "" for r in rows)
    assert "of the matmul peak" in capsys.readouterr().out


def test_inference_tiny(tmp_path: Path):
    from benchmarks import inference

    assert inference.main(["--tiny", "--threads", "1", "--out-dir", str(tmp_path)]) == 0
    result = read_result(tmp_path, "inference")
    assert [r["label"] for r in result["results"]] == ["test-size images", "large image"]
    for r in result["results"]:
        assert set(r["variants"]) == {"ours", "ours_fp32_cl", "ours_fp32", "monai_fp32", "loop"}
        assert {"images_per_s", "min_s", "median_s", "extrapolated"} <= set(r["variants"]["ours"])
        assert {"ours_vs_monai", "ours_fp32_vs_monai_fp32", "ours_vs_loop"} <= set(r["ratios"])
        assert r["max_abs_diff_fp32"] <= 1e-5  # equal precision, images larger than a window: same windows
    assert result["results"][1]["variants"]["loop"]["extrapolated"]
    assert set(result["targets"]["large image"]) == {"ours_vs_monai", "ours_fp32_vs_monai_fp32", "max_abs_diff_fp32"}


def test_per_window_loop_matches_the_sliding_window_where_windows_tile_the_image():
    from benchmarks.inference import per_window_loop
    from lib.core.inference import sliding_window_predict
    from model import UNet

    torch.manual_seed(0)
    model = UNet(1, 3, 4).eval()
    image = torch.randn(1, 144, 192)  # 96 + k × 48 on both sides: no padding, the same windows
    loop, stats = per_window_loop(model, image)
    ours, _ = sliding_window_predict(model, image, batch_size=4)
    assert stats["done"] == stats["total"] == 6
    torch.testing.assert_close(loop, ours)


def test_overhead_tiny(tmp_path: Path):
    from benchmarks import overhead

    assert overhead.main(["--tiny", "--threads", "1", "--memory-at", "0.04", "--launches",
                          "--out-dir", str(tmp_path)]) == 0
    result = read_result(tmp_path, "overhead")
    assert [round(t["megapixels"], 2) for t in result["timings"]] == [0.02, 0.04]
    for t in result["timings"]:
        assert {"shape", "windows", "call", "model", "overhead", "call_s_per_megapixel", "met"} <= set(t)
        ops = t["operations"]
        assert ops["call"] > ops["model"] > 0 and ops["batches"] * 4 >= t["windows"]  # the stitching does work
        assert t["model_eager"] is None and t["graphs"] is False
    (memory,) = result["memory"]
    assert {"shape", "rss_before", "peak_increase", "hwm_increase", "expected", "peak_vs_expected"} <= set(memory)
    assert memory["peak_increase"] >= 0 and memory["expected"]["total"] > 0


def test_overhead_cuda_graphs_need_cuda(capsys):
    from benchmarks import overhead

    with pytest.raises(SystemExit) as stop:
        overhead.main(["--tiny", "--cuda-graphs"])
    assert stop.value.code == 2 and "--cuda-graphs: needs --device cuda" in capsys.readouterr().err


def test_time_to_accuracy_tiny(tmp_path: Path):
    done = run_cli("-m", "benchmarks.time_to_accuracy", "--tiny", "--threads", "1", "--out-dir", str(tmp_path),
                   "--workdir", str(tmp_path / "work"), "--optimizer", "adamw", "--loss", "dice_ce")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = read_result(tmp_path, "time_to_accuracy")
    trained = torch.load(tmp_path / "work" / "checkpoints" / "tta" / "best.pth", weights_only=True)["params"]
    assert (trained["training"]["optimizer"], trained["training"]["loss"]) == ("adamw", "dice_ce")
    assert trained["training"]["compile"] == "off"  # neither the demo nor this run asks for torch.compile
    assert result["settings"]["optimizer"] == "adamw" and result["settings"]["train_flags"][-4:] == [
        "--loss", "dice_ce", "--optimizer", "adamw"]
    assert set(result["seconds"]) == {"generate", "prepare", "train", "evaluate"}  # --tiny skips the setup
    assert {"total_s", "test_miou", "target_miou", "target_seconds", "met"} <= set(result)
    metrics = json.loads((tmp_path / "work" / "metrics.json").read_text())  # what predict.py wrote
    assert result["test_miou"] == metrics["miou"] and result["test_iou"] == metrics["iou"]
    assert result["test_mean_image_miou"] == metrics["mean_image_miou"]
    assert result["total_s"] == pytest.approx(sum(result["seconds"].values()), rel=1e-6)
    assert result["met"] == (result["test_miou"] >= result["target_miou"]
                             and result["total_without_setup_s"] <= result["target_seconds"])


def test_time_to_accuracy_runs_the_demo_s_flags_from_the_makefile_and_the_given_ones_after_them(tmp_path: Path):
    """The demo's settings have one home, the Makefile: the benchmark passes DEMO_TRAIN_FLAGS and DEMO_PREDICT_FLAGS
    as ``make demo`` does, and a flag given to it comes later, so that train.py keeps it."""
    import shlex

    import train
    from benchmarks import time_to_accuracy

    makefile = (REPO / "Makefile").read_text()
    demo = {name: shlex.split(re.search(rf"^{name} \?=(.*)$", makefile, re.MULTILINE).group(1))
            for name in ("DEMO_TRAIN_FLAGS", "DEMO_PREDICT_FLAGS")}
    assert "$(DEMO_TRAIN_FLAGS)" in makefile and "$(DEMO_PREDICT_FLAGS)" in makefile  # what make demo runs
    params = time_to_accuracy.write_params(tmp_path, tiny=True)

    def commands(*flags: str) -> tuple[list[str], list[str]]:
        stages = time_to_accuracy.stage_commands(time_to_accuracy.parse_args(["--skip-setup", *flags]), tmp_path,
                                                 params)
        return stages["train"][0], stages["evaluate"][0]

    command, evaluate = commands()
    assert command[2:2 + len(demo["DEMO_TRAIN_FLAGS"])] == demo["DEMO_TRAIN_FLAGS"]
    assert evaluate[2:2 + len(demo["DEMO_PREDICT_FLAGS"])] == demo["DEMO_PREDICT_FLAGS"]
    assert "--seed" not in command  # parameters.json's seed

    command, evaluate = commands("--compile", "default", "--epochs", "3", "--seed", "7", "--predict-flags=--tta")
    args = train.parse_args(command[2:])
    assert (args.compile, args.epochs, args.seed) == ("default", 3, 7)
    assert evaluate[2] == "--tta" and evaluate[3] == "--checkpoint"
    _, evaluate = commands("--predict-flags=")
    assert evaluate[2] == "--checkpoint"


def test_make_demo_names_one_run_for_training_and_evaluation(tmp_path: Path):
    """``make demo`` trains into checkpoints/$(RUN) and evaluates that run's best.pth: RUN, a date, is worked out once.
    Expanded at each use, a clock that ticked between them made predict.py look for a run that does not exist."""
    import subprocess

    ticks = tmp_path / "bin" / "date"
    ticks.parent.mkdir()
    ticks.write_text(f'#!/bin/sh\necho x >> {tmp_path / "calls"}\nwc -l < {tmp_path / "calls"} | tr -d " "\n')
    ticks.chmod(0o755)  # a clock that moves at every call
    done = subprocess.run(["make", "-n", "demo"], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PATH": f"{ticks.parent}:{os.environ['PATH']}"})
    assert done.returncode == 0, done.stderr
    names = set(re.findall(r"--name (\S+)|checkpoints/([^/\s]+)/", done.stdout))
    assert {n for pair in names for n in pair if n} == {"demo_1"}, done.stdout


def test_make_demo_alternate_runs_the_second_set_s_recipe_whose_flags_the_benchmark_takes():
    """``make demo-alternate`` passes ALTERNATE_FLAGS to the benchmark: they name the second set and pass its up-front
    checks (parse_args exits 2 on a flag train.py, predict.py or parameters.json would refuse)."""
    from benchmarks import time_to_accuracy

    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^demo-alternate:.*\n\t.*-m benchmarks\.time_to_accuracy --skip-setup \$\(ALTERNATE_FLAGS\)$",
                     makefile, re.MULTILINE)
    args = time_to_accuracy.parse_args(["--skip-setup", *time_to_accuracy.demo_flags("ALTERNATE_FLAGS")])
    assert args.generator == "alternate" and time_to_accuracy.TARGET_SECONDS[args.generator] == 600.0
    assert (args.epochs, args.batch_size, args.compile, args.foreground_fraction, args.loss) == \
        (12, 8, "default", 0.75, "dice_ce")


def test_time_to_accuracy_stages_compile_into_a_cache_of_their_own(tmp_path: Path, monkeypatch):
    """--compile is timed from scratch in every run: a shared inductor cache, warm from an earlier run, would count a
    fraction of the compilation a fresh machine pays."""
    from benchmarks import time_to_accuracy

    first = time_to_accuracy.stage_environment(tmp_path / "a")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as apply_threads sets it for --threads 1
    second = time_to_accuracy.stage_environment(tmp_path / "b")
    assert first["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "a" / "inductor_cache")
    assert second["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "b" / "inductor_cache")
    assert second["OMP_NUM_THREADS"] == "1" and first["PYTHONPATH"].split(os.pathsep)[0] == str(REPO)


def test_time_to_accuracy_refuses_compile_without_a_cpp_compiler_before_any_stage(monkeypatch):
    """make demo-alternate compiles: without g++ or clang++ it failed in the train stage, after generating and
    cutting the data, in a traceback around train.py's log."""
    import train
    from benchmarks import time_to_accuracy

    monkeypatch.setattr(train.shutil, "which", lambda name: None)
    problem = time_to_accuracy.stage_flag_error("train.py", ["--compile", "default"])
    assert problem is not None and "--compile default" in problem and "C++ compiler" in problem
    assert time_to_accuracy.stage_flag_error("train.py", ["--compile", "off"]) is None


@pytest.mark.parametrize("flags,expected", [(["--predict-flags", "--tta"], ["--tta"]),
                                            (["--predict-flags", "--tta --blend mean", "--epochs", "2"],
                                             ["--tta", "--blend", "mean"]),
                                            (["--predict-flags=--tta"], ["--tta"]), (["--predict-flags", ""], [])])
def test_time_to_accuracy_takes_predict_flags_with_or_without_an_equals_sign(flags, expected):
    """``--predict-flags --tta`` ended in argparse's "expected one argument": a value starting with - read as a
    flag."""
    from benchmarks import time_to_accuracy

    assert time_to_accuracy.predict_flags(time_to_accuracy.parse_args(["--tiny", *flags])) == expected


@pytest.mark.parametrize("flags,expected", [([], (1, 4, 8)), (["--epochs", "2", "--batch-size", "4"], (2, 4, 4))])
def test_time_to_accuracy_tiny_keeps_the_flags_given(flags, expected):
    """--tiny replaced --epochs 2 by 1 (and --width, --batch-size), so a run labelled 2 epochs trained one."""
    from benchmarks import time_to_accuracy

    args = time_to_accuracy.parse_args(["--tiny", *flags])
    assert (args.epochs, args.width, args.batch_size) == expected
    command = time_to_accuracy.train_flags(args)
    assert command[-6:] == ["-e", str(expected[0]), "-b", str(expected[2]), "--base-channels", str(expected[1])]


@pytest.mark.parametrize("flags,message", [
    (["--predict-flags=--blend nope"], "the flags for predict.py (--blend nope): argument --blend: invalid choice"),
    (["--predict-flags=--bogus"], "the flags for predict.py (--bogus): unrecognized arguments: --bogus"),
    (["--warmup-fraction", "x"], "argument --warmup-fraction: invalid float value"),
    (["--predict-flags=--overlap 2"], "inference.overlap: expected a number in [0, 0.95], got 2.0"),
    (["--warmup-fraction", "1.5"], "training.warmup_fraction: expected a number in [0"),
    (["--predict-flags=--checkpoint=x --tta"], "the flags for predict.py (--checkpoint=x --tta): --checkpoint is set "
                                               "by the benchmark"),
    (["--predict-flags=--help"], "the flags for predict.py (--help): asks for help (expected flags for a run)"),
    (["--n-training", "0"], "data.n_training: expected an integer >= 1, got 0"),
    (["--per-image", "0"], "patches.per_image: expected an integer >= 1, got 0"),
    (["--foreground-fraction", "1.5"], "patches.foreground_fraction: expected a number in [0, 1], got 1.5"),
    (["--workdir", "{taken}"], "not empty (expected a new or empty folder"),
    (["--workdir", "{taken}/file"], "file (expected a new or empty folder)"),
])
def test_time_to_accuracy_refuses_bad_flags_and_a_used_workdir_before_any_stage(tmp_path: Path, flags, message):
    """A bad flag or value for predict.py or train.py failed after generate, prepare and train (minutes with the
    demo's recipe), with a traceback; a reused --workdir failed in generate; a flag the benchmark sets itself was
    overridden silently. All are refused up front, exit 2, naming the flag."""
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "data").mkdir()
    (tmp_path / "taken" / "file").write_text("")
    done = run_cli("-m", "benchmarks.time_to_accuracy", "--tiny", "--out-dir", str(tmp_path / "res"),
                   *[f.format(taken=tmp_path / "taken") for f in flags])
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert message in done.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "res").exists() and "== time to accuracy" not in done.stdout  # nothing ran


@pytest.mark.parametrize("flags,expected", [([], (48, 3, 4, 0.0)),
                                            (["--patch-size", "32", "--per-image", "5", "--n-training", "6",
                                              "--foreground-fraction", "0.5"], (32, 5, 6, 0.5))])
def test_time_to_accuracy_data_flags_win_over_the_tiny_sizes(tmp_path: Path, flags, expected):
    """--tiny applied its own patch size after --patch-size, so a run labelled 32 px cut 48-px patches; the patch
    and image counts asked for are written as given."""
    from benchmarks import time_to_accuracy

    args = time_to_accuracy.parse_args(["--tiny", *flags])
    time_to_accuracy.write_params(tmp_path, tiny=True, patches=time_to_accuracy.patch_settings(args),
                                  n_training=args.n_training)
    raw = json.loads((tmp_path / "params.json").read_text())
    assert (raw["patches"]["size"], raw["patches"]["per_image"], raw["data"]["n_training"],
            raw["patches"]["foreground_fraction"]) == expected


def test_patch_loading_tiny(tmp_path: Path):
    """8-bit PNG and 4-channel uint16 TIFF patch folders load through PatchDataset, in their dtype, in a worker."""
    from benchmarks import patch_loading

    assert patch_loading.main(["--tiny", "--out-dir", str(tmp_path)]) == 0
    result = read_result(tmp_path, "patch_loading")
    eight, sixteen = result["results"]
    assert (eight["dtype"], eight["channels"]) == ("torch.uint8", 1)
    assert (sixteen["dtype"], sixteen["channels"]) == ("torch.uint16", 4)
    assert eight["patches"] == sixteen["patches"] == 4 * 2 * 4
    for r in result["results"]:
        assert r["load_s"]["min"] > 0 and r["step_ms"]["min"] > 0


def test_large_images_tiny(tmp_path: Path):
    """Two sizes streamed by predict.py's route in fresh processes, and MONAI's zarr route at a third size (as in
    make bench), beside ours at that size, which the targets leave out: the window grids coincide, so the labels
    agree everywhere."""
    result = run_cli("-m", "benchmarks.large_images", "--tiny", "--threads", "1", "--out-dir", str(tmp_path),
                     env={"OMP_NUM_THREADS": "1"}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    result = read_result(tmp_path, "large_images")
    ours = [r for r in result["runs"] if r["route"] == "ours"]
    (monai,) = [r for r in result["runs"] if r["route"] == "MONAI"]
    assert [(r["shape"], r["scaling"]) for r in ours] == [([96, 1008], False), ([192, 1008], True),
                                                          ([288, 1008], True)]
    assert monai["shape"] == ours[0]["shape"] and monai["agreement"] == 1.0
    assert result["targets"]["speed_spread_max"] == pytest.approx(abs(ours[2]["speed_vs_first"]))
    assert "speed_vs_first" not in ours[0]
    for r in result["runs"]:
        assert r["seconds"] > 0 and r["peak_rss"] >= r["idle_rss"] > 0 and r["hwm_reset"]
    assert {"above_idle_max", "above_idle_met", "speed_spread_max", "speed_met"} <= set(result["targets"])


def test_folding_tiny(tmp_path: Path):
    from benchmarks import folding

    assert folding.main(["--tiny", "--out-dir", str(tmp_path)]) == 0
    result = read_result(tmp_path, "folding")
    (width,) = result["results"]
    assert {"min_s", "median_s", "times_s"} <= set(width["kept"]) and width["speedup"] > 0
    # the same probabilities up to rounding, from BatchNorms that do work; the precision is bf16 on a CPU with
    # native bf16 (3 significant digits), fp32 elsewhere
    assert 0 < width["max_abs_diff"] < {"fp32": 1e-5, "bf16": 2e-2}[result["precision"]]


def test_hardware_tiny(tmp_path: Path):
    """Peak matmuls and the U-Net's counted work: a training step costs more than a forward pass of its batch."""
    from benchmarks import hardware

    assert hardware.main(["--tiny", "--threads", "1", "--out-dir", str(tmp_path)]) == 0
    result = read_result(tmp_path, "hardware")
    bf16 = result["peak_flops"]["bf16"]
    assert result["peak_flops"]["fp32"] > 0 and (bf16 is None or bf16 > 0)  # None: no native bf16 on this CPU
    (r,) = result["results"]
    assert r["width"] == 4 and r["train_gflop_per_patch"] > 0 and r["inference_gflop"] > 0
    assert 0 < r["train_fraction"] and 0 < r["inference_fraction"]
    assert r["train_tflops"] * 1e12 == pytest.approx(r["train_fraction"] * result["peak_used"], rel=1e-9)


NO_CUDA = "error: --device cuda: no CUDA device is available (--device cpu"
# (id, benchmark, its flags, the start of its one-line refusal, whether it holds only without a GPU)
REFUSED_FLAGS = [
    # gpu_step's default device: without a GPU, one line and the way out, not the driver's traceback
    ("gpu-step-default-cuda", "gpu_step", ["--tiny"], NO_CUDA, True),
    ("overhead-cuda", "overhead", ["--device", "cuda", "--megapixels", "0.08"], NO_CUDA, True),
    ("folding-cuda", "folding", ["--device", "cuda"], NO_CUDA, True),
    ("hardware-cuda", "hardware", ["--device", "cuda"], NO_CUDA, True),
    ("gpu-step-unknown-variant", "gpu_step", ["--device", "cpu", "--variants", "bogus"],
     "error: argument --variants: invalid choice: 'bogus'", False),
    # flags a benchmark does not honour are not offered (they were accepted, then ignored)
    ("large-images-repeats", "large_images", ["--repeats", "3"], "error: unrecognized arguments: --repeats 3", False),
    ("bit-depth-warmup", "bit_depth", ["--warmup", "2"], "error: unrecognized arguments: --warmup 2", False),
    ("gpu-step-repeats", "gpu_step", ["--device", "cpu", "--repeats", "3"],
     "error: unrecognized arguments: --repeats 3", False),
    # not taken for an abbreviation of --warmup-fraction, which changed the recipe without a word
    ("time-to-accuracy-warmup", "time_to_accuracy", ["--warmup", "0.5"],
     "error: unrecognized arguments: --warmup 0.5", False),
    # sizes below one row of windows were silently rounded up to it, two of them to one image
    ("large-images-too-small", "large_images", ["--megapixels", "0.1"],
     "error: --megapixels 0.1: below the smallest image, 0.77 MP (96×8016)", False),
    ("large-images-monai-too-small", "large_images", ["--monai-at", "0.5"],
     "error: --monai-at 0.5: below the smallest image", False),
    ("large-images-same-image", "large_images", ["--megapixels", "8", "8.1"],
     "error: --megapixels 8 8.1: two sizes give the same image", False),
]


@pytest.mark.parametrize("case", REFUSED_FLAGS, ids=[c[0] for c in REFUSED_FLAGS])
def test_bad_benchmark_flags_are_refused_in_one_line(case, capsys):
    _, name, flags, message, without_gpu = case
    if without_gpu and torch.cuda.is_available():
        pytest.skip("refused only without a CUDA device")
    module = importlib.import_module(f"benchmarks.{name}")
    with pytest.raises(SystemExit) as stop:
        module.main(flags)
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and "\n" not in err and err.startswith(message), err


@pytest.mark.skipif(torch.cuda.is_available(), reason="refused only without a CUDA device")
@pytest.mark.parametrize("script", ["gpu_check.sh", "gpu_tests.sh", "gpu_stitching.sh"])
@pytest.mark.parametrize("linked", [False, True])
def test_the_gpu_scripts_stop_in_one_line_without_cuda_before_writing(script, linked, tmp_path: Path):
    """gpu_check.sh went on without a GPU: it replaced data/ and trained the width-64 model on the CPU. Run through a
    link, the check beside the script must still be found (a missing one let the script go on)."""
    path = REPO / "benchmarks" / script
    if linked:
        (tmp_path / "bin").mkdir()
        (tmp_path / "bin" / script).symlink_to(path)
        path = tmp_path / "bin" / script
    result = subprocess.run(["bash", str(path), str(tmp_path / "out")], cwd=tmp_path,
                            env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip() == f"error: {path} needs a CUDA device, and torch ({sys.executable}) sees none"
    assert sorted(p.name for p in tmp_path.iterdir()) == (["bin"] if linked else [])


def test_make_figures_without_a_trained_run_says_what_to_do(tmp_path: Path):
    """Without a checkpoint ``make figures`` ended in argparse's usage block about an empty --checkpoint."""
    import shutil
    import subprocess

    for name in ("Makefile", "requirements.txt"):
        shutil.copy(REPO / name, tmp_path / name)
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / ".installed").touch()
    done = subprocess.run(["make", "figures"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode != 0
    assert "error: no checkpoints/*/best.pth: run make demo first, or pass CHECKPOINT=PATH" in done.stderr
    assert "usage:" not in done.stderr


def test_gpu_step_tiny_on_cpu(tmp_path: Path):
    """The step benchmark's variants run train.py's own step: from the same weights and batches, the old loop and the
    new one (losses read in blocks, the optimiser of train.py) reach the same loss on CPU."""
    from benchmarks import gpu_step

    assert gpu_step.main(["--tiny", "--device", "cpu", "--variants", "sync", "fused", "--out-dir", str(tmp_path)]) == 0
    result = read_result(tmp_path, "gpu_step")
    sync, fused = result["results"]
    assert (sync["variant"], fused["variant"]) == ("sync", "fused")
    assert sync["last_loss"] == fused["last_loss"] and math.isfinite(sync["last_loss"])
    assert all(r["ms_per_step"] > 0 and r["published_s"] > 0 for r in result["results"])
