"""Write the README figures from the data on disk and a trained checkpoint.

    python -m figures.make_figures --checkpoint checkpoints/demo/best.pth
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from dataloader.manifest import mask_file, read_manifest
from dataloader.pairs import find_pairs, load_pair
from lib.core.atomic import atomic_open
from lib.core.errors import cli_main
from lib.core.imageio import read_image, read_mask
from lib.core.metrics import iou_per_class, mean_iou
from lib.core.params import load_params
from lib.core.visualize import plot_history, show_pairs, show_patch_grid, show_prediction
from lib.evaluation import image_confusion
from lib.segmenter import Segmenter
from model.checkpoint import load_checkpoint

HERE = Path(__file__).resolve().parent


def save_figure(fig, name: str) -> None:
    """Write ``figures/<name>`` atomically: a figure already there is replaced whole or not at all."""
    with atomic_open(HERE / name, "wb") as handle:
        fig.savefig(handle, format="png", dpi=80)


@cli_main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--params", default=None)
    parser.add_argument("--example", type=int, default=0, help="test image shown in the prediction figure")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    d, colors = params.data, params.class_colors
    root = Path(d.root)

    pairs = find_pairs(root / d.training_folder, d.image_prefix, d.mask_prefix)[:5]
    loaded = [load_pair(p, colors, **d.read_options) for p in pairs]
    save_figure(show_pairs([i for i, _ in loaded], [m for _, m in loaded], colors, [p.name for p in pairs]),
                "input_data.png")

    folder = root / params.patches.folder
    rows = read_manifest(folder)[: 4 * 8]
    images = [read_image(folder / "images" / r["file"]) for r in rows]
    masks = [read_mask(folder / "masks" / mask_file(r["file"]), colors) for r in rows]
    save_figure(show_patch_grid(images, masks, colors, columns=8), "patches.png")

    save_figure(plot_history(load_checkpoint(args.checkpoint)["history"]), "training_curve.png")

    segmenter = Segmenter.from_checkpoint(args.checkpoint)
    pair = find_pairs(root / d.test_folder, d.image_prefix, d.mask_prefix)[args.example]
    image, truth = load_pair(pair, colors, **d.read_options)
    probabilities, labels = segmenter.predict(image)
    cm = image_confusion(labels, truth, len(segmenter.class_names))
    save_figure(show_prediction(image, truth, probabilities.numpy().astype(np.float32), segmenter.class_names, colors,
                                iou_per_class(cm).tolist(), mean_iou(cm)), "prediction.png")
    print(f"wrote figures to {HERE}")


if __name__ == "__main__":
    main()
