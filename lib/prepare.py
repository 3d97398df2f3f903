"""Cut training patches from a folder of images and masks.

    python -m lib.prepare [--src DIR] [--out DIR] [--patch-size P] [--per-image K] [--seed S]
        [--foreground-fraction F] [--rotate90 | --no-rotate90] [--overwrite]

Writes ``OUT/images/p<k>.png`` (``.tif`` where PNG cannot hold the data exactly, see ``lib.core.imageio.image_suffix``),
``OUT/masks/p<k>.png``, ``OUT/manifest.csv`` (one row per patch: file, source image, top, left, flip, rot90), so that
training can hold out whole source images, and ``OUT/sources.json`` (dtype, channels and per-image statistics).
"""

from __future__ import annotations

# isort: off
import lib.core.startup  # noqa: F401  (first: a Ctrl-C while the imports below load ends in one line)
# isort: on
import argparse
import csv
import dataclasses
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm  # a widget in notebooks, the usual bar in a terminal

from dataloader.manifest import MANIFEST, MANIFEST_FIELDS, SOURCES, mask_file
from dataloader.pairs import ImagePair, check_mask_size, find_pairs
from lib.core.atomic import atomic_write_text, deferred_sync
from lib.core.errors import ArgumentParser, UserError, cli_main
from lib.core.imageio import ImageHeader, ImageRows, image_suffix, save_image, save_mask
from lib.core.jobs import check_apart, check_claimable, claimed, reading
from lib.core.padding import reflect_pad
from lib.core.params import Params, load_params, replace
from lib.core.patch_sampling import apply_augmentation, augmentations, sample_positions
from lib.core.random_streams import keyed_rng
from lib.core.statistics import band_statistics

OWNED = ["images/*.png", "images/*.tif", "masks/*.png", MANIFEST, SOURCES]


def prepare_patches(src: str | Path, out: str | Path, params: Params, overwrite: bool = False,
                    progress: bool = True, whole_bytes: int = 64 * 2**20) -> int:
    """Cut ``patches.per_image`` random windows of ``patches.size`` from every image of ``src``, in each augmentation.

    Images smaller than a patch are reflect-padded at the bottom and right first (the manifest's coordinates refer to
    the padded image). Each source image has its own random stream, so the output is byte-identical for a seed.
    Memory does not grow with the data set, nor with the image where it is a TIFF stored in tiles or strips: a first
    pass checks every pair band by band, a second cuts one image at a time, reading the windows of a TIFF larger
    than ``whole_bytes`` and of its mask alone; a smaller image or mask, and one that any read decodes half of or
    more anyway (a PNG, a compressed TIFF of one or two strips), is read whole (:func:`read_whole`).

    Args:
        src: folder with ``images/`` and ``masks/``.
        out: output folder.
        params: patch parameters, class colours, and the name rule of ``data``.
        overwrite: replace an output folder an earlier job wrote (never one no job wrote: the user's own files).
        progress: show a tqdm bar.
        whole_bytes: the largest image or mask (in decoded bytes) read whole rather than window by window (see
            :func:`read_whole`).

    Returns:
        The number of patches written.

    Raises:
        UserError: bad input data (naming the file), an output folder inside ``src``, or one that may not be
            written (see :func:`lib.core.jobs.check_claimable`); a source folder that another job is writing or was
            interrupted in (:func:`lib.core.jobs.reading`).
    """
    out = Path(out)
    check_apart(out, src)
    with reading(src):  # held against a lib.generate --overwrite of the data while its images are read
        return _cut_patches(Path(src), out, params, overwrite, progress, whole_bytes)


def _cut_patches(src: Path, out: Path, params: Params, overwrite: bool, progress: bool, whole_bytes: int) -> int:
    """:func:`prepare_patches` once the output folder is apart from the data and the data held."""
    p = params.patches
    pairs = find_pairs(src, params.data.image_prefix, params.data.mask_prefix)
    variants = augmentations(p.flips, p.rotate90)
    # everything that decides the files: what is read and how (a resumed job of other read settings mixed 3- and
    # 4-channel patches), the class colours of the masks, and how patches are cut
    signature = {"job": "lib.prepare", "src": str(Path(src).resolve()), "read": params.data.read_options,
                 "class_colors": [list(c) for c in params.class_colors], "patches": dataclasses.asdict(p),
                 "sources": [pair.name for pair in pairs]}
    check_claimable(out, signature, overwrite)  # a taken output folder is refused before the inputs are read
    summary = check_pairs(pairs, params, progress)  # every input is checked before anything is written
    single = [name for name, image in summary["images"].items() if max(image["height"], image["width"]) <= p.size]
    if single and p.per_image > 1:
        print(f"note: {len(single)} image(s) ({', '.join(single[:3])}{', ...' if len(single) > 3 else ''}) are no "
              f"larger than a patch of {p.size}x{p.size}: each has one window, and its {p.per_image} patches are "
              "copies of it", file=sys.stderr)
    with claimed(out, signature, OWNED, overwrite) as resumed:
        (out / "images").mkdir(exist_ok=True)
        (out / "masks").mkdir(exist_ok=True)
        suffix = image_suffix(summary["dtype"], summary["channels"])
        rows = []
        k = 0
        with deferred_sync():  # one sync for the thousands of patch files, before the manifest that lists them
            for s, pair in enumerate(tqdm(pairs, desc="cut patches", disable=not progress, unit="img")):
                for top, left, pixels, labels in image_windows(pair, params, keyed_rng(p.seed, s), whole_bytes):
                    for flip, rot in variants:
                        name = f"p{k}{suffix}"
                        rows.append({"file": name, "source": pair.name, "top": top, "left": left, "flip": flip,
                                     "rot90": rot})
                        if not (resumed and (out / "masks" / mask_file(name)).is_file()):
                            save_image(out / "images" / name, apply_augmentation(pixels, flip, rot))
                            save_mask(out / "masks" / mask_file(name), apply_augmentation(labels, flip, rot),
                                      params.class_colors)
                        k += 1
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, MANIFEST_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(out / SOURCES, json.dumps(summary, indent=1))
        atomic_write_text(out / MANIFEST, buffer.getvalue())
    return k


