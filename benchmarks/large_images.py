"""Large images: peak memory and time of predict.py's streaming route against the image size, and MONAI's
bounded-memory route (PatchInferer, SlidingWindowSplitter, ZarrAvgMerger) side by side on one image.

    python -m benchmarks.large_images [--megapixels 8 32 128 512] [--giga] [--monai-at 2] [--tiny] [--threads N]

Inputs are tiled (256²), zlib-compressed uint8 TIFFs of the synthetic benchmark's kind: a 2000×2000 mosaic of
generated images repeated over the plane. They have a fixed width of 8016 pixels, so they grow in height only;
``--giga`` adds one 1-gigapixel image, 24960 × 40080 (about 1.0 × 10⁹ pixels), which is done in five column blocks.
Sides are 96 + a multiple of 48, where the window grids of predict.py and MONAI coincide.

Each measurement runs in a fresh process: it loads the demo's U-Net (width 8, random weights: time and memory do not
depend on them) on the CPU in fp32, warms up on a small image, and notes its resident memory: the *idle process*,
torch imported and the model loaded. It resets the kernel's high-water mark (VmHWM) and segments the image with
predict.py's own ``segment_file`` (tiled BigTIFF mask, no probabilities). Reported: seconds, seconds per megapixel,
the peak RSS and the part of it above the idle process. Targets (issue 12): the part above idle stays ≤ 500 MB and
does not grow with the height; seconds per megapixel stay within 10% of the first size timed for it (8 MP by
default; the size timed beside MONAI stands apart).

MONAI's route holds the input as one float32 tensor (its ``SlidingWindowSplitter`` takes a tensor; its
``WSISlidingWindowSplitter`` with the TiffFile reader decodes the whole image for every patch in MONAI 1.6.1, and the
OpenSlide and cuCIM readers are not installed here), and averages on disk in zarr. Agreement is the fraction of
pixels with the same label. Where ``--monai-at`` is none of the sizes (``make bench``: 2 MP), ours runs at that size
too, beside MONAI, and that run is left out of the targets (which compare the sizes asked for).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import (
    REPO,
    apply_threads,
    base_parser,
    child_env,
    format_table,
    machine_info,
    peak_rss_bytes,
    print_header,
    reset_peak_rss,
    rss_bytes,
    write_json,
)

WIDTH = 8016  # 96 + 165 × 48
GIGA = (24960, 40080)  # 1.0004 × 10⁹ pixels, both sides 96 + a multiple of 48
TARGET_ABOVE_IDLE = 500e6
TARGET_SPEED_SPREAD = 0.10
MOSAIC = 2000


def aligned(n: float) -> int:
    """The nearest side of 96 + a multiple of 48 pixels (where the window grids of both routes coincide)."""
    return 96 + 48 * max(0, round((n - 96) / 48))


def shape_of(megapixels: float, width: int = WIDTH) -> tuple[int, int]:
    return aligned(megapixels * 1e6 / width), width


def mosaic() -> np.ndarray:
    """A 2000×2000 uint8 mosaic of synthetic benchmark images (gray lines and ellipses on noise)."""
    from lib.core.params import load_params
    from lib.core.synthetic import synthetic_pair

    p = load_params().data
    tiles = [synthetic_pair(np.random.default_rng([7, i]), p)[0]
             for i in range((MOSAIC // p.height) * (MOSAIC // p.width))]
    rows = [np.concatenate(tiles[r * (MOSAIC // p.width):(r + 1) * (MOSAIC // p.width)], axis=1)
            for r in range(MOSAIC // p.height)]
    return np.concatenate(rows)[:MOSAIC, :MOSAIC]


def write_input(path: Path, height: int, width: int, base: np.ndarray) -> None:
    """A tiled zlib uint8 TIFF of ``base`` repeated over height × width, written band by band."""
    from lib.core.imageio import write_tiled_tiff

    def bands():
        for top in range(0, height, 256):
            rows = np.take(base, np.arange(top, min(top + 256, height)) % base.shape[0], axis=0)
            yield np.take(rows, np.arange(width) % base.shape[1], axis=1)

    write_tiled_tiff(path, bands(), height, width, np.uint8)


def write_checkpoint(path: Path, base: np.ndarray) -> None:
    """The demo's architecture (width 8) with random weights (a last layer scaled so that the labels vary with the
    image), normalised with the mosaic's mean and std."""
    from lib.core.params import load_params, replace
    from model import UNet
    from model.checkpoint import build_checkpoint, save_checkpoint

    params = replace(load_params(), "model", base_channels=8)
    torch.manual_seed(0)
    model = UNet(1, params.n_classes, 8)
    with torch.no_grad():  # labels that follow the image (all three classes), not one class everywhere
        model.outc.conv.weight.normal_(0, 10.0)
    normalization = {"mean": [float(base.mean()) / 255], "std": [float(base.std()) / 255]}
    save_checkpoint(path, build_checkpoint(model, params, normalization))


