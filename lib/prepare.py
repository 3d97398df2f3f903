"""Cut training patches: ``python -m lib.prepare [--src DIR] [--out DIR] [--patch-size P] [--per-image K] [--seed S]
[--overwrite]``.

Writes ``OUT/images/p<k>.png`` (``.tif`` where PNG cannot hold the data exactly, see ``lib.core.imageio.image_suffix``),
``OUT/masks/p<k>.png``, ``OUT/manifest.csv`` (one row per patch: file, source image, top, left, flip, rot90), so that
training can hold out whole source images, and ``OUT/sources.json`` (dtype, channels and per-image statistics).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm  # a widget in notebooks, the usual bar in a terminal

from dataloader.manifest import MANIFEST, MANIFEST_FIELDS, SOURCES, mask_file
from dataloader.pairs import ImagePair, find_pairs, load_pair
from lib.core.atomic import atomic_write_text, deferred_sync
from lib.core.errors import UserError, cli_main
from lib.core.imageio import image_suffix, save_image, save_mask
from lib.core.jobs import finish_job, start_job
from lib.core.padding import reflect_pad
from lib.core.params import Params, load_params, replace
from lib.core.patch_sampling import apply_augmentation, augmentations, sample_positions
from lib.core.statistics import image_statistics

OWNED = ["images/*.png", "images/*.tif", "masks/*.png", MANIFEST, SOURCES]


def prepare_patches(src: str | Path, out: str | Path, params: Params, overwrite: bool = False,
                    progress: bool = True) -> int:
    """Cut ``patches.per_image`` random windows of ``patches.size`` from every image of ``src``, in each augmentation.

    Images smaller than a patch are reflect-padded at the bottom and right first (the manifest's coordinates refer to
    the padded image). Each source image has its own random stream, so the output is byte-identical for a seed.

    Args:
        src: folder with ``images/`` and ``masks/``.
        out: output folder.
        params: patch parameters, class colours, and the name rule of ``data``.
        overwrite: replace a finished or foreign output folder.
        progress: show a tqdm bar.

    Returns:
        The number of patches written.

    Raises:
        UserError: bad input data (naming the file) or an output folder that is not empty.
    """
    out = Path(out)
    p = params.patches
    pairs = find_pairs(src, params.data.image_prefix, params.data.mask_prefix)
    variants = augmentations(p.flips, p.rotate90)
    loaded = _load_all(pairs, params, progress)  # every input is checked before anything is written
    signature = {"src": str(Path(src).resolve()), "patches": dataclasses.asdict(p),
                 "sources": [pair.name for pair in pairs]}
    resumed = start_job(out, signature, OWNED, overwrite)
    (out / "images").mkdir(exist_ok=True)
    (out / "masks").mkdir(exist_ok=True)
    first = loaded[0][0]
    suffix = image_suffix(first.dtype, 1 if first.ndim == 2 else first.shape[2])
    rows = []
    k = 0
    with deferred_sync():  # one sync for the thousands of patch files, before the manifest that lists them
        for s, (pair, (image, mask)) in enumerate(zip(tqdm(pairs, desc="cut patches", disable=not progress,
                                                           unit="img"), loaded)):
            # the padding of inference (lib.core.padding), so that a small image looks the same to both
            image, mask = reflect_pad(image, p.size, p.size, (0, 1)), reflect_pad(mask, p.size, p.size, (0, 1))
            rng = np.random.default_rng([p.seed, s])
            for top, left in sample_positions(rng, mask, p.size, p.per_image, p.foreground_fraction):
                window = (slice(top, top + p.size), slice(left, left + p.size))
                for flip, rot in variants:
                    name = f"p{k}{suffix}"
                    rows.append({"file": name, "source": pair.name, "top": top, "left": left, "flip": flip,
                                 "rot90": rot})
                    if not (resumed and (out / "masks" / mask_file(name)).is_file()):
                        save_image(out / "images" / name, apply_augmentation(image[window], flip, rot))
                        save_mask(out / "masks" / mask_file(name), apply_augmentation(mask[window], flip, rot),
                                  params.class_colors)
                    k += 1
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, MANIFEST_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / SOURCES, json.dumps(source_summary(pairs, [image for image, _ in loaded]), indent=1))
    atomic_write_text(out / MANIFEST, buffer.getvalue())
    finish_job(out)
    return k


def source_summary(pairs: list[ImagePair], images: list[np.ndarray]) -> dict:
    """``sources.json``: the data set's dtype and channel count, and each source image's size and per-channel mean
    and std in stored units (the statistics of ``image`` normalisation)."""
    first = images[0]
    summary = {"dtype": first.dtype.name, "channels": 1 if first.ndim == 2 else int(first.shape[2]), "images": {}}
    for pair, image in zip(pairs, images):
        mean, std = image_statistics(image)
        summary["images"][pair.name] = {"height": int(image.shape[0]), "width": int(image.shape[1]),
                                        "mean": mean, "std": std}
    return summary


def describe(image: np.ndarray) -> str:
    """``uint16, 4 channels``: what a data set must share."""
    channels = 1 if image.ndim == 2 else image.shape[2]
    return f"{image.dtype.name}, {channels} channel{'s' if channels > 1 else ''}"


def _load_all(pairs: list[ImagePair], params: Params, progress: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    """Read and check every pair (readable, same size, mask values are classes, one dtype and channel count)."""
    loaded = []
    for pair in tqdm(pairs, desc="read images", disable=not progress, unit="img"):
        image, mask = load_pair(pair, params.class_colors, **params.data.read_options)
        if loaded and describe(image) != describe(loaded[0][0]):
            raise UserError(f"{pair.image}: image of {describe(image)} among images of {describe(loaded[0][0])} "
                            f"({pairs[0].image.name}); a data set has one pixel type and one channel count")
        loaded.append((image, mask))
    return loaded


@cli_main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lib.prepare", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=None, help="parameters file (default: parameters.json)")
    parser.add_argument("--src", default=None, help="image/mask folder (default: data.root/data.training_folder)")
    parser.add_argument("--out", default=None, help="output folder (default: data.root/patches_s<P>)")
    parser.add_argument("--patch-size", type=int, default=None, help="patch side (default: patches.size)")
    parser.add_argument("--per-image", type=int, default=None, help="patches per image (default: patches.per_image)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: patches.seed)")
    parser.add_argument("--foreground-fraction", type=float, default=None,
                        help="share of patches centred on a foreground pixel (default: patches.foreground_fraction)")
    parser.add_argument("--rotate90", action=argparse.BooleanOptionalAction, default=None,
                        help="also write the 90-degree rotations (default: patches.rotate90)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output")
    args = parser.parse_args(argv)
    params = replace(load_params(args.params), "patches", size=args.patch_size, per_image=args.per_image,
                     seed=args.seed, foreground_fraction=args.foreground_fraction, rotate90=args.rotate90)
    root = Path(params.data.root)
    src = Path(args.src) if args.src else root / params.data.training_folder
    out = Path(args.out) if args.out else root / params.patches.folder
    n = prepare_patches(src, out, params, args.overwrite)
    print(f"wrote {n} patches of {params.patches.size}x{params.patches.size} to {out}")


if __name__ == "__main__":
    main()
