"""Time to accuracy of the CPU demo: wall time of each ``make demo`` stage and the test mIoU reached.

    python -m benchmarks.time_to_accuracy [--skip-setup] [--epochs E] [--lr L] [--width W] [--batch-size B]
        [--generator default|alternate] [--schedule published|cosine] [--warmup-fraction F] [--loss ce|dice_ce]
        [--optimizer sgd|adamw] [--compile MODE] [--seed N] [--n-training N] [--per-image N] [--patch-size P]
        [--foreground-fraction F]
        [--predict-flags "..."]

The demo's own settings come from the Makefile (``DEMO_TRAIN_FLAGS``, ``DEMO_PREDICT_FLAGS``), their one home; a flag
given here is passed after them and wins. Stages, each a fresh process as ``make demo`` runs them, all output in a
temporary folder (nothing of the repository's data/, checkpoints/ or runs/ is touched):

* setup: ``python -m venv`` and ``pip install -r requirements.txt`` into a new virtual environment (about 1.5 min;
  ``--skip-setup`` leaves it out; the later stages run with this interpreter either way);
* generate: ``python -m lib.generate``; prepare: ``python -m lib.prepare``;
* train: ``python train.py DEMO_TRAIN_FLAGS [the flags given]`` on the patches (``--compile`` counts its
  compilation from scratch: each run has an inductor cache of its own, empty at the start);
* evaluate: ``python predict.py DEMO_PREDICT_FLAGS`` (or ``--predict-flags``) on the test images with their masks,
  giving the test mIoU.

Targets: test mIoU ≥ 0.98 within 150 s on our set (``--skip-setup``; ``make demo``'s recipe), and within 600 s on
the second set (``--generator alternate``; ``make demo-alternate`` runs it with the Makefile's ``ALTERNATE_FLAGS``);
both count the stages from generate to evaluate, without the set-up (the issue's definition), which is timed and
shown apart when it runs. Not part of run_all.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import (
    REPO,
    apply_threads,
    base_parser,
    child_env,
    format_table,
    print_header,
    verdict,
    write_json,
)
from lib.core.device import select_device
from lib.core.errors import UserError
from lib.core.params import COMPILE_MODES, GENERATORS, LOSSES, OPTIMIZERS, SCHEDULES, load_params, params_from_dict

TARGET_MIOU = 0.98
# seconds from generate to evaluate (no set-up): our set in 150 s (make demo), the second set in 600 s
TARGET_SECONDS = {"default": 150.0, "alternate": 600.0}
TINY_DATA = {"height": 120, "width": 72, "line_length": [20, 72], "n_training": 4, "n_test": 2}
TINY_PATCHES = {"size": 48, "per_image": 3}


def benchmark_params(work: Path, tiny: bool, generator: str = "default", patches: dict | None = None,
                     n_training: int | None = None) -> dict:
    """parameters.json's settings with the data root, checkpoints and runs inside ``work``, the synthetic
    ``generator``, the ``patches`` settings and the number of training images given, and tiny sizes when asked."""
    raw = json.loads((REPO / "parameters.json").read_text())
    raw["data"].update(root=str(work / "data"), generator=generator)
    raw["training"].update(checkpoints_dir=str(work / "checkpoints"), runs_dir=str(work / "runs"))
    if tiny:
        raw["data"].update(TINY_DATA)
        raw["patches"].update(TINY_PATCHES)
        raw["training"].update(val_fraction=0.25, figure_patches=0)
        raw["inference"].update(batch_size=8)
    raw["patches"].update(patches or {})  # the settings asked for win over the tiny ones
    if n_training is not None:
        raw["data"].update(n_training=n_training)
    return raw


def write_params(work: Path, tiny: bool, generator: str = "default", patches: dict | None = None,
                 n_training: int | None = None) -> Path:
    """:func:`benchmark_params` written to ``work/params.json``."""
    path = work / "params.json"
    path.write_text(json.dumps(benchmark_params(work, tiny, generator, patches, n_training), indent=1))
    return path


def demo_flags(variable: str) -> list[str]:
    """The flags of the Makefile's ``VARIABLE ?= ...`` line (``make demo`` passes ``DEMO_TRAIN_FLAGS`` to train.py
    and ``DEMO_PREDICT_FLAGS`` to predict.py, ``make demo-alternate`` ``ALTERNATE_FLAGS`` to this benchmark): the
    recipes have that one home."""
    found = re.search(rf"^{variable} \?=(.*)$", (REPO / "Makefile").read_text(), re.MULTILINE)
    if found is None:
        raise RuntimeError(f"Makefile: no '{variable} ?=' line")
    return shlex.split(found.group(1))


# this benchmark's flags that train.py takes, and train.py's name for each
TRAIN_FLAGS = {"epochs": "-e", "lr": "-l", "batch_size": "-b", "width": "--base-channels", "schedule": "--schedule",
               "warmup_fraction": "--warmup-fraction", "loss": "--loss", "optimizer": "--optimizer",
               "compile": "--compile", "seed": "--seed"}


def train_flags(args) -> list[str]:
    """The demo's train.py flags, then those given here (argparse keeps the last of a repeated flag)."""
    given = [[flag, str(getattr(args, key))] for key, flag in TRAIN_FLAGS.items() if getattr(args, key) is not None]
    return demo_flags("DEMO_TRAIN_FLAGS") + [word for pair in given for word in pair]


