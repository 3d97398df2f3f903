"""Training step lever by lever: host syncs, fused SGD and torch.compile, on the published width-64 U-Net.

    python -m benchmarks.gpu_step [--device cuda] [--width 64] [--batch-size 16] [--steps 300]
        [--variants sync fused default reduce-overhead]

Every variant runs train.py's own step (``forward_loss`` + ``optimizer_step`` of lib/training.py, bf16 autocast on
CUDA, channels_last) on 8000 random uint8 96×96 patches held on the device, with batch indices on the device:

* ``sync``: the step as it was: foreach SGD, the loss read on the host after every step;
* ``fused``: fused SGD on CUDA, the losses read every ``readout_interval`` steps (train.py now, eager);
* any torch.compile mode (``default``, ``reduce-overhead``, ...): ``fused`` with ``train.compiled(model, mode)``.

The first ``--warmup`` steps of a variant (the compilation, for compiled ones) are timed apart; then ``--steps``
steps. The table gives ms per step and the time of the published 100 epochs of 450 steps at that rate (the step
alone: no validation or checkpoints).
"""

from __future__ import annotations

import sys
import time

import torch

import train
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
from lib.core.device import Runtime
from lib.core.losses import make_loss
from lib.core.normalization import compute_normalization
from lib.core.params import COMPILE_MODES, load_params, replace
from lib.training import forward_loss, optimizer_step
from model.unet_model import UNet

PUBLISHED_STEPS = 100 * 450  # 100 epochs of 7200 training patches in batches of 16
VARIANTS = ("sync", "fused", *(mode for mode in COMPILE_MODES if mode != "off"))


def run_variant(variant: str, rt: Runtime, width: int, batch_size: int, warmup: int, steps: int,
                n_patches: int) -> dict:
    """Warm-up and timed steps of one variant; returns their seconds and the last loss."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n_patches, 1, 96, 96), generator=g, dtype=torch.uint8)
    masks = torch.randint(0, 3, (n_patches, 96, 96), generator=g, dtype=torch.uint8)
    norm = compute_normalization(images[:256])
    images, masks = images.to(rt.device), masks.to(rt.device)
    order = torch.randperm(n_patches, generator=g).to(rt.device)
    torch.manual_seed(0)
    net = UNet(1, 3, width).to(rt.device, memory_format=rt.memory_format).train()
    params = replace(load_params(), "training", batch_size=batch_size)
    if variant == "sync":
        optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        model, every = net, 1
    else:
        optimizer = train.make_optimizer(net, params, rt)
        model = net if variant == "fused" else train.compiled(net, variant, rt)
        every = train.readout_interval(rt.device)
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.precision == "fp16")
    loss_fn = make_loss("ce", None, rt.device)
    batches_per_pass = n_patches // batch_size

    def run(count: int, start: int) -> float:
        pending, last = [], float("nan")
        for i in range(start, start + count):
            k = i % batches_per_pass
            _, _, loss = forward_loss(model, loss_fn, images, masks, order[k * batch_size:(k + 1) * batch_size],
                                      norm, rt)
            optimizer_step(loss, optimizer, scaler)
            pending.append(loss.detach())
            if len(pending) == every or i + 1 == start + count:
                last = torch.stack(pending).tolist()[-1]
                pending = []
        return last

    tic = time.perf_counter()
    run(warmup, 0)
    synchronize(rt.device)
    warm_s = time.perf_counter() - tic
    tic = time.perf_counter()
    last = run(steps, warmup)
    synchronize(rt.device)
    seconds = time.perf_counter() - tic
    return {"variant": variant, "warmup_s": warm_s, "steps": steps, "seconds": seconds,
            "ms_per_step": 1000 * seconds / steps, "published_s": seconds / steps * PUBLISHED_STEPS, "last_loss": last}


def parse_args(argv: list[str] | None):
    p = base_parser(__doc__, repeats=False)
    p.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=300, help="timed steps per variant")
    p.add_argument("--variants", nargs="+", default=["sync", "fused", "default", "reduce-overhead"], choices=VARIANTS)
    p.set_defaults(warmup=20)
    args = p.parse_args(argv)
    check_device(p, args.device)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    apply_threads(args.threads)
    device = torch.device(args.device)
    rt = mixed_precision_runtime(device)
    width, steps, warmup, n_patches = (4, 6, 2, 64) if args.tiny else (args.width, args.steps, args.warmup, 8000)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print_header(f"training step, width {width}, batch {args.batch_size}, {rt.precision}, on {name}")
    results = []
    for variant in args.variants:
        results.append(run_variant(variant, rt, width, args.batch_size, warmup, steps, n_patches))
        r = results[-1]
        print(f"{variant}: warm-up {r['warmup_s']:.1f} s, {r['ms_per_step']:.2f} ms/step", flush=True)
    print(format_table(["variant", "warm-up s", "ms/step", "100 epochs of steps (s)", "last loss"],
                       [[r["variant"], f"{r['warmup_s']:.1f}", f"{r['ms_per_step']:.2f}",
                         f"{r['published_s']:.0f}", f"{r['last_loss']:.4f}"] for r in results]))
    path = write_json("gpu_step", {"device": name, "precision": rt.precision, "width": width,
                                   "batch_size": args.batch_size, "results": results, "tiny": args.tiny},
                      args.out_dir)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
