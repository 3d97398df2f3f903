"""Stitching overhead and memory of sliding-window inference, from 0.08 to 32 megapixels.

    python -m benchmarks.overhead [--megapixels 0.08 1 8 32] [--memory-at 8 32] [--repeats N] [--device cuda]
        [--launches] [--cuda-graphs] [--tiny]

Time: ``sliding_window_predict`` as the Segmenter calls it for a bf16-trained model (bf16 autocast on CPUs and CUDA
devices with native bf16, channels_last) vs the model alone on the same window batches (cut beforehand, the same
autocast per batch, no softmax and no stitching); overhead = call / model − 1 (target ≤ 5%), and time per megapixel to
show linear growth. With ``--device cuda`` the model, the image and the result stay on the GPU (host transfers are not
stitching), each timing ends with a synchronisation, and memory is not measured (it is the host's). There the model of
the benchmark is bound by launching kernels from Python, and a busy host moves the timings by tens of percent between
runs; ``--launches`` counts what the stitching adds per window batch, a figure that does not move. ``--cuda-graphs``
replays the call as one CUDA graph per image size (predict.py's ``--cuda-graphs``) and the model alone as one graph of
all its batches, so that both launch at once; the eager model alone is timed beside them. The minor page faults of each
are shown: with glibc's malloc the model's activations are at times served from reused memory and at times from fresh
pages that the kernel must fault in (after the heap was trimmed), which moves either timing by up to about 30%. To see
the overhead without that effect, run with
``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824``.

Memory: every measurement runs in a fresh subprocess (``--memory-probe H W``) that builds the model and image, warms
up on a 200×400 image, reads its anonymous resident memory (RSS less file-backed pages, /proc/self/statm), then
samples it every 0.5 ms from a thread during the call (and once after it, with the result alive). Peak = highest
sample − the value before the call. As a cross-check, the kernel's own high-water mark of all resident pages
(VmHWM of /proc/self/status, reset just before the call by writing 5 to /proc/self/clear_refs) − the RSS before the
call: an upper bound, raised by library pages re-read during the call. (``ru_maxrss`` cannot serve: a child started
by fork and exec inherits the parent's peak.) Both are compared with the accumulators (C×H×W float32 + H×W float32
of the padded image) plus one batch of windows (input and float32 output). The call itself keeps one C×H×W
accumulator (divided in place into the probabilities) and returns int64 labels (8 bytes a pixel, plus a transient
float32 maximum), so about 1.5× that at large sizes; at small sizes the model's activations dominate.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import torch

from benchmarks.common import (
    REPO,
    apply_threads,
    base_parser,
    check_device,
    child_env,
    format_table,
    interleaved,
    mixed_precision_runtime,
    peak_rss_bytes,
    print_header,
    reset_peak_rss,
    rss_bytes,
    summarize,
    synchronize,
    verdict,
    write_json,
)
from lib.core.cuda_graphs import GraphedCall
from lib.core.device import autocast, memory_format, select_device
from lib.core.inference import cut_windows, sliding_window_predict, window_grid
from lib.core.padding import reflect_pad
from model.folding import fold_batch_norms
from model.unet_model import UNet

WINDOW, OVERLAP, N_CLASSES = 96, 0.5, 3
TARGET_OVERHEAD = 0.05
MIB = 2**20


def image_shape(megapixels: float) -> tuple[int, int]:
    """H×W of about ``megapixels`` at an aspect ratio of 1:2 (0.08 → 200×400)."""
    height = round(math.sqrt(megapixels * 1e6 / 2))
    return height, 2 * height


def make_model(width: int, seed: int = 0, device: torch.device = torch.device("cpu")) -> UNet:
    """Seeded weights as the Segmenter loads them: BatchNorms folded, on ``device`` in its memory format."""
    torch.manual_seed(seed)
    return fold_batch_norms(UNet(1, N_CLASSES, width)).to(device, memory_format=memory_format(device))


def settings(device: torch.device = torch.device("cpu")) -> tuple[torch.device, str, torch.memory_format]:
    """Device, precision and memory format as the Segmenter picks them for a bf16-trained model on ``device``."""
    rt = mixed_precision_runtime(device)
    return rt.device, rt.precision, rt.memory_format


def predict(model: UNet, image: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    device, precision, mem = settings(image.device)
    result = sliding_window_predict(model, image, window=WINDOW, overlap=OVERLAP, batch_size=batch_size,
                                    precision=precision, device=device, memory_format=mem)
    synchronize(device)
    return result


def window_batches(image: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """The window batches ``sliding_window_predict`` feeds the model, cut beforehand (on the image's device)."""
    _, _, mem = settings(image.device)
    padded = reflect_pad(image, WINDOW, WINDOW)
    ys, xs = window_grid(*padded.shape[-2:], WINDOW, OVERLAP)
    corners = [(y, x) for y in ys for x in xs]
    return [cut_windows(padded, corners[i:i + batch_size], WINDOW).contiguous(memory_format=mem)
            for i in range(0, len(corners), batch_size)]


def run_model(model: UNet, batches: list[torch.Tensor]) -> torch.Tensor:
    """The model on each batch in turn (each output dropped as the next is computed); the last output."""
    device, precision, _ = settings(batches[0].device)
    with torch.inference_mode():
        for batch in batches:
            with autocast(device, precision):
                out = model(batch)
    return out


def model_alone(model: UNet, batches: list[torch.Tensor]) -> None:
    run_model(model, batches)
    synchronize(batches[0].device)


def graphed_variants(model: UNet, image: torch.Tensor, batches: list[torch.Tensor], batch_size: int
                     ) -> tuple[Callable[[], object], Callable[[], object]]:
    """The call and the model alone (all its batches), each replayed as one CUDA graph."""
    device, precision, mem = settings(image.device)
    call = GraphedCall(lambda x: sliding_window_predict(model, x, window=WINDOW, overlap=OVERLAP,
                                                        batch_size=batch_size, precision=precision, device=device,
                                                        memory_format=mem))
    sizes = [len(b) for b in batches]
    alone = GraphedCall(lambda x: (run_model(model, [b.contiguous(memory_format=mem) for b in x.split(sizes)]),))
    stacked = torch.cat(batches)
    return (lambda: (call(image), synchronize(device))), (lambda: (alone(stacked), synchronize(device)))


# what a launch-bound GPU pays for: kernel launches and the copies and sets the runtime queues
LAUNCH_CALLS = {"cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx", "cudaMemcpyAsync",
                "cudaMemsetAsync", "cudaGraphLaunch"}
# ATen operations that launch no kernel: views, allocations without a fill, no-op conversions
VIEW_OPS = {"aten::" + name for name in (
    "alias", "as_strided", "contiguous", "detach", "empty", "empty_like", "empty_strided", "expand", "flatten",
    "lift_fresh", "narrow", "permute", "reshape", "result_type", "select", "slice", "squeeze", "t", "to",
    "transpose", "unflatten", "unfold", "unsqueeze", "view", "_unsafe_view")}


def count_operations(fn: Callable[[], object], device: torch.device) -> int:
    """Kernel launches (with the runtime's queued copies and sets) of one call of ``fn`` on CUDA; on CPU, the ATen
    operations called from Python that do work (not views): the count a launch-bound device pays for per call."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
    if device.type == "cuda":
        return sum(e.name in LAUNCH_CALLS for e in prof.events())
    return sum(e.name.startswith("aten::") and e.cpu_parent is None and e.name not in VIEW_OPS
               for e in prof.events())


def default_rounds(megapixels: float) -> int:
    return 5 if megapixels <= 1 else 2


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def counting_faults(fn: Callable[[], object], faults: list[int]) -> Callable[[], None]:
    """``fn`` that appends the minor page faults of each call to ``faults`` (fresh pages the allocator touched)."""
    def run() -> None:
        before = minor_faults()
        fn()
        faults.append(minor_faults() - before)

    return run


def time_size(model: UNet, megapixels: float, batch_size: int, rounds: int, warmup: int,
              device: torch.device = torch.device("cpu"), launches: bool = False, graphs: bool = False) -> dict:
    """Interleaved timing of the call and of the model alone at one image size, the image on ``device``; with
    ``launches``, also the operations of each (:func:`count_operations`), once the timings are done; with ``graphs``
    both replayed as CUDA graphs (:func:`graphed_variants`, captured in the warm-up), the eager model alone beside."""
    shape = image_shape(megapixels)
    image = torch.randn(1, *shape, generator=torch.Generator().manual_seed(0)).to(device)
    batches = window_batches(image, batch_size)
    call_fn, model_fn = lambda: predict(model, image, batch_size), lambda: model_alone(model, batches)
    faults: dict[str, list[int]] = {"call": [], "model": [], "model_eager": []}
    beside = {}
    if graphs:
        beside["model_eager"] = counting_faults(model_fn, faults["model_eager"])
        call_fn, model_fn = graphed_variants(model, image, batches, batch_size)
        warmup = max(warmup, 1)  # the captures
    times = interleaved({"call": counting_faults(call_fn, faults["call"]),
                         "model": counting_faults(model_fn, faults["model"]), **beside}, rounds, warmup)
    call, alone = summarize(times["call"]), summarize(times["model"])
    call["minor_faults"], alone["minor_faults"] = faults["call"][warmup:], faults["model"][warmup:]
    eager = summarize(times["model_eager"]) if graphs else None
    mp = shape[0] * shape[1] / 1e6
    overhead = call["min_s"] / alone["min_s"] - 1
    operations = None
    if launches:
        operations = {"call": count_operations(call_fn, device), "model": count_operations(model_fn, device)}
        operations["batches"] = len(batches)
        operations["extra_per_batch"] = (operations["call"] - operations["model"]) / len(batches)
    return {"megapixels": mp, "shape": list(shape), "windows": sum(len(b) for b in batches), "rounds": rounds,
            "call": call, "model": alone, "model_eager": eager, "graphs": graphs, "overhead": overhead,
            "overhead_median": call["median_s"] / alone["median_s"] - 1,
            "call_s_per_megapixel": call["min_s"] / mp, "operations": operations, "met": overhead <= TARGET_OVERHEAD}


def expected_bytes(height: int, width: int, batch_size: int) -> dict:
    """Accumulators of the padded image and one batch of windows (input, float32 output), in bytes."""
    ph, pw = max(height, WINDOW), max(width, WINDOW)
    accumulators = (N_CLASSES + 1) * ph * pw * 4
    batch = batch_size * (1 + N_CLASSES) * WINDOW * WINDOW * 4
    return {"accumulators": accumulators, "batch": batch, "total": accumulators + batch}


def memory_probe(height: int, width: int, model_width: int, batch_size: int) -> dict:
    """Run in a fresh process: peak RSS increase of one call on an H×W image (see the module docstring)."""
    model = make_model(model_width)
    image = torch.randn(1, height, width, generator=torch.Generator().manual_seed(0))
    predict(model, torch.randn(1, 200, 400), batch_size)  # warm-up: libraries, oneDNN kernels, allocator
    hwm_reset = reset_peak_rss()
    before, total_before = rss_bytes(), rss_bytes(anonymous=False)
    peak, done = [before], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    tic = time.perf_counter()
    result = predict(model, image, batch_size)
    seconds = time.perf_counter() - tic
    peak[0] = max(peak[0], rss_bytes())
    done.set()
    sampler.join()
    hwm = peak_rss_bytes()
    del result
    return {"shape": [height, width], "rss_before": before, "peak_increase": peak[0] - before,
            "hwm_increase": hwm - total_before, "hwm_reset": hwm_reset, "seconds": seconds,
            "expected": expected_bytes(height, width, batch_size)}


def measure_memory(megapixels: float, model_width: int, batch_size: int, threads: int | None) -> dict:
    """:func:`memory_probe` in a subprocess."""
    height, width = image_shape(megapixels)
    cmd = [sys.executable, "-m", "benchmarks.overhead", "--memory-probe", str(height), str(width),
           "--width", str(model_width), "--batch-size", str(batch_size)]
    if threads:
        cmd += ["--threads", str(threads)]
    env = child_env()
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=True, timeout=1800)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["peak_vs_expected"] = result["peak_increase"] / result["expected"]["total"]
    return result


def median_k(counts: list[int]) -> str:
    """The median of counts, in thousands (``12k``)."""
    return f"{round(statistics.median(counts) / 1000)}k" if counts else "-"


def _operations(operations: dict | None) -> str:
    """``model + extra`` operations per window batch, or ``-`` when not counted."""
    if operations is None:
        return "-"
    return f"{operations['model'] / operations['batches']:.0f} + {operations['extra_per_batch']:.1f}"


def print_tables(timings: list[dict], memory: list[dict], precision: str, device: torch.device) -> None:
    rows = [[f"{t['megapixels']:.2f} MP", f"{t['shape'][0]}×{t['shape'][1]}", t["windows"], t["rounds"],
             t["call"]["min_s"], t["model"]["min_s"], t["model_eager"]["min_s"] if t.get("model_eager") else "-",
             f"{100 * t['overhead']:.1f}%",
             f"{100 * t['overhead_median']:.1f}%", t["call_s_per_megapixel"],
             f"{median_k(t['call']['minor_faults'])} / {median_k(t['model']['minor_faults'])}",
             _operations(t["operations"]), verdict(t["overhead"], TARGET_OVERHEAD, higher_is_better=False)]
            for t in timings]
    graphs = " (each replayed as CUDA graphs)" if timings and timings[0].get("graphs") else ""
    print(f"\ntime: sliding_window_predict on {device} ({precision}, channels_last) vs the model alone on the same "
          f"batches{graphs} (best of interleaved rounds; target overhead ≤{100 * TARGET_OVERHEAD:.0f}%)")
    print(format_table(["image", "H×W", "windows", "rounds", "call s", "model s", "eager model s", "overhead",
                        "overhead (median)",
                        "call s/MP", "page faults call / model",
                        "launches / batch: model + extra" if device.type == "cuda" else "ops / batch: model + extra",
                        "target"], rows))
    if not memory:
        return
    rows = [[f"{m['shape'][0] * m['shape'][1] / 1e6:.2f} MP", f"{m['shape'][0]}×{m['shape'][1]}",
             m["peak_increase"] / MIB, m["hwm_increase"] / MIB, m["expected"]["accumulators"] / MIB,
             m["expected"]["batch"] / MIB, f"{m['peak_vs_expected']:.2f}×"] for m in memory]
    print("\nmemory: peak increase of anonymous RSS during one call (fresh process per row, sampled every 0.5 ms) vs "
          "accumulators + one batch")
    print(format_table(["image", "H×W", "peak MiB", "VmHWM MiB", "accumulators MiB", "batch MiB",
                        "peak / (acc. + batch)"], rows))


def parse_args(argv: list[str] | None):
    p = base_parser(__doc__)
    p.add_argument("--megapixels", type=float, nargs="+", default=[0.08, 1, 8, 32], help="image sizes (1:2)")
    p.add_argument("--memory-at", type=float, nargs="*", default=None,
                   help="sizes whose peak memory is measured (default: all)")
    p.add_argument("--width", type=int, default=8, help="U-Net base channels")
    p.add_argument("--batch-size", type=int, default=32, help="windows per forward pass")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where the model, the image and the accumulator live (cuda: no memory measurement)")
    p.add_argument("--launches", action="store_true",
                   help="also count the kernel launches (CUDA) or working ATen operations (CPU) of the call and of "
                        "the model alone, per window batch (torch.profiler; after the timings)")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="replay the call and the model alone as CUDA graphs (with --device cuda)")
    p.add_argument("--memory-probe", type=int, nargs=2, metavar=("H", "W"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    check_device(p, args.device)
    if args.cuda_graphs and args.device != "cuda":
        p.error("--cuda-graphs: needs --device cuda")
    if args.tiny:
        args.megapixels, args.width, args.batch_size, args.repeats, args.warmup = [0.02, 0.04], 4, 4, 1, 0
    if args.memory_at is None:
        args.memory_at = args.megapixels if args.device == "cpu" else []
    if args.memory_at and args.device != "cpu":
        p.error("--memory-at: memory is measured on the CPU only (give --memory-at without sizes)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    apply_threads(args.threads)
    if args.memory_probe:
        print(json.dumps(memory_probe(*args.memory_probe, args.width, args.batch_size)))
        return 0
    device = select_device(args.device)
    _, precision, _ = settings(device)
    print_header(f"sliding-window overhead and memory, UNet(1, {N_CLASSES}, {args.width}) eval, window {WINDOW}, "
                 f"overlap {OVERLAP}, {args.batch_size} windows per batch, {device}"
                 + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    model = make_model(args.width, device=device)
    tic = time.perf_counter()
    timings = []
    for k, mp in enumerate(args.megapixels):
        timings.append(time_size(model, mp, args.batch_size, args.repeats or default_rounds(mp),
                                 args.warmup if k == 0 else 0, device, args.launches, args.cuda_graphs))
    memory = [measure_memory(mp, args.width, args.batch_size, args.threads) for mp in args.memory_at]
    print_tables(timings, memory, precision, device)
    growth = [t["call_s_per_megapixel"] for t in timings]
    print(f"\ncall seconds per megapixel from {growth[0]:.3f} to {growth[-1]:.3f} "
          f"(largest / smallest {growth[-1] / growth[0]:.2f}; 1.00 is linear growth)")
    payload = {"settings": {k: v for k, v in vars(args).items() if k not in ("out_dir", "memory_probe")},
               "device": str(device), "precision": precision, "timings": timings, "memory": memory,
               "target_overhead": TARGET_OVERHEAD, "seconds": time.perf_counter() - tic}
    path = write_json("overhead", payload, args.out_dir)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