def predict_flags(args) -> list[str]:
    """The demo's predict.py flags, or ``--predict-flags`` instead when given."""
    return demo_flags("DEMO_PREDICT_FLAGS") if args.predict_flags is None else shlex.split(args.predict_flags)


def stage_commands(args, work: Path, params: Path) -> dict[str, list[list[str]]]:
    """The command lines of every stage, in order."""
    py, data = sys.executable, work / "data"
    patches = data / load_params(params).patches.folder
    ckpt_dir = work / "checkpoints" / args.name
    commands = {
        "generate": [[py, "-m", "lib.generate", "--params", str(params), "--out", str(data)]],
        "prepare": [[py, "-m", "lib.prepare", "--params", str(params), "--src", str(data / "images_training"),
                     "--out", str(patches)]],
        "train": [[py, "train.py", *train_flags(args), "-f", str(patches.resolve()), "--name", args.name,
                   "--params", str(params)]],
        "evaluate": [[py, "predict.py", *predict_flags(args), "--checkpoint", str(ckpt_dir / "best.pth"), "--input",
                      str(data / "images_test" / "images"), "--masks", str(data / "images_test" / "masks"),
                      "--output", str(work / "predictions"), "--metrics", str(work / "metrics.json"), "--quiet"]],
    }
    if not args.skip_setup:
        venv = work / "venv"
        commands = {"setup": [[py, "-m", "venv", str(venv)],
                              [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "-r",
                               str(REPO / "requirements.txt")]], **commands}
    return commands


def stage_environment(work: Path) -> dict[str, str]:
    """The environment of every stage: this process's (with ``OMP_NUM_THREADS``, torch's intra-op threads, where
    ``--threads`` set it, see :func:`benchmarks.common.apply_threads`), the repository importable, and an inductor
    cache of the run's own inside ``work``, so that ``--compile`` always counts a compilation from scratch, as on a
    fresh machine, however many runs came before."""
    return child_env(TORCHINDUCTOR_CACHE_DIR=str(work / "inductor_cache"))


def run_stage(name: str, commands: list[list[str]], log: Path, env: dict[str, str]) -> float:
    """Run a stage's commands from the repository root in ``env``; return the wall time. Raises on failure, with the
    log."""
    tic = time.perf_counter()
    with log.open("w") as handle:
        for cmd in commands:
            done = subprocess.run(cmd, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT)
            if done.returncode != 0:
                tail = log.read_text()[-3000:]
                raise RuntimeError(f"stage {name} failed ({' '.join(cmd)}), exit {done.returncode}:\n{tail}")
    return time.perf_counter() - tic


