"""Whole-image inference: the project's sliding window vs MONAI's and vs the published per-window loop.

    python -m benchmarks.inference [--small 10] [--large 2000 4000] [--loop-windows 256] [--repeats N] [--tiny]

Variants, all on the same UNet(1, 3, 8) in eval mode with seeded random weights and the same normalised images:

* ``ours``: ``sliding_window_predict`` as the Segmenter calls it for a bf16-trained model (bf16 on CPUs
  with native bf16, the BatchNorms folded into the convolutions, channels_last model and windows, window 96,
  overlap 0.5, 32 windows per batch, mean blend).
* ``ours fp32 channels_last``: as the Segmenter calls it with ``--precision fp32`` (for information).
* ``ours fp32``: the same function at fp32 on the very contiguous model that MONAI gets (equal precision and
  memory format: the comparison of the two implementations).
* ``monai``: ``monai.inferers.sliding_window_inference`` as users call it: fp32 contiguous model, roi (96, 96), the
  same sw_batch_size, overlap 0.5, mode "constant", a predictor returning the softmax.
* ``loop``: the published approach (Orobix's ``recompose_overlap``): zero-pad the image so that windows of 96 at a
  stride of 48 tile it, run one window at a time through the fp32 model, average the probabilities, crop.

The probabilities compared are those of the last timed round. The loop on the large image can take long:
``--loop-windows N`` times its first N windows and extrapolates to all (said in the output), ``--skip-loop-large``
leaves it out.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from benchmarks.common import (
    apply_threads,
    base_parser,
    format_table,
    interleaved,
    print_header,
    summarize,
    verdict,
    write_json,
)
from lib.core.device import memory_format, resolve_precision
from lib.core.inference import sliding_window_predict
from model.folding import fold_batch_norms
from model.unet_model import UNet

WINDOW, STRIDE, OVERLAP, N_CLASSES = 96, 48, 0.5, 3
TARGET_MONAI, TARGET_EQUAL, TARGET_DIFF = 2.0, 1.0, 1e-5


def make_models(width: int, seed: int = 0) -> tuple[UNet, UNet]:
    """The same seeded weights twice: fp32 contiguous, and as the Segmenter loads them (BatchNorms folded into the
    convolutions, channels_last)."""
    torch.manual_seed(seed)
    plain = UNet(1, N_CLASSES, width).eval()
    return plain, fold_batch_norms(plain).to(memory_format=memory_format(torch.device("cpu")))


def make_images(n: int, height: int, width: int, seed: int) -> list[torch.Tensor]:
    """``n`` normalised 1×H×W float images."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, height, width, generator=g) for _ in range(n)]


