"""Segment whole images with a trained checkpoint, and evaluate against masks.

    python predict.py --checkpoint checkpoints/<run>/best.pth --input data/images_test/images --output predictions \
        --masks data/images_test/masks --metrics metrics.json

Writes one palette PNG per input (same stem; pixel values are class indices, the palette shows the class colours).
With ``--masks`` prints per-class IoU and mIoU over the whole set (one confusion matrix for all images, as Keras
computes it) and the mean over images of each image's mIoU (the published notebook's figure).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dataloader.pairs import image_id, list_images
from lib.atomic import atomic_write_bytes, atomic_write_text
from lib.errors import UserError, cli_main
from lib.imageio import read_header, read_image, read_mask, save_mask
from lib.segmenter import Segmenter, image_confusion, summarize


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a .pth written by train.py")
    p.add_argument("--input", required=True, help="an image, or a folder of images (or a folder holding images/)")
    p.add_argument("--output", required=True, help="folder for the predicted masks")
    p.add_argument("--masks", help="folder of ground-truth masks, named like the images: evaluate")
    p.add_argument("--mask-prefix", help="masks are named <prefix><id> (e.g. Mask_; default: data.mask_prefix) ...")
    p.add_argument("--image-prefix", help="... for images named <prefix><id> (e.g. Img_; default: data.image_prefix)")
    p.add_argument("--metrics", help="write the metrics as JSON to this file")
    p.add_argument("--overlap", type=float, help="window overlap in [0, 1) (default: the checkpoint's, 0.5)")
    p.add_argument("--blend", choices=["mean", "gaussian"], help="probability blending of overlapping windows")
    p.add_argument("--tta", action="store_true", help="average over the four flips of every window")
    p.add_argument("--batch-size", type=int, help="windows per forward pass")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--save-probabilities", action="store_true",
                   help="also write <stem>_probabilities.npy (float32, classes × height × width)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def input_images(path: Path) -> list[Path]:
    """The images to segment: one file, a folder of images, or a data folder holding ``images/``."""
    if path.is_file():
        return [path]
    if not path.exists():
        raise UserError(f"{path}: input not found")
    images = list_images(path)
    if not images and (path / "images").is_dir():
        images = list_images(path / "images")
    if not images:
        raise UserError(f"{path}: no images found (expected PNG or TIFF files)")
    return images


def mask_path(masks: Path, image: Path, image_prefix: str, mask_prefix: str) -> Path:
    """The mask of ``image`` in ``masks`` under the prefix rule of dataloader.pairs."""
    stem = image_id(image, image_prefix)
    for suffix in (".png", image.suffix):
        candidate = masks / f"{mask_prefix}{stem}{suffix}"
        if candidate.is_file():
            return candidate
    raise UserError(f"{image}: no mask found (expected {masks / (mask_prefix + stem)}.png)")


def check_inputs(images: list[Path], masks: dict[Path, Path], segmenter: Segmenter) -> None:
    """Every image fits the model (pixel type, channels) and its mask's size, read from the headers before any
    output is written."""
    for image in images:
        header = read_header(image, **segmenter.params.data.read_options)
        segmenter.check_image(header, str(image))
        if image in masks:
            mask = read_header(masks[image])
            if (mask.height, mask.width) != (header.height, header.width):
                raise UserError(f"{masks[image]}: mask is {mask.width}x{mask.height} but its image is "
                                f"{header.width}x{header.height} (width x height)")


def check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise UserError(f"{folder}: output folder is not writable ({err.strerror or err})") from None


def format_table(metrics: dict) -> str:
    """Per-class IoU, mIoU over the set, and the mean of per-image mIoU, as a small text table."""
    width = max(len(n) for n in [*metrics["iou"], "mean of per-image mIoU"]) + 2
    lines = [f"{'class':<{width}}IoU"]
    lines += [f"{name:<{width}}{value:.4f}" for name, value in metrics["iou"].items()]
    lines.append(f"{'mIoU':<{width}}{metrics['miou']:.4f}   (one confusion matrix over {metrics['n_images']} images)")
    lines.append(f"{'mean of per-image mIoU':<{width}}{metrics['mean_image_miou']:.4f}")
    return "\n".join(lines)


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    segmenter = Segmenter.from_checkpoint(args.checkpoint, args.device, args.precision)
    overrides = {k: v for k, v in {"overlap": args.overlap, "blend": args.blend, "batch_size": args.batch_size,
                                   "tta": args.tta or None}.items() if v is not None}
    if "overlap" in overrides and not 0 <= overrides["overlap"] < 1:
        raise UserError(f"--overlap {args.overlap}: expected a number in [0, 1)")
    if "batch_size" in overrides and overrides["batch_size"] < 1:
        raise UserError(f"--batch-size {args.batch_size}: expected an integer >= 1")
    segmenter.inference = replace(segmenter.inference, **overrides)
    images = input_images(Path(args.input))
    masks: dict[Path, Path] = {}
    if args.masks:
        if not Path(args.masks).is_dir():
            raise UserError(f"{args.masks}: masks folder not found")
        data = segmenter.params.data  # the name rule the model was trained with, unless overridden
        image_prefix = data.image_prefix if args.image_prefix is None else args.image_prefix
        mask_prefix = data.mask_prefix if args.mask_prefix is None else args.mask_prefix
        masks = {im: mask_path(Path(args.masks), im, image_prefix, mask_prefix) for im in images}
    check_inputs(images, masks, segmenter)
    out = Path(args.output)
    check_writable(out)
    if args.metrics:
        check_writable(Path(args.metrics).resolve().parent)
    n_classes = len(segmenter.class_names)
    confusions = []
    for image_path in tqdm(images, desc="predict", unit="img", disable=args.quiet, file=sys.stderr):
        image = read_image(image_path, **segmenter.params.data.read_options)
        truth = read_mask(masks[image_path], segmenter.class_colors) if image_path in masks else None
        probabilities, labels = segmenter.predict(image, str(image_path))
        save_mask(out / f"{image_path.stem}.png", labels.cpu().numpy().astype(np.uint8), segmenter.class_colors)
        if args.save_probabilities:
            buffer = io.BytesIO()
            np.save(buffer, probabilities.cpu().numpy().astype(np.float32))
            atomic_write_bytes(out / f"{image_path.stem}_probabilities.npy", buffer.getvalue())
        if truth is not None:
            confusions.append(image_confusion(labels, truth, n_classes))
    print(f"wrote {len(images)} mask(s) to {out}")
    if confusions:
        metrics = summarize(confusions, segmenter.class_names)
        metrics["images"] = [p.name for p in images]
        print(format_table(metrics))
        if args.metrics:
            clean = json.loads(json.dumps(metrics, default=float).replace("NaN", "null"))
            atomic_write_text(args.metrics, json.dumps(clean, indent=2) + "\n")
            print(f"metrics written to {args.metrics}")
        if math.isnan(metrics["miou"]):
            print("warning: no class occurs in the masks or the predictions", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