def _warm_up(segmenter, work: Path) -> None:
    """One small image through the same route: libraries loaded, kernels chosen, allocator primed."""
    from predict import segment_file

    small = work / "warm.tif"
    if not small.exists():
        write_input(small, 480, 480, np.full((480, 480), 128, np.uint8))
    segment_file(segmenter, small, work / "masks", None, "tiff", 0.0, False)


def probe(image: Path, checkpoint: Path, work: Path, block_width: int) -> dict:
    """In a fresh process: segment ``image`` as predict.py does; time and peak memory above the idle process."""
    from lib.core.imageio import read_header
    from lib.segmenter import Segmenter
    from predict import segment_file

    segmenter = Segmenter.from_checkpoint(checkpoint, "cpu", "fp32")
    _warm_up(segmenter, work)
    idle, reset = rss_bytes(anonymous=False), reset_peak_rss()
    tic = time.perf_counter()
    segment_file(segmenter, image, work / "masks", None, "tiff", 0.0, False, block_width)
    seconds = time.perf_counter() - tic
    header = read_header(image)
    return {"route": "ours", "shape": [header.height, header.width], "seconds": seconds, "idle_rss": idle,
            "peak_rss": peak_rss_bytes(), "hwm_reset": reset, "block_width": block_width}


def monai_probe(image: Path, checkpoint: Path, work: Path) -> dict:
    """In a fresh process: MONAI's PatchInferer with SlidingWindowSplitter and ZarrAvgMerger on ``image`` (read
    whole and normalised as ours), the labels written to ``work/monai_labels.npy`` for the agreement."""
    from monai.inferers import PatchInferer, SlidingWindowSplitter, ZarrAvgMerger

    from lib.core.imageio import read_image
    from lib.segmenter import Segmenter

    segmenter = Segmenter.from_checkpoint(checkpoint, "cpu", "fp32")

    def run(x: torch.Tensor):
        store = work / "monai_zarr"
        shutil.rmtree(store, ignore_errors=True)
        inferer = PatchInferer(SlidingWindowSplitter(segmenter.window, overlap=0.5), ZarrAvgMerger,
                               batch_size=segmenter.inference.batch_size, postprocessing=lambda o: o.softmax(1),
                               store=str(store / "out"), value_store=str(store / "values"),
                               count_store=str(store / "counts"))
        with torch.inference_mode():
            return inferer(x, segmenter.model)

    run(torch.zeros(1, 1, 480, 480))  # warm-up
    idle, reset = rss_bytes(anonymous=False), reset_peak_rss()
    tic = time.perf_counter()
    x = segmenter.to_input(read_image(image))[None]
    merged = run(x)
    labels = np.empty(merged.shape[-2:], np.uint8)
    for top in range(0, labels.shape[0], 1024):  # argmax in bands: the merged array lives on disk
        labels[top:top + 1024] = np.asarray(merged[0, :, top:top + 1024]).argmax(0)
    seconds = time.perf_counter() - tic
    peak = peak_rss_bytes()
    np.save(work / "monai_labels.npy", labels)
    return {"route": "MONAI", "shape": list(labels.shape), "seconds": seconds, "idle_rss": idle, "peak_rss": peak,
            "hwm_reset": reset}


def in_fresh_process(*args: str, threads: int | None) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.large_images", *args] + (["--threads", str(threads)] if threads else [])
    env = child_env()
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=7200)
    if out.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def label_agreement(ours: Path, monai: Path) -> float:
    import tifffile

    return float((tifffile.imread(ours) == np.load(monai)).mean())