def ours(model: UNet, batch_size: int, precision: str = "auto",
         mem: torch.memory_format | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """``sliding_window_predict`` with the arguments ``Segmenter.predict`` passes on this machine for ``precision``
    (default memory format: the Segmenter's, channels_last on CPU)."""
    device = torch.device("cpu")
    precision = resolve_precision(precision, device, amp=True)
    mem = memory_format(device) if mem is None else mem

    def predict(image: torch.Tensor) -> torch.Tensor:
        return sliding_window_predict(model, image, window=WINDOW, overlap=OVERLAP, batch_size=batch_size,
                                      blend="mean", tta=False, precision=precision, device=device,
                                      memory_format=mem)[0]

    return predict


def monai_fp32(model: UNet, batch_size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    from monai.inferers import sliding_window_inference

    def predict(image: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out = sliding_window_inference(image[None], (WINDOW, WINDOW), batch_size, lambda x: model(x).softmax(1),
                                           overlap=OVERLAP, mode="constant")
        return out[0]

    return predict


def loop_starts(size: int) -> list[int]:
    """Window starts of the published loop along one axis, after padding to ``window + k × stride``."""
    padded = WINDOW + max(0, -(-(size - WINDOW) // STRIDE)) * STRIDE
    return list(range(0, padded - WINDOW + 1, STRIDE))


def per_window_loop(model: UNet, image: torch.Tensor, limit: int | None = None) -> tuple[torch.Tensor, dict]:
    """The published inference: one window at a time, probabilities averaged over overlaps.

    Returns ``(probabilities C×H×W, stats)`` with stats ``done``, ``total`` (windows) and ``loop_s`` (seconds in the
    window loop); with ``limit`` only the first ``limit`` windows run (for timing): the probabilities are unfinished.
    """
    height, width = image.shape[-2:]
    ys, xs = loop_starts(height), loop_starts(width)
    ph, pw = ys[-1] + WINDOW, xs[-1] + WINDOW
    padded = F.pad(image, [0, pw - width, 0, ph - height])  # zeros at the bottom and right, as paint_border_overlap
    corners = [(y, x) for y in ys for x in xs]
    run = corners if limit is None else corners[:limit]
    prob = torch.zeros(N_CLASSES, ph, pw)
    count = torch.zeros(1, ph, pw)
    tic = time.perf_counter()
    with torch.no_grad():
        for y, x in run:
            out = model(padded[None, :, y:y + WINDOW, x:x + WINDOW]).softmax(1)[0]
            prob[:, y:y + WINDOW, x:x + WINDOW] += out
            count[:, y:y + WINDOW, x:x + WINDOW] += 1
    stats = {"done": len(run), "total": len(corners), "loop_s": time.perf_counter() - tic}
    return (prob / count.clamp(min=1))[:, :height, :width], stats


def loop_variant(model: UNet, images: list[torch.Tensor], limit: int | None,
                 extra: list[float], counts: dict) -> Callable[[], None]:
    """The per-window loop over the images; appends to ``extra`` the seconds the windows left out would have taken."""
    def run() -> None:
        missing = 0.0
        for image in images:
            _, stats = per_window_loop(model, image, limit)
            missing += stats["loop_s"] * (stats["total"] / stats["done"] - 1)
            counts.update(done=stats["done"], total=stats["total"])
        extra.append(missing)

    return run


def keep_outputs(name: str, predict: Callable[[torch.Tensor], torch.Tensor], images: list[torch.Tensor],
                 outputs: dict[str, list[torch.Tensor]]) -> Callable[[], None]:
    """Predict every image; the probabilities of the latest round are kept in ``outputs[name]`` for comparison."""
    def run() -> None:
        outputs[name] = [predict(image) for image in images]

    return run


def max_difference(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Largest absolute difference of two lists of probability maps."""
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def bench_set(label: str, images: list[torch.Tensor], models: tuple[UNet, UNet], batch_size: int, repeats: int,
              warmup: int, loop_limit: int | None, skip_loop: bool) -> dict:
    """Time every variant on one image set (interleaved) and compare the probabilities."""
    plain, fast = models
    predictors = {"ours": ours(fast, batch_size), "ours_fp32_cl": ours(fast, batch_size, "fp32"),
                  "ours_fp32": ours(plain, batch_size, "fp32", torch.contiguous_format),
                  "monai_fp32": monai_fp32(plain, batch_size)}
    outputs: dict[str, list[torch.Tensor]] = {}
    variants = {name: keep_outputs(name, p, images, outputs) for name, p in predictors.items()}
    extra: list[float] = []
    windows: dict = {}
    if not skip_loop:
        variants["loop"] = loop_variant(plain, images, loop_limit, extra, windows)
    times = interleaved(variants, repeats, warmup)
    if extra:  # add the extrapolated time of the windows not run (zero when all ran)
        times["loop"] = [t + e for t, e in zip(times["loop"], extra[-repeats:])]
    result = {"label": label, "n_images": len(images), "shape": list(images[0].shape), "variants": {}}
    for name, t in times.items():
        extrapolated = name == "loop" and windows["done"] < windows["total"]
        result["variants"][name] = {**summarize(t), "images_per_s": len(images) / min(t),
                                    "extrapolated": extrapolated}
    if windows:
        result["loop_windows"] = {"done_per_image": windows["done"], "total_per_image": windows["total"]}
    best = {name: v["min_s"] for name, v in result["variants"].items()}
    result["ratios"] = {"ours_vs_monai": best["monai_fp32"] / best["ours"],
                        "ours_fp32_vs_monai_fp32": best["monai_fp32"] / best["ours_fp32"],
                        "ours_fp32_cl_vs_monai_fp32": best["monai_fp32"] / best["ours_fp32_cl"]}
    if "loop" in best:
        result["ratios"]["ours_vs_loop"] = best["loop"] / best["ours"]
    result["max_abs_diff_fp32"] = max_difference(outputs["ours_fp32"], outputs["monai_fp32"])
    result["max_abs_diff_fp32_cl"] = max_difference(outputs["ours_fp32_cl"], outputs["monai_fp32"])
    result["max_abs_diff_ours_auto_vs_monai"] = max_difference(outputs["ours"], outputs["monai_fp32"])
    return result


def targets(result: dict) -> dict:
    r = result["ratios"]
    return {"ours_vs_monai": {"value": r["ours_vs_monai"], "target": f">={TARGET_MONAI}",
                              "verdict": verdict(r["ours_vs_monai"], TARGET_MONAI)},
            "ours_fp32_vs_monai_fp32": {"value": r["ours_fp32_vs_monai_fp32"], "target": f">={TARGET_EQUAL}",
                                        "verdict": verdict(r["ours_fp32_vs_monai_fp32"], TARGET_EQUAL)},
            "max_abs_diff_fp32": {"value": result["max_abs_diff_fp32"], "target": f"<={TARGET_DIFF}",
                                  "verdict": verdict(result["max_abs_diff_fp32"], TARGET_DIFF, False)}}


def print_result(result: dict, precision: str) -> None:
    names = {"ours": f"ours ({precision}, channels_last)", "ours_fp32_cl": "ours (fp32, channels_last)",
             "ours_fp32": "ours (fp32, contiguous)",
             "monai_fp32": "MONAI (fp32, contiguous)", "loop": "published per-window loop (fp32)"}
    base = result["variants"]["ours"]["min_s"]
    rows = []
    for name, v in result["variants"].items():
        note = "extrapolated" if v["extrapolated"] else ""
        rows.append([names[name], v["images_per_s"], v["min_s"], v["median_s"], f"{v['min_s'] / base:.2f}×", note])
    shape = "×".join(str(s) for s in result["shape"][1:])
    print(f"\n{result['label']}: {result['n_images']} image(s) of {shape} (H×W)")
    print(format_table(["variant", "images/s", "best s", "median s", "time vs ours", ""], rows))
    if "loop_windows" in result and result["variants"]["loop"]["extrapolated"]:
        w = result["loop_windows"]
        print(f"  per-window loop: timed on {w['done_per_image']} of {w['total_per_image']} windows, "
              "the rest extrapolated linearly")
    for name, t in targets(result).items():
        value = f"{t['value']:.2f}×" if name != "max_abs_diff_fp32" else f"{t['value']:.2e}"
        print(f"  {name}: {value} (target {t['target']}): {t['verdict']}")
    print(f"  information: ours fp32 channels_last vs MONAI fp32 {result['ratios']['ours_fp32_cl_vs_monai_fp32']:.2f}×;"
          f" max |ours - MONAI fp32|: {result['max_abs_diff_ours_auto_vs_monai']:.2e} ({precision}), "
          f"{result['max_abs_diff_fp32_cl']:.2e} (fp32 channels_last)")


def parse_args(argv: list[str] | None):
    p = base_parser(__doc__)
    p.add_argument("--small", type=int, default=10, help="number of test-size images")
    p.add_argument("--small-size", type=int, nargs=2, default=[400, 200], metavar=("H", "W"))
    p.add_argument("--large", type=int, nargs=2, default=[2000, 4000], metavar=("H", "W"), help="the large image")
    p.add_argument("--skip-large", action="store_true", help="leave the large image out")
    p.add_argument("--loop-windows", type=int, default=256,
                   help="time the per-window loop on the large image on this many windows and extrapolate (0: all)")
    p.add_argument("--skip-loop-large", action="store_true", help="leave the per-window loop out on the large image")
    p.add_argument("--width", type=int, default=8, help="U-Net base channels")
    p.add_argument("--batch-size", type=int, default=32, help="windows per forward pass (ours and MONAI)")
    p.add_argument("--large-repeats", type=int, default=None, help="rounds on the large image (default 2)")
    args = p.parse_args(argv)
    if args.tiny:
        args.small, args.small_size, args.large, args.width, args.batch_size = 1, [128, 96], [144, 192], 4, 4
        args.repeats, args.large_repeats, args.warmup, args.loop_windows = 1, 1, 0, 2
    args.repeats = args.repeats or 5
    args.large_repeats = args.large_repeats or min(args.repeats, 2)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    apply_threads(args.threads)
    precision = resolve_precision("auto", torch.device("cpu"), amp=True)
    print_header(f"whole-image inference, UNet(1, {N_CLASSES}, {args.width}) eval, window {WINDOW}, overlap "
                 f"{OVERLAP}, {args.batch_size} windows per batch; best of interleaved rounds")
    models = make_models(args.width)
    tic = time.perf_counter()
    results = [bench_set("test-size images", make_images(args.small, *args.small_size, seed=1), models,
                         args.batch_size, args.repeats, args.warmup, None, False)]
    print_result(results[-1], precision)
    if not args.skip_large:
        results.append(bench_set("large image", make_images(1, *args.large, seed=2), models, args.batch_size,
                                 args.large_repeats, 0, args.loop_windows or None, args.skip_loop_large))
        print_result(results[-1], precision)
    settings = {k: v for k, v in vars(args).items() if k != "out_dir"}
    path = write_json("inference", {"settings": settings, "precision": precision, "results": results,
                                    "targets": {r["label"]: targets(r) for r in results},
                                    "seconds": time.perf_counter() - tic}, args.out_dir)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
