"""Run make bench's six benchmarks, each in a fresh process, and summarise their targets and the fraction of peak:
the training step, inference, folding, stitching overhead, hardware and large images.

    python -m benchmarks.run_all [--tiny] [--only train_step inference folding overhead hardware large_images]
        [--out-dir DIR] [--threads N]

``make bench`` runs this. Not part of it, run them on their own: time_to_accuracy (the demo's 3 epochs of a width-8
U-Net, about 40 s each on 2 cores with native bf16 and 90 s in fp32, plus data and set-up) and the GPU's gpu_step.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import REPO, RESULTS_DIR, child_env, format_table, write_json
from lib.core.errors import ArgumentParser

BENCHMARKS = ("train_step", "inference", "folding", "overhead", "hardware", "large_images")


def run_benchmark(name: str, args: argparse.Namespace) -> float:
    """``python -m benchmarks.<name>`` with the shared flags, its output passed through; returns the wall time."""
    cmd = [sys.executable, "-m", f"benchmarks.{name}", "--out-dir", str(args.out_dir)]
    cmd += ["--tiny"] if args.tiny else []
    cmd += ["--threads", str(args.threads)] if args.threads else []
    env = child_env()
    tic = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, env=env, check=True)
    return time.perf_counter() - tic


def target_rows(name: str, result: dict) -> list[list[str]]:
    """``[benchmark, what, value, target, verdict]`` rows of one benchmark's JSON."""
    if name == "train_step":
        return [[name, f"width {r['width']}: {r['precision']} vs fp32 speed-up", f"{r['speedup']:.2f}×",
                 f"≥{r['target']}×", "met" if r["met"] else "MISSED"] for r in result["results"]]
    if name == "inference":
        rows = []
        for label, targets in result["targets"].items():
            for what, t in targets.items():
                value = f"{t['value']:.2e}" if what.startswith("max_abs") else f"{t['value']:.2f}×"
                rows.append([name, f"{label}: {what}", value, t["target"], t["verdict"]])
        return rows
    if name == "folding":  # no target: what folding the BatchNorms gains the Segmenter's inference
        return [[name, f"width {r['width']}: inference speed-up, BatchNorms folded", f"{r['speedup']:.2f}×",
                 "(reported)", ""] for r in result["results"]]
    if name == "overhead":
        limit = f"≤{100 * result['target_overhead']:.0f}%"
        return [[name, f"{t['megapixels']:.2f} MP: stitching overhead", f"{100 * t['overhead']:.1f}%", limit,
                 "met" if t["met"] else "MISSED"] for t in result["timings"]]
    if name == "hardware":  # no target: how far the U-Net is from this machine's matmul peak
        peak = f"{result['peak_precision']} {result['peak_used'] / 1e12:.3f} TFLOP/s"
        return [[name, f"width {r['width']}: {stage} FLOP/s of the matmul peak ({peak})",
                 f"{100 * r[f'{key}_fraction']:.1f}%", "(reported)", ""]
                for r in result["results"] for stage, key in (("training", "train"), ("inference", "inference"))]
    if name == "large_images":
        t = result["targets"]
        rows = [[name, "peak RSS above the idle process (largest)", f"{t['above_idle_max'] / 1e6:.0f} MB", "≤500 MB",
                 "met" if t["above_idle_met"] else "MISSED"],
                [name, "s per MP vs the first size timed for it (largest gap)",
                 f"{100 * t['speed_spread_max']:.1f}%", "≤10%", "met" if t["speed_met"] else "MISSED"]]
        for r in result["runs"]:
            if r["route"] == "MONAI":
                ours = next(o for o in result["runs"] if o["route"] == "ours" and o["shape"] == r["shape"])
                rows.append([name, f"{r['megapixels']:.1f} MP: MONAI zarr route time / ours",
                             f"{r['seconds'] / ours['seconds']:.2f}×", "(reported)", ""])
        return rows
    return []


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="tiny sizes, one repeat (smoke test)")
    p.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS), help="benchmarks to run")
    p.add_argument("--out-dir", type=Path, default=RESULTS_DIR, help="folder of the JSON results")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    seconds = {name: run_benchmark(name, args) for name in args.only}
    rows = []
    for name in args.only:
        rows += target_rows(name, json.loads((args.out_dir / f"{name}.json").read_text()))
    print("\n== targets ==")
    print(format_table(["benchmark", "measure", "value", "target", "verdict"], rows))
    print("wall time: " + ", ".join(f"{name} {s:.0f} s" for name, s in seconds.items())
          + f", total {sum(seconds.values()):.0f} s")
    keys = ["benchmark", "measure", "value", "target", "verdict"]
    path = write_json("run_all", {"seconds": seconds, "targets": [dict(zip(keys, r)) for r in rows],
                                  "tiny": args.tiny}, args.out_dir)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
