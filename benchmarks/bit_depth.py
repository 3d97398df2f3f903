"""Bit depth: the synthetic benchmark stored as 12-bit values in a narrow band reaches the 8-bit set's test mIoU.

    python -m benchmarks.bit_depth [--epochs 8] [--lr 0.05] [--width 8] [--batch-size 16] [--tiny]

One synthetic data set (``python -m lib.generate``) is written three ways, then each goes through the real commands
(``lib.prepare``, ``train.py``, ``predict.py --masks``) with the same settings:

* ``8-bit``: the generated 8-bit PNGs (the control);
* ``12-bit``: the same pixels as 12-bit values in a narrow band, ``2000 + 4·v`` (2000..3020 of 0..4095), stored in
  16-bit PNGs, with 16-bit index masks: the data of a 12-bit camera that uses a quarter of its range;
* ``12-bit >> 8``: what the reader made of the 12-bit set before it kept the dtype (``value >> 8``: 5 gray levels).

``2000 + 4·v`` is an affine map of the 8-bit values, so it carries exactly their information, and the z-score
normalisation removes it: the 12-bit set should reach the 8-bit set's test mIoU. Target: within 0.01.
All output goes to a temporary folder. Not part of run_all (it trains three models: about 18 minutes on 2 cores).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import REPO, apply_threads, base_parser, format_table, print_header, verdict, write_json

TARGET_DELTA = 0.01
BAND_OFFSET, BAND_GAIN = 2000, 4  # 12-bit values 2000..3020: a quarter of 0..4095
VARIANTS = ("8-bit", "12-bit", "12-bit >> 8")
TINY_DATA = {"height": 120, "width": 72, "line_length": [20, 72], "n_training": 6, "n_test": 2}


def to_twelve_bit(image: np.ndarray) -> np.ndarray:
    """8-bit values into the narrow 12-bit band ``2000 + 4·v`` (uint16)."""
    return (BAND_OFFSET + BAND_GAIN * image.astype(np.uint16)).astype(np.uint16)


def shifted_to_eight_bit(image: np.ndarray) -> np.ndarray:
    """The old reader's conversion of 16-bit gray: ``value >> 8``."""
    return (image >> 8).astype(np.uint8)


def write_variant(src: Path, dst: Path, variant: str) -> None:
    """Copy a generated split (``images/``, ``masks/``) as one of :data:`VARIANTS` (16-bit index masks for 12-bit)."""
    for sub in ("images", "masks"):
        (dst / sub).mkdir(parents=True, exist_ok=True)
    for path in sorted((src / "images").glob("*.png")):
        image = np.asarray(Image.open(path))
        mask = np.asarray(Image.open(src / "masks" / path.name))
        if variant == "8-bit":
            shutil.copy(path, dst / "images" / path.name)
            shutil.copy(src / "masks" / path.name, dst / "masks" / path.name)
            continue
        twelve = to_twelve_bit(image)
        stored = twelve if variant == "12-bit" else shifted_to_eight_bit(twelve)
        Image.fromarray(stored).save(dst / "images" / path.name)
        Image.fromarray(mask.astype(np.uint16) if variant == "12-bit" else mask).save(dst / "masks" / path.name)


def gray_levels(folder: Path) -> int:
    """The number of distinct values over all images of a folder."""
    values = set()
    for path in (folder / "images").glob("*.png"):
        values.update(np.unique(np.asarray(Image.open(path))).tolist())
    return len(values)


def run(cmd: list[str]) -> float:
    tic = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-3000:]}")
    return time.perf_counter() - tic


def run_variant(work: Path, params: Path, variant: str, args) -> dict:
    """prepare → train → predict on one variant; its test mIoU and the seconds of each stage."""
    py, root = sys.executable, work / variant.replace(" ", "").replace(">>", "_shr")
    for split in ("images_training", "images_test"):
        write_variant(work / "data" / split, root / split, variant)
    name = root.name
    seconds = {
        "prepare": run([py, "-m", "lib.prepare", "--params", str(params), "--src", str(root / "images_training"),
                        "--out", str(root / "patches")]),
        "train": run([py, "train.py", "--params", str(params), "-f", str(root / "patches"), "-e", str(args.epochs),
                      "-l", str(args.lr), "-b", str(args.batch_size), "--base-channels", str(args.width),
                      "--name", name, *(["--precision", args.precision] if args.precision else [])]),
    }
    metrics = root / "metrics.json"
    seconds["evaluate"] = run([py, "predict.py", "--checkpoint", str(work / "checkpoints" / name / "best.pth"),
                               "--input", str(root / "images_test" / "images"), "--masks",
                               str(root / "images_test" / "masks"), "--output", str(root / "predictions"),
                               "--metrics", str(metrics), "--quiet",
                               *(["--precision", args.precision] if args.precision else [])])
    result = json.loads(metrics.read_text())
    image = np.asarray(Image.open(next((root / "images_training" / "images").glob("*.png"))))
    return {"variant": variant, "dtype": image.dtype.name, "gray_levels": gray_levels(root / "images_training"),
            "test_miou": result["miou"], "iou": result["iou"], "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__, repeats=False, warmup=False)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default=None)
    p.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it (default: a temporary one)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {', '.join(VARIANTS)}")
    args = p.parse_args(argv)
    if args.tiny:
        args.epochs = min(args.epochs, 2)
    apply_threads(args.threads)
    print_header("bit depth: 8-bit control, 12-bit narrow band, and the old >> 8 conversion")
    work = Path(tempfile.mkdtemp(prefix="bit_depth_")) if args.keep is None else args.keep
    try:
        raw = json.loads((REPO / "parameters.json").read_text())
        raw["data"]["root"] = str(work / "data")
        raw["training"].update(checkpoints_dir=str(work / "checkpoints"), runs_dir=str(work / "runs"))
        if args.tiny:
            raw["data"].update(TINY_DATA)
            raw["patches"].update(size=48, per_image=3)
            raw["training"].update(val_fraction=0.25, figure_patches=0)
            raw["inference"].update(batch_size=8)
        params = work / "params.json"
        params.parent.mkdir(parents=True, exist_ok=True)
        params.write_text(json.dumps(raw, indent=1))
        run([sys.executable, "-m", "lib.generate", "--params", str(params)])
        chosen = [v for v in VARIANTS if v in args.variants.split(",")]
        if chosen[:2] != ["8-bit", "12-bit"]:
            raise SystemExit(f"--variants {args.variants}: expected 8-bit and 12-bit among {', '.join(VARIANTS)}")
        results = [run_variant(work, params, v, args) for v in chosen]
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    delta = abs(results[1]["test_miou"] - results[0]["test_miou"])
    print(format_table(["data", "stored as", "gray levels", "test mIoU", "train s"],
                       [[r["variant"], r["dtype"], r["gray_levels"], round(r["test_miou"], 4),
                         round(r["seconds"]["train"], 1)] for r in results]))
    met = verdict(delta, TARGET_DELTA, higher_is_better=False)
    print(f"|12-bit - 8-bit| test mIoU = {delta:.4f} (target <= {TARGET_DELTA}): {met}")
    path = write_json("bit_depth", {"settings": {k: v for k, v in vars(args).items() if k != "out_dir"},
                                    "results": results, "delta": delta,
                                    "target": {"delta_max": TARGET_DELTA, "met": met == "met"}}, args.out_dir)
    print(f"results in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
