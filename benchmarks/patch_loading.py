"""Loading a patch folder into memory and one training step, for 8-bit PNG patches and 4-channel uint16 TIFF patches.

    python -m benchmarks.patch_loading [--rounds 3] [--code DIR ...] [--tiny]

The published 8000-patch set (100 generated images, 20 windows × 4 flips of 96×96) is cut once; so is a 4-channel
uint16 copy of it (four affine maps of each 8-bit image into 12-bit values, stored as TIFF). Each measurement is a fresh
process that loads the folder with ``dataloader.patches.PatchDataset``, computes the normalisation, and times 50
training steps (train.py's ``forward_loss`` and ``optimizer_step``, U-Net width 8, batch 16, after 10 untimed ones).
``--code DIR`` adds another checkout of this repository (e.g. an earlier commit, ``git worktree add DIR COMMIT``) whose
own code loads the 8-bit folder, so before/after is measured side by side; the rounds interleave all variants.
Not part of run_all.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import REPO, apply_threads, base_parser, format_table, print_header, write_json

WORKER = r"""
import json, sys, time
code, folder, n_steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.path.insert(0, code)
import importlib
import torch
from dataloader.patches import PatchDataset
from lib.training import forward_loss, optimizer_step
from model.unet_model import UNet
try:  # the code measured may predate lib/core/ (--code DIR)
    importlib.import_module("lib.core")
    core = "lib.core."
except ImportError:
    core = "lib."
retain_freed_memory = importlib.import_module(core + "allocator").retain_freed_memory
device_module = importlib.import_module(core + "device")
memory_format, resolve_precision = device_module.memory_format, device_module.resolve_precision
make_loss = importlib.import_module(core + "losses").make_loss
compute_normalization = importlib.import_module(core + "normalization").compute_normalization
retain_freed_memory()
tic = time.perf_counter()
data = PatchDataset(folder, [(0, 0, 0), (230, 40, 40), (120, 250, 80)])
load = time.perf_counter() - tic
tic = time.perf_counter()
norm = compute_normalization(data.images)
stats = time.perf_counter() - tic
device = torch.device("cpu")
precision, mem = resolve_precision("auto", device, False), memory_format(device)
torch.manual_seed(0)
net = UNet(data.n_channels, 3, 8).to(memory_format=mem)
optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
scaler = torch.amp.GradScaler("cpu", enabled=False)
loss_fn = make_loss("ce", None, device)
try:  # the code measured may predate lib.core.device.Runtime (--code DIR)
    from lib.core.device import Runtime
    settings = (norm, Runtime(device, precision, mem))
except ImportError:
    settings = (norm, device, precision, mem)
order = torch.randperm(len(data.images))
steps = []
for k in range(n_steps + 10):
    idx = order[(16 * k) % max(1, len(order) - 16):][:16]
    tic = time.perf_counter()
    _, _, loss = forward_loss(net, loss_fn, data.images, data.masks, idx, *settings)
    optimizer_step(loss, optimizer, scaler)
    loss.item()
    steps.append(time.perf_counter() - tic)
print(json.dumps({"n": len(data.images), "dtype": str(data.images.dtype), "channels": data.n_channels,
                  "load_s": load, "normalization_s": stats, "step_s": sorted(steps[10:])[n_steps // 2],
                  "precision": precision}))
"""


def four_channel_copy(src: Path, dst: Path) -> None:
    """The 8-bit training set as 4-channel uint16 TIFFs: four affine maps of each image into 12-bit values."""
    import tifffile
    from PIL import Image

    (dst / "images").mkdir(parents=True)
    shutil.copytree(src / "masks", dst / "masks")
    for path in sorted((src / "images").glob("*.png")):
        v = np.asarray(Image.open(path)).astype(np.uint16)
        image = np.stack([16 * v, 4095 - 16 * v, 8 * v + 1000, 2 * v + 3000], axis=-1).astype(np.uint16)
        tifffile.imwrite(dst / "images" / f"{path.stem}.tif", image, photometric="minisblack", planarconfig="contig")


def measure(code: Path, folder: Path, steps: int) -> dict:
    done = subprocess.run([sys.executable, "-c", WORKER, str(code), str(folder), str(steps)], capture_output=True,
                          text=True)
    if done.returncode:
        raise SystemExit(f"worker failed for {code} on {folder}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__, repeats=False, warmup=False)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (each a fresh process per variant)")
    p.add_argument("--code", type=Path, action="append", default=[], help="another checkout to time on 8-bit data")
    args = p.parse_args(argv)
    apply_threads(args.threads)
    print_header("patch loading and training step: 8-bit PNG and 4-channel uint16 TIFF patches")
    work = Path(tempfile.mkdtemp(prefix="patch_loading_"))
    try:
        raw = json.loads((REPO / "parameters.json").read_text())
        raw["data"]["root"] = str(work / "data")
        if args.tiny:
            raw["data"].update(n_training=4, n_test=1, height=120, width=72, line_length=[20, 72])
            raw["patches"].update(size=48, per_image=2)
            args.rounds = 1
        params = work / "params.json"
        params.write_text(json.dumps(raw))
        run = [sys.executable, "-m", "lib.generate", "--params", str(params)]
        subprocess.run(run, cwd=REPO, check=True, capture_output=True)
        train = work / "data" / "images_training"
        four_channel_copy(train, work / "uint16x4")
        folders = {"8-bit PNG": work / "p8", "uint16 ×4 TIFF": work / "p16"}
        for src, out in ((train, folders["8-bit PNG"]), (work / "uint16x4", folders["uint16 ×4 TIFF"])):
            subprocess.run([sys.executable, "-m", "lib.prepare", "--params", str(params), "--src", str(src), "--out",
                            str(out)], cwd=REPO, check=True, capture_output=True)
        variants = {(f"this checkout, {k}"): (REPO, f) for k, f in folders.items()}
        variants.update({f"{code}, 8-bit PNG": (code, folders["8-bit PNG"]) for code in args.code})
        runs: dict[str, list[dict]] = {name: [] for name in variants}
        names = list(variants)
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                runs[name].append(measure(*variants[name], 4 if args.tiny else 50))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results = []
    for name, rs in runs.items():
        results.append({"variant": name, "patches": rs[0]["n"], "dtype": rs[0]["dtype"], "channels": rs[0]["channels"],
                        "precision": rs[0]["precision"],
                        "load_s": {"min": min(x["load_s"] for x in rs),
                                   "median": statistics.median(x["load_s"] for x in rs)},
                        "normalization_s": min(x["normalization_s"] for x in rs),
                        "step_ms": {"min": 1000 * min(x["step_s"] for x in rs),
                                    "median": 1000 * statistics.median(x["step_s"] for x in rs)}})
    print(format_table(["variant", "patches", "load s (best)", "normalisation s", "step ms (best)", "step ms (median)"],
                       [[r["variant"], r["patches"], round(r["load_s"]["min"], 2), round(r["normalization_s"], 3),
                         round(r["step_ms"]["min"], 1), round(r["step_ms"]["median"], 1)] for r in results]))
    path = write_json("patch_loading", {"rounds": args.rounds, "results": results}, args.out_dir)
    print(f"results in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
