"""BatchNorm folding: whole-image inference with the BatchNorms folded into the convolutions vs kept as layers.

The Segmenter loads every checkpoint folded.

    python -m benchmarks.folding [--widths 8 16 64] [--image 480 960] [--repeats N] [--device cpu|cuda] [--tiny]

Both variants are ``sliding_window_predict`` as predict.py calls it (the precision and memory format the Segmenter picks
for a bf16-trained model on the device, window 96, overlap 0.5, 32 windows a batch) on one image, from the same seeded
weights whose BatchNorms hold running statistics and affine parameters away from their initial 0 and 1; timed in
interleaved rounds. Also the largest difference of the probabilities between the two (float rounding: the folded weights
are computed once, in float32). """

from __future__ import annotations

import sys

import torch
import torch.nn as nn

from benchmarks.common import (
    apply_threads,
    base_parser,
    check_device,
    format_table,
    interleaved,
    mixed_precision_runtime,
    print_header,
    summarize,
    synchronize,
    write_json,
)
from lib.core.device import Runtime
from lib.core.inference import sliding_window_predict
from model.folding import fold_batch_norms
from model.unet_model import UNet

WINDOW, N_CLASSES, BATCH = 96, 3, 32


def trained_like(width: int, seed: int = 0) -> UNet:
    """A U-Net in eval mode whose BatchNorms are not the identity they start as (a trained model's never are)."""
    torch.manual_seed(seed)
    model = UNet(1, N_CLASSES, width)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 2.0)
                module.bias.uniform_(-0.5, 0.5)
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def predictor(model: nn.Module, image: torch.Tensor, rt: Runtime):
    """One whole-image call, ending with a synchronisation; returns the probabilities."""
    def call() -> torch.Tensor:
        probabilities, _ = sliding_window_predict(model, image, window=WINDOW, overlap=0.5, batch_size=BATCH,
                                                  precision=rt.precision, device=rt.device,
                                                  memory_format=rt.memory_format)
        synchronize(rt.device)
        return probabilities

    return call


def bench_width(width: int, image: torch.Tensor, rt: Runtime, repeats: int, warmup: int) -> dict:
    kept = trained_like(width).to(rt.device, memory_format=rt.memory_format)
    folded = fold_batch_norms(kept).to(memory_format=rt.memory_format)
    calls = {"kept": predictor(kept, image, rt), "folded": predictor(folded, image, rt)}
    times = interleaved(calls, repeats, warmup)
    difference = (calls["kept"]() - calls["folded"]()).abs().max().item()
    return {"width": width, "kept": summarize(times["kept"]), "folded": summarize(times["folded"]),
            "speedup": min(times["kept"]) / min(times["folded"]), "max_abs_diff": difference}


def parse_args(argv: list[str] | None):
    p = base_parser(__doc__)
    p.add_argument("--widths", type=int, nargs="+", default=[8, 16, 64], help="U-Net base channels")
    p.add_argument("--image", type=int, nargs=2, default=[480, 960], metavar=("H", "W"), help="image size")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = p.parse_args(argv)
    check_device(p, args.device)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    apply_threads(args.threads)
    device = torch.device(args.device)
    rt = mixed_precision_runtime(device)
    widths, shape = ([4], (120, 200)) if args.tiny else (args.widths, tuple(args.image))
    repeats = 1 if args.tiny else (args.repeats or 5)
    print_header(f"BatchNorm folding: whole-image inference on {device.type}, {rt.precision}, image "
                 f"{shape[0]}×{shape[1]}, {repeats} interleaved rounds")
    image = torch.randn(1, *shape, generator=torch.Generator().manual_seed(0)).to(device)
    results = [bench_width(width, image, rt, repeats, args.warmup) for width in widths]
    rows = [[f"width {r['width']}", r["kept"]["min_s"], r["folded"]["min_s"], f"{r['speedup']:.2f}×",
             f"{r['kept']['median_s'] / r['folded']['median_s']:.2f}×", f"{r['max_abs_diff']:.1e}"] for r in results]
    print(format_table(["model", "BatchNorms kept s", "folded s", "speed-up (best)", "(median)", "max |Δp|"], rows))
    path = write_json("folding", {"device": device.type, "precision": rt.precision, "image": list(shape),
                                  "results": results, "tiny": args.tiny}, args.out_dir)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
