"""Distance to the hardware: the achieved FLOP/s of the U-Net's training step and of whole-image inference, against
the machine's measured matmul peak in the same run.

    python -m benchmarks.hardware [--widths 8 16 64] [--batch-size 16] [--image 480 960] [--tiny] [--threads N]

Peak: the best of a few square matmuls (4096² on CPU, 8192² on a GPU) in fp32 and in bf16, timed here and now
(2·n³ FLOP each). Work: counted by ``torch.utils.flop_counter`` (convolutions and matmuls, forward and backward), which
is what the peak measures too. Training: train.py's own step (``forward_loss`` + ``optimizer_step``, the precision
and memory format it picks on this device) on a batch of 96×96 patches. Inference: ``sliding_window_predict`` as
predict.py calls it on one image (the BatchNorms folded into the convolutions, as the Segmenter loads the model); its
work is the windows' forward passes. The fraction of peak is taken against the peak of the precision the step runs in
(bf16 where autocast is on, else fp32).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import (
    apply_threads,
    base_parser,
    check_device,
    format_table,
    mixed_precision_runtime,
    print_header,
    synchronize,
    write_json,
)
from lib.core.device import Runtime, autocast, native
from lib.core.inference import sliding_window_predict, window_grid
from lib.core.losses import make_loss
from lib.core.normalization import compute_normalization
from lib.training import forward_loss, optimizer_step
from model.folding import fold_batch_norms
from model.unet_model import UNet

WINDOW, N_CLASSES = 96, 3


def best_seconds(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """The fastest of ``repeats`` timed calls (one untimed call first)."""
    fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        tic = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - tic)
    return min(times)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, repeats: int) -> float:
    """FLOP/s of an n×n by n×n matmul in ``dtype`` (best of ``repeats``)."""
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    return 2 * n**3 / best_seconds(lambda: a @ b, repeats, device)


def counted_flops(fn: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def training_step(width: int, batch_size: int, rt: Runtime) -> tuple[Callable[[], None], int]:
    """train.py's step at one width, and its FLOP count (forward and backward)."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch_size, 1, WINDOW, WINDOW), generator=g, dtype=torch.uint8)
    masks = torch.randint(0, N_CLASSES, (batch_size, WINDOW, WINDOW), generator=g, dtype=torch.uint8)
    norm, idx = compute_normalization(images), torch.arange(batch_size)
    images, masks = images.to(rt.device), masks.to(rt.device)
    torch.manual_seed(0)
    model = UNet(1, N_CLASSES, width).to(rt.device, memory_format=rt.memory_format).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.precision == "fp16")
    loss_fn = make_loss("ce", None, rt.device)

    def step() -> None:
        _, _, loss = forward_loss(model, loss_fn, images, masks, idx, norm, rt)
        optimizer_step(loss, optimizer, scaler)

    def forward_backward() -> None:
        _, _, loss = forward_loss(model, loss_fn, images, masks, idx, norm, rt)
        loss.backward()

    flops = counted_flops(forward_backward)
    optimizer.zero_grad(set_to_none=True)
    return step, flops


def inference_call(width: int, shape: tuple[int, int], batch_size: int, rt: Runtime
                   ) -> tuple[Callable[[], None], int]:
    """``sliding_window_predict`` on one image, and the FLOP count of its windows' forward passes."""
    torch.manual_seed(0)
    model = fold_batch_norms(UNet(1, N_CLASSES, width)).to(rt.device, memory_format=rt.memory_format)  # as loaded
    image = torch.randn(1, *shape, generator=torch.Generator().manual_seed(0))
    ys, xs = window_grid(*shape, WINDOW, 0.5)
    with torch.inference_mode(), autocast(rt.device, rt.precision):
        one = torch.zeros(1, 1, WINDOW, WINDOW, device=rt.device).contiguous(memory_format=rt.memory_format)
        flops = counted_flops(lambda: model(one)) * len(ys) * len(xs)

    def call() -> None:
        sliding_window_predict(model, image, window=WINDOW, batch_size=batch_size, precision=rt.precision,
                               device=rt.device, memory_format=rt.memory_format)

    return call, flops


def parse_args(argv: list[str] | None):
    p = base_parser(__doc__, warmup=False)
    p.add_argument("--widths", type=int, nargs="+", default=[8, 16, 64], help="U-Net base channels")
    p.add_argument("--batch-size", type=int, default=16, help="patches per training step")
    p.add_argument("--image", type=int, nargs=2, default=[480, 960], metavar=("H", "W"), help="inference image")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = p.parse_args(argv)
    check_device(p, args.device)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    apply_threads(args.threads)
    device = torch.device(args.device)
    rt = mixed_precision_runtime(device)
    repeats = 1 if args.tiny else (args.repeats or 3)
    widths, shape = ([4], (200, 300)) if args.tiny else (args.widths, tuple(args.image))
    n = 512 if args.tiny else (8192 if device.type == "cuda" else 4096)
    print_header(f"distance to the hardware on {device.type} ({rt.precision} for the U-Net)")
    # a CPU without native bf16 converts in software: its bf16 "peak" would measure that, not the hardware (and a
    # full run with it passed 10 minutes on such a CPU)
    # (lib.core.device.native: on a GPU before compute capability 8, bf16 is emulated too)
    peaks = {"fp32": matmul_peak(device, torch.float32, n, repeats),
             "bf16": matmul_peak(device, torch.bfloat16, n, repeats) if native(device, "bf16") else None}
    peak_precision = "bf16" if rt.precision in ("bf16", "fp16") and peaks["bf16"] else "fp32"
    peak = peaks[peak_precision]
    results = []
    for width in widths:
        step, step_flops = training_step(width, args.batch_size, rt)
        step_s = best_seconds(step, repeats, device)
        call, call_flops = inference_call(width, shape, 32, rt)
        call_s = best_seconds(call, repeats, device)
        results.append({"width": width, "train_gflop_per_patch": step_flops / args.batch_size / 1e9,
                        "train_step_s": step_s, "train_tflops": step_flops / step_s / 1e12,
                        "train_fraction": step_flops / step_s / peak, "inference_gflop": call_flops / 1e9,
                        "inference_s": call_s, "inference_tflops": call_flops / call_s / 1e12,
                        "inference_fraction": call_flops / call_s / peak})
    bf16 = f"{peaks['bf16'] / 1e12:.3f} TFLOP/s" if peaks["bf16"] else "not native on this device"
    print(f"matmul {n}²: fp32 {peaks['fp32'] / 1e12:.3f} TFLOP/s, bf16 {bf16}")
    rows = [[r["width"], f"{r['train_gflop_per_patch']:.3f}", f"{r['train_tflops']:.3f}",
             f"{100 * r['train_fraction']:.1f}%", f"{r['inference_tflops']:.3f}",
             f"{100 * r['inference_fraction']:.1f}%"] for r in results]
    print(format_table(["width", "train GFLOP/patch", "train TFLOP/s", "of peak", "inference TFLOP/s", "of peak"],
                       rows))
    path = write_json("hardware", {"device": device.type,
                                   "device_name": torch.cuda.get_device_name() if device.type == "cuda" else None,
                                   "precision": rt.precision, "matmul_n": n, "peak_flops": peaks,
                                   "peak_used": peak, "peak_precision": peak_precision,
                                   "batch_size": args.batch_size, "image": list(shape),
                                   "results": results, "tiny": args.tiny}, args.out_dir)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