def joined_predict_flags(argv: list[str]) -> list[str]:
    """``--predict-flags VALUE`` as ``--predict-flags=VALUE``: argparse takes a value that starts with ``-``
    (``--predict-flags --tta``) for a flag of its own and stops with "expected one argument"."""
    joined, words = [], iter(argv)
    for word in words:
        value = next(words, None) if word == "--predict-flags" else None
        joined.append(word if value is None else f"{word}={value}")
    return joined


def parse_args(argv: list[str] | None):
    p = base_parser(__doc__, repeats=False, warmup=False)
    p.add_argument("--skip-setup", action="store_true", help="leave out the virtual environment stage")
    demo = "(default: the demo's, DEMO_TRAIN_FLAGS in the Makefile, else parameters.json's)"
    p.add_argument("--epochs", type=int, help=f"-e {demo}")
    p.add_argument("--lr", type=float, help=f"learning rate, -l {demo}")
    p.add_argument("--width", type=int, help=f"U-Net base channels, --base-channels {demo}")
    p.add_argument("--batch-size", type=int, help=f"-b {demo}")
    p.add_argument("--name", default="tta", help="run name (inside the temporary folder)")
    p.add_argument("--generator", choices=GENERATORS, default="default",
                   help="synthetic data set: ours, or the second one drawn by independent code (data.generator)")
    p.add_argument("--schedule", choices=SCHEDULES, help=f"training.schedule {demo}")
    p.add_argument("--warmup-fraction", type=float, help=f"training.warmup_fraction (cosine schedule) {demo}")
    p.add_argument("--loss", choices=LOSSES, help=f"training.loss {demo}")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help=f"training.optimizer {demo}")
    p.add_argument("--compile", choices=COMPILE_MODES, help=f"training.compile (torch.compile mode) {demo}")
    p.add_argument("--seed", type=int, help=f"training.seed {demo}: initialisation, validation split and "
                   "shuffling; the data stay the same")
    p.add_argument("--predict-flags", help="predict.py's flags instead of the demo's DEMO_PREDICT_FLAGS, quoted as "
                   "one word: --predict-flags '--tta --blend mean' (--predict-flags '' for none)")
    p.add_argument("--n-training", type=int, default=None,
                   help="training images generated, data.n_training (default: parameters.json's)")
    p.add_argument("--per-image", type=int, default=None, help="patches.per_image (default: parameters.json's)")
    p.add_argument("--patch-size", type=int, default=None, help="patches.size (default: parameters.json's)")
    p.add_argument("--foreground-fraction", type=float, default=None,
                   help="patches.foreground_fraction (default: parameters.json's)")
    p.add_argument("--workdir", type=Path, default=None, help="keep everything in this (new) folder")
    args = p.parse_args(joined_predict_flags(sys.argv[1:] if argv is None else argv))
    if args.tiny:  # tiny sizes where no flag asks otherwise
        args.skip_setup = True
        args.epochs, args.width, args.batch_size = args.epochs or 1, args.width or 4, args.batch_size or 8
    if args.workdir is not None and args.workdir.exists():
        if not args.workdir.is_dir():
            p.error(f"--workdir {args.workdir}: a file (expected a new or empty folder)")
        if any(args.workdir.iterdir()):
            p.error(f"--workdir {args.workdir}: not empty (expected a new or empty folder; the stages refuse to mix "
                    "into an earlier run's data)")
    try:  # the data and patch settings, checked as parameters.json's are
        params_from_dict(benchmark_params(Path("."), args.tiny, args.generator, patch_settings(args),
                                          args.n_training))
    except UserError as err:
        p.error(str(err))
    for script, flags in (("train.py", train_flags(args)), ("predict.py", predict_flags(args))):
        problem = stage_flag_error(script, flags)
        if problem:
            p.error(f"the flags for {script} ({shlex.join(flags)}): {problem}")
    return args


# the flags each stage gets from the benchmark itself: given again, they would be overridden without a word
OWN_FLAGS = {"train.py": {"-f", "--folder", "--name", "--params", "--load"},
             "predict.py": {"--checkpoint", "--input", "--output", "--masks", "--metrics", "--quiet"}}