def parse_args(argv: list[str] | None):
    p = base_parser(__doc__, repeats=False, warmup=False)
    p.add_argument("--megapixels", type=float, nargs="+", default=[8, 32, 128, 512], help="image sizes")
    p.add_argument("--giga", action="store_true", help=f"also a {GIGA[0]}×{GIGA[1]} image (about 40 minutes on 2 "
                                                      "cores)")
    p.add_argument("--monai-at", type=float, default=2, help="megapixels of the side-by-side run with MONAI "
                                                              "(0: none)")
    p.add_argument("--block-width", type=int, default=8192, help="predict.py's --block-width")
    p.add_argument("--work-dir", type=Path, default=None, help="where the large inputs are written (default: a "
                                                               "temporary folder, removed at the end)")
    p.add_argument("--probe", nargs=3, metavar=("IMAGE", "CHECKPOINT", "WORK"), help=argparse.SUPPRESS)
    p.add_argument("--monai-probe", nargs=3, metavar=("IMAGE", "CHECKPOINT", "WORK"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not args.tiny:  # the sizes are rounded to images WIDTH wide and 96 + a multiple of 48 high
        smallest = aligned(0) * WIDTH / 1e6
        monai = [args.monai_at] if args.monai_at else []
        for flag, sizes in (("--megapixels", args.megapixels), ("--monai-at", monai)):
            if min(sizes, default=smallest) < smallest:
                p.error(f"{flag} {min(sizes):g}: below the smallest image, {smallest:.2f} MP ({aligned(0)}×{WIDTH})")
        shapes = [shape_of(mp) for mp in args.megapixels]
        if len(set(shapes)) < len(shapes):
            p.error(f"--megapixels {' '.join(f'{mp:g}' for mp in args.megapixels)}: two sizes give the same image "
                    f"(heights go in steps of 48 rows, {48 * WIDTH / 1e6:.2f} MP)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    apply_threads(args.threads)
    if args.probe or args.monai_probe:
        image, checkpoint, work = map(Path, args.probe or args.monai_probe)
        result = probe(image, checkpoint, work, args.block_width) if args.probe else \
            monai_probe(image, checkpoint, work)
        print(json.dumps(result))
        return 0
    sizes, fixed_width = ([0.2, 0.3], 1008) if args.tiny else (args.megapixels, WIDTH)
    monai_at = 0.1 if args.tiny and args.monai_at else args.monai_at
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="large_images_"))
    (work / "masks").mkdir(parents=True, exist_ok=True)
    print_header("large images: streaming sliding window, peak memory and time against size")
    base = mosaic()
    checkpoint = work / "demo_width8.pth"
    write_checkpoint(checkpoint, base)
    shapes = [shape_of(mp, fixed_width) for mp in sizes] + ([GIGA] if args.giga and not args.tiny else [])
    compared = shape_of(monai_at, fixed_width) if monai_at else None
    runs = []
    try:
        for height, width in ([compared] if compared and compared not in shapes else []) + shapes:
            image = work / f"in_{height}x{width}.tif"
            write_input(image, height, width, base)
            result = in_fresh_process("--probe", str(image), str(checkpoint), str(work), "--block-width",
                                      str(args.block_width), threads=args.threads)
            result["scaling"] = (height, width) in shapes  # else run only to stand beside MONAI
            if (height, width) == compared:
                theirs = in_fresh_process("--monai-probe", str(image), str(checkpoint), str(work),
                                          threads=args.threads)
                theirs["agreement"] = label_agreement(work / "masks" / image.name, work / "monai_labels.npy")
                runs.append(theirs)
            image.unlink()
            runs.append(result)
            print(f"{height}×{width}: {result['seconds']:.1f} s, peak {result['peak_rss'] / 1e6:.0f} MB", flush=True)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    ours = [r for r in runs if r["route"] == "ours" and r["scaling"]]
    for r in runs:
        r["megapixels"] = r["shape"][0] * r["shape"][1] / 1e6
        r["s_per_megapixel"] = r["seconds"] / r["megapixels"]
        r["above_idle"] = r["peak_rss"] - r["idle_rss"]
    reference = ours[0]["s_per_megapixel"]
    for r in ours:
        r["speed_vs_first"] = r["s_per_megapixel"] / reference - 1
    targets = {"above_idle_max": max(r["above_idle"] for r in ours),
               "above_idle_met": all(r["above_idle"] <= TARGET_ABOVE_IDLE for r in ours),
               "speed_spread_max": max(abs(r["speed_vs_first"]) for r in ours),
               "speed_met": all(abs(r["speed_vs_first"]) <= TARGET_SPEED_SPREAD for r in ours)}
    rows = [[r["route"], f"{r['shape'][0]}×{r['shape'][1]}", f"{r['megapixels']:.1f}", f"{r['seconds']:.1f}",
             f"{r['s_per_megapixel']:.3f}", f"{r['peak_rss'] / 1e9:.2f} GB", f"{r['above_idle'] / 1e6:.0f} MB",
             f"{100 * r['agreement']:.4f}%" if "agreement" in r else ""] for r in runs]
    print(format_table(["route", "image", "MP", "seconds", "s per MP", "peak RSS", "above idle", "same labels"], rows))
    print(f"above idle ≤ {TARGET_ABOVE_IDLE / 1e6:.0f} MB: {'met' if targets['above_idle_met'] else 'MISSED'}; "
          f"s per MP within {100 * TARGET_SPEED_SPREAD:.0f}% of the first size timed for it "
          f"({ours[0]['megapixels']:.1f} MP): "
          f"{'met' if targets['speed_met'] else 'MISSED'} (largest gap {100 * targets['speed_spread_max']:.1f}%)")
    path = write_json("large_images", {"machine": machine_info(), "runs": runs, "targets": targets,
                                       "tiny": args.tiny}, args.out_dir)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
