"""Write the README figures from the data on disk and a trained checkpoint.

    python -m figures.make_figures --checkpoint checkpoints/<run>/best.pth
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dataloader.manifest import mask_file, read_manifest
from dataloader.pairs import find_pairs, load_pair
from lib.core.atomic import atomic_open, make_folder
from lib.core.errors import ArgumentParser, UserError, cli_main
from lib.core.imageio import read_image, read_mask
from lib.core.metrics import iou_per_class, mean_iou
from lib.core.params import load_params
from lib.core.visualize import plot_history, show_pairs, show_patch_grid, show_prediction
from lib.evaluation import image_confusion
from lib.segmenter import Segmenter
from model.checkpoint import load_checkpoint

HERE = Path(__file__).resolve().parent


def save_figure(fig, path: Path) -> None:
    """Write a figure atomically: a figure already there is replaced whole or not at all."""
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=80)


@cli_main
def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--params", default=None)
    parser.add_argument("--example", type=int, default=0, help="test image shown in the prediction figure")
    parser.add_argument("--out", default=str(HERE), help="folder of the figures (default: figures/)")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    d, colors = params.data, params.class_colors
    root = Path(d.root)
    figures = {}  # every figure is drawn before the first is written: an error leaves the folder as it was

    pairs = find_pairs(root / d.training_folder, d.image_prefix, d.mask_prefix)[:5]
    loaded = [load_pair(p, colors, **d.read_options) for p in pairs]
    figures["input_data.png"] = show_pairs([i for i, _ in loaded], [m for _, m in loaded], colors,
                                           [p.name for p in pairs])

    folder = root / params.patches.folder
    rows = read_manifest(folder)[: 4 * 8]
    images = [read_image(folder / "images" / r["file"]) for r in rows]
    masks = [read_mask(folder / "masks" / mask_file(r["file"]), colors) for r in rows]
    figures["patches.png"] = show_patch_grid(images, masks, colors, columns=8)

    state = load_checkpoint(args.checkpoint)
    history = state.get("history")
    if not history:
        raise UserError(f"{args.checkpoint}: no training history (expected a checkpoint written by train.py)")
    figures["training_curve.png"] = plot_history(history)

    segmenter = Segmenter.from_state(state, args.checkpoint)
    tests = find_pairs(root / d.test_folder, d.image_prefix, d.mask_prefix)
    if not 0 <= args.example < len(tests):
        raise UserError(f"--example {args.example}: expected 0..{len(tests) - 1} ({len(tests)} test images in "
                        f"{root / d.test_folder})")
    pair = tests[args.example]
    image, truth = load_pair(pair, colors, **d.read_options)
    probabilities, labels = segmenter.predict(image, str(pair.image))
    cm = image_confusion(labels, truth, len(segmenter.class_names))
    figures["prediction.png"] = show_prediction(image, truth, probabilities.numpy().astype(np.float32),
                                                segmenter.class_names, colors, iou_per_class(cm).tolist(),
                                                mean_iou(cm))
    out = Path(args.out)
    make_folder(out)
    for name, fig in figures.items():
        save_figure(fig, out / name)
    print(f"wrote {len(figures)} figures to {out}")


if __name__ == "__main__":
    main()
