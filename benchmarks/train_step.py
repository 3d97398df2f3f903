"""Training step throughput: the project's step as train.py runs it on this machine vs a plain fp32 eager loop.

    python -m benchmarks.train_step [--widths 16 64] [--batch-size 16] [--patch 96] [--repeats N] [--tiny]

``project``: precision ``resolve_precision("auto", cpu)`` (bf16 autocast on CPUs with native bf16), channels_last
model and inputs, cross-entropy on ``logits.float()``, SGD with momentum through the (disabled on CPU) GradScaler:
train.py's own ``forward_loss`` and ``optimizer_step`` (lib/training.py). ``plain``: the same model initialisation,
batch, loss and optimiser in fp32 with contiguous memory. Both start from the same weights; a timed round is
``--steps`` optimiser steps.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
import torch.nn as nn

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
from lib.core.device import Runtime, memory_format, resolve_precision
from lib.core.normalization import compute_normalization, normalize
from lib.training import forward_loss, optimizer_step
from model.unet_model import UNet

TARGET = 2.0
N_CLASSES = 3


def make_batch(batch_size: int, patch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """uint8 images N×1×P×P, uint8 masks N×P×P and their normalisation, as PatchDataset holds them."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch_size, 1, patch, patch), generator=g, dtype=torch.uint8)
    masks = torch.randint(0, N_CLASSES, (batch_size, patch, patch), generator=g, dtype=torch.uint8)
    return images, masks, compute_normalization(images)


def new_model(width: int, seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    return UNet(1, N_CLASSES, width).train()


def sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)


def project_step(width: int, images: torch.Tensor, masks: torch.Tensor, norm: dict) -> tuple[Callable[[], float], str]:
    """train.py's step on this machine (its precision and memory format); returns the step and the precision."""
    device = torch.device("cpu")
    precision, mem = resolve_precision("auto", device), memory_format(device)
    model = new_model(width).to(device, memory_format=mem)
    optimizer, loss_fn = sgd(model), nn.CrossEntropyLoss()
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    idx = torch.arange(len(images))

    def step() -> float:
        _, _, loss = forward_loss(model, loss_fn, images, masks, idx, norm, Runtime(device, precision, mem))
        optimizer_step(loss, optimizer, scaler)
        return loss.item()

    return step, precision


def plain_step(width: int, images: torch.Tensor, masks: torch.Tensor, norm: dict) -> Callable[[], float]:
    """A textbook fp32 eager step on contiguous tensors."""
    model = new_model(width)
    optimizer, loss_fn = sgd(model), nn.CrossEntropyLoss()

    def step() -> float:
        x, y = normalize(images, norm), masks.long()
        loss = loss_fn(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def repeated(step: Callable[[], float], steps: int) -> Callable[[], None]:
    def run() -> None:
        for _ in range(steps):
            step()

    return run


def bench_width(width: int, batch_size: int, patch: int, steps: int, repeats: int, warmup: int) -> dict:
    """Interleaved timing of both steps at one width; patches/s from the fastest round."""
    images, masks, norm = make_batch(batch_size, patch)
    project, precision = project_step(width, images, masks, norm)
    plain = plain_step(width, images, masks, norm)
    times = interleaved({"project": repeated(project, steps), "plain": repeated(plain, steps)}, repeats, warmup)
    result = {"width": width, "precision": precision, "steps_per_round": steps}
    for name, t in times.items():
        result[name] = {**summarize(t), "patches_per_s": steps * batch_size / min(t)}
    result["speedup"] = result["plain"]["min_s"] / result["project"]["min_s"]
    result["speedup_median"] = result["plain"]["median_s"] / result["project"]["median_s"]
    result["target"] = TARGET
    result["met"] = result["speedup"] >= TARGET
    return result


def parse_args(argv: list[str] | None):
    p = base_parser(__doc__)
    p.add_argument("--widths", type=int, nargs="+", default=[16, 64], help="U-Net base channels")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--patch", type=int, default=96, help="patch side")
    p.add_argument("--steps", type=int, nargs="+", default=None,
                   help="optimiser steps per timed round, one per width (default: 2 at width ≤ 16, else 1)")
    args = p.parse_args(argv)
    if args.tiny:
        args.widths, args.batch_size, args.patch, args.repeats, args.warmup = [4], 2, 32, 1, 1
    args.repeats = args.repeats or 5
    steps = args.steps or [2 if w <= 16 else 1 for w in args.widths]
    args.steps = steps if len(steps) == len(args.widths) else [steps[0]] * len(args.widths)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    apply_threads(args.threads)
    print_header(f"training step: project (train.py) vs plain fp32 eager, batch {args.batch_size}, "
                 f"{args.patch}×{args.patch}, 1 channel, {N_CLASSES} classes, {args.repeats} interleaved rounds")
    results = [bench_width(w, args.batch_size, args.patch, s, args.repeats, args.warmup)
               for w, s in zip(args.widths, args.steps)]
    rows = [[f"width {r['width']}", r["precision"] + " channels_last", r["project"]["patches_per_s"],
             r["plain"]["patches_per_s"], f"{r['speedup']:.2f}×", f"{r['speedup_median']:.2f}×",
             f"≥{TARGET:.1f}× {verdict(r['speedup'], TARGET)}"] for r in results]
    print(format_table(["model", "project precision", "project patches/s", "plain fp32 patches/s", "ratio (best)",
                        "ratio (median)", "target"], rows))
    path = write_json("train_step", {"settings": {"batch_size": args.batch_size, "patch": args.patch,
                                                  "repeats": args.repeats, "warmup": args.warmup,
                                                  "tiny": args.tiny}, "results": results}, args.out_dir)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