def stage_flag_error(script: str, flags: list[str]) -> str | None:
    """What train.py or predict.py would say of ``flags`` (its parser's error line, or a value out of range as
    parameters.json's checks name it), or None when it takes them: checked before any stage runs, rather than after
    minutes of training."""
    import predict
    import train

    own = sorted({flag.split("=")[0] for flag in flags} & OWN_FLAGS[script])
    if own:
        return f"{', '.join(own)} is set by the benchmark"
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said), contextlib.redirect_stdout(io.StringIO()):
            if script == "train.py":
                training = train.resolve_params(train.parse_args(flags), None).training
                train.check_compiler(training.compile, select_device(training.device))
            else:
                args = predict.parse_args([*flags, "--checkpoint", "c", "--input", "i", "--output", "o"])
                predict.with_inference_flags(load_params(None), args)
    except SystemExit:  # an argparse error line, or --help / --version, which print and exit without one
        lines = said.getvalue().strip().splitlines()
        return lines[-1].split("error: ", 1)[-1] if lines else "asks for help (expected flags for a run)"
    except UserError as err:
        return str(err)
    return None


def patch_settings(args) -> dict:
    """The ``patches`` settings the flags ask for (``--per-image``, ``--patch-size``, ``--foreground-fraction``)."""
    return {key: value for key, value in (("per_image", args.per_image), ("size", args.patch_size),
                                          ("foreground_fraction", args.foreground_fraction)) if value is not None}


def run(args, work: Path) -> dict:
    params = write_params(work, args.tiny, args.generator, patch_settings(args), args.n_training)
    seconds = {}
    for name, commands in stage_commands(args, work, params).items():
        seconds[name] = run_stage(name, commands, work / f"{name}.log", stage_environment(work))
        print(f"  {name}: {seconds[name]:.1f} s", flush=True)
    metrics = json.loads((work / "metrics.json").read_text())
    return {"generator": args.generator, "seconds": seconds, "total_s": sum(seconds.values()),
            "total_without_setup_s": sum(v for k, v in seconds.items() if k != "setup"),
            "test_miou": metrics["miou"], "test_mean_image_miou": metrics.get("mean_image_miou"),
            "test_iou": metrics.get("iou")}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    apply_threads(args.threads)  # recorded in the header, and passed on to the stages
    print_header(f"time to accuracy: make demo stages{', tiny data' if args.tiny else ''}; train.py "
                 f"{shlex.join(train_flags(args))}; predict.py {shlex.join(predict_flags(args)) or '(no flags)'}")
    work = Path(tempfile.mkdtemp(prefix="tta_")) if args.workdir is None else args.workdir
    work.mkdir(parents=True, exist_ok=True)
    try:
        result = run(args, work)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    target_s = TARGET_SECONDS[args.generator]
    counted = result["total_without_setup_s"]
    met = result["test_miou"] >= TARGET_MIOU and counted <= target_s
    rows = [[name, s] for name, s in result["seconds"].items()] + [["total", result["total_s"]]]
    if "setup" in result["seconds"]:
        rows.append(["total without set-up", counted])
    print(format_table(["stage", "seconds"], rows))
    print(f"test mIoU {result['test_miou']:.4f} (target ≥{TARGET_MIOU}: "
          f"{verdict(result['test_miou'], TARGET_MIOU)}); {counted:.0f} s without set-up "
          f"(target ≤{target_s:.0f} s on the {args.generator} set: {verdict(counted, target_s, False)}); "
          f"{'met' if met else 'MISSED'}")
    settings = {k: v for k, v in vars(args).items() if k not in ("out_dir", "workdir")}
    settings.update(train_flags=train_flags(args), predict_flags=predict_flags(args))
    path = write_json("time_to_accuracy", {"settings": settings, **result, "target_miou": TARGET_MIOU,
                                           "target_seconds": target_s, "met": met}, args.out_dir)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