def image_windows(pair: ImagePair, params: Params, rng: np.random.Generator, whole_bytes: int
                  ) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """The ``patches.per_image`` windows of one image and its mask (:func:`sample_positions`), as (top, left, pixels,
    mask). Each is read whole where :func:`read_whole` says so (both where the image is smaller than a patch), else
    window by window, so memory does not grow with the image (a mask held whole took one byte a pixel: 1.6 GB for a
    40000² slide).
    """
    p = params.patches
    with ImageRows(pair.image, **params.data.read_options) as source, \
            ImageRows(pair.mask, mask_colors=params.class_colors) as labels:
        h = source.header
        small = h.height < p.size or h.width < p.size

        def held(rows: ImageRows) -> np.ndarray | ImageRows:
            # an image smaller than a patch is padded as inference pads it (lib.core.padding): both see the same
            whole = small or read_whole(rows, whole_bytes)
            return reflect_pad(rows.rows(0, h.height), p.size, p.size, (0, 1)) if whole else rows

        image, mask = held(source), held(labels)
        for top, left in sample_positions(rng, mask, p.size, p.per_image, p.foreground_fraction):
            window = (slice(top, top + p.size), slice(left, left + p.size))
            yield top, left, image[window], mask[window]


def read_whole(rows: ImageRows, whole_bytes: int) -> bool:
    """Whether to read an image (or mask) whole rather than window by window: it decodes to at most ``whole_bytes``
    (one read is faster than a read per window), or one read decodes half of it or more anyway (a PNG, a compressed
    TIFF of one or two strips: read by window, it was decoded again for every window)."""
    h = rows.header
    pixels = h.height * h.width
    return pixels * h.channels * np.dtype(h.dtype).itemsize <= whole_bytes or 2 * rows.decoded_at_once >= pixels


def describe(image: np.ndarray | ImageHeader) -> str:
    """``uint16, 4 channels``: what a data set must share, of an H×W[×C] array or an image's header."""
    if isinstance(image, np.ndarray):
        dtype, channels = image.dtype.name, 1 if image.ndim == 2 else image.shape[2]
    else:
        dtype, channels = image.dtype, image.channels
    return f"{dtype}, {channels} channel{'s' if channels > 1 else ''}"


def check_pairs(pairs: list[ImagePair], params: Params, progress: bool, band_pixels: int = 2**20) -> dict:
    """Read every pair through once, in bands of rows of about ``band_pixels`` (a PNG is decoded whole): the image
    is readable (finite, if float), its mask has its size and class values only, and the data set has one pixel type
    and channel count. Only the summary is kept, so memory is one band (and its float64 statistics) at a time.

    Returns:
        ``sources.json``: the data set's dtype and channel count, and each source image's size and per-channel mean
        and std in stored units (the statistics of ``image`` normalisation: those of
        :func:`lib.core.statistics.image_statistics`, to rounding).

    Raises:
        UserError: naming the file (and the rows) at fault.
    """
    first: ImageHeader | None = None
    images = {}
    for pair in tqdm(pairs, desc="read images", disable=not progress, unit="img"):
        if pair.mask is None:
            raise UserError(f"{pair.image}: no mask")
        with ImageRows(pair.image, **params.data.read_options) as image, \
                ImageRows(pair.mask, mask_colors=params.class_colors) as mask:
            header = image.header
            check_mask_size(pair.mask, (mask.header.height, mask.header.width), (header.height, header.width))
            first = first or header
            if describe(header) != describe(first):
                raise UserError(f"{pair.image}: image of {describe(header)} among images of {describe(first)} "
                                f"({pairs[0].image.name}); a data set has one pixel type and one channel count")
            # each mask band's values are checked as it is read, before the image's band of the same rows
            bands = (band for _, band in zip(mask.bands(band_pixels), image.bands(band_pixels)))
            mean, std = band_statistics(bands)
        images[pair.name] = {"height": header.height, "width": header.width, "mean": mean, "std": std}
    return {"dtype": first.dtype, "channels": first.channels, "images": images}


@cli_main
def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m lib.prepare", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=None, help="parameters file (default: the repository's parameters.json)")
    parser.add_argument("--src", default=None, help="image/mask folder (default: data.root/data.training_folder)")
    parser.add_argument("--out", default=None, help="output folder (default: data.root/patches_s<P>)")
    parser.add_argument("--patch-size", type=int, default=None, help="patch side (default: patches.size)")
    parser.add_argument("--per-image", type=int, default=None, help="patches per image (default: patches.per_image)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: patches.seed)")
    parser.add_argument("--foreground-fraction", type=float, default=None,
                        help="share of each image's patches (rounded) centred on a foreground pixel, shifted inside "
                             "the image near a border (default: patches.foreground_fraction)")
    parser.add_argument("--rotate90", action=argparse.BooleanOptionalAction, default=None,
                        help="also write the 90-degree rotations (default: patches.rotate90)")
    parser.add_argument("--overwrite", action="store_true", help="replace output an earlier run wrote")
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
