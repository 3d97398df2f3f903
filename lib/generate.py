"""Generate the synthetic data set.

    python -m lib.generate [--out DIR] [--n N] [--n-test N] [--seed S] [--generator G] [--overwrite]

Writes ``DIR/images_training/{images,masks}/i<k>.png`` (N images) and ``DIR/images_test/...`` (``data.n_test``),
8-bit gray images and palette masks named like their image.
"""

from __future__ import annotations

# isort: off
import lib.core.startup  # noqa: F401  (first: a Ctrl-C while the imports below load ends in one line)
# isort: on
import dataclasses
from pathlib import Path

from tqdm.auto import tqdm  # a widget in notebooks, the usual bar in a terminal

from lib.core.errors import ArgumentParser, UserError, cli_main
from lib.core.imageio import check_memory, save_image, save_mask
from lib.core.jobs import check_claimable, claimed
from lib.core.params import Params, load_params, replace
from lib.core.synthetic import image_rng, synthetic_pair
from lib.core.synthetic_alt import alternate_pair

OWNED = ["images/*.png", "masks/*.png"]
# data.generator: the published-style scenes (lib/core/synthetic.py, with the ranges of parameters.json), or the
# same kind of scene drawn by independent code (lib/core/synthetic_alt.py), to test a recipe beyond its own data
GENERATORS = {"default": synthetic_pair, "alternate": alternate_pair}
# the most memory a pixel takes while one image is drawn (tracemalloc's peak for a 1000×1000 image: 26.8 and 50.0 bytes)
DRAW_BYTES_PER_PIXEL = {"default": 27, "alternate": 50}


def generate_split(out: str | Path, split: str, n: int, params: Params, overwrite: bool = False,
                   progress: bool = True) -> Path:
    """Write ``n`` synthetic image/mask pairs of one split (``"training"`` or ``"test"``) into ``out``.

    Args:
        out: the split's folder (gets ``images/`` and ``masks/``).
        split: selects the random stream, so the splits never share images.
        n: number of pairs.
        params: data ranges (``params.data``) and class colours.
        overwrite: replace a folder an earlier job wrote (never one no job wrote: the user's own data).
        progress: show a tqdm bar.

    Returns:
        The folder.

    Raises:
        UserError: the parameters have other than 3 classes; the folder holds a finished job and ``overwrite`` is
            false, holds files no job wrote, or cannot be written (see :func:`lib.core.jobs.check_claimable`); or an
            image of ``data.height`` × ``data.width`` would not fit in memory (refused before any folder is made).
    """
    if len(params.classes) != 3:  # the generators draw background 0, lines 1 and ellipses 2
        raise UserError(f"classes: the synthetic generators draw 3 classes (0 background, 1 line, 2 ellipse); "
                        f"the parameters have {len(params.classes)}")
    d = params.data
    check_memory(d.height * d.width * DRAW_BYTES_PER_PIXEL[d.generator],
                 f"data.height x data.width = {d.height}x{d.width}", "to draw one image")
    out = Path(out)
    with claimed(out, split_signature(split, n, params), OWNED, overwrite) as resumed:
        (out / "images").mkdir(exist_ok=True)
        (out / "masks").mkdir(exist_ok=True)
        for i in tqdm(range(n), desc=f"generate {split}", disable=not progress, unit="img"):
            name = f"i{i}.png"
            if resumed and (out / "masks" / name).is_file():
                continue  # written whole by the interrupted run (the mask goes last)
            image, mask = GENERATORS[params.data.generator](image_rng(params.data.seed, split, i), params.data)
            save_image(out / "images" / name, image)
            save_mask(out / "masks" / name, mask, params.class_colors)
    return out


def split_signature(split: str, n: int, params: Params) -> dict:
    """What decides a split's files: a resumed job must have the same (:mod:`lib.core.jobs`)."""
    return {"job": "lib.generate", "split": split, "n": n, "data": dataclasses.asdict(params.data),
            "class_colors": [list(c) for c in params.class_colors]}


def generate_dataset(params: Params, out: str | Path | None = None, overwrite: bool = False,
                     progress: bool = True) -> tuple[Path, Path]:
    """Write the training and test splits under ``out`` (default ``params.data.root``); return their folders.

    Raises:
        UserError: as :func:`generate_split`; both folders are checked before either is written (a test folder that
            another job was writing was refused only after ``overwrite`` had replaced the training folder).
    """
    root = Path(out if out is not None else params.data.root)
    d = params.data
    splits = [(root / d.training_folder, "training", d.n_training), (root / d.test_folder, "test", d.n_test)]
    for folder, split, n in splits:
        check_claimable(folder, split_signature(split, n, params), overwrite)
    train, test = (generate_split(folder, split, n, params, overwrite, progress) for folder, split, n in splits)
    return train, test


@cli_main
def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m lib.generate", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=None, help="parameters file (default: the repository's parameters.json)")
    parser.add_argument("--out", default=None, help="data root (default: data.root)")
    parser.add_argument("--n", type=int, default=None, help="number of training images (default: data.n_training)")
    parser.add_argument("--n-test", type=int, default=None, help="number of test images (default: data.n_test)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: data.seed)")
    parser.add_argument("--generator", choices=list(GENERATORS), default=None,
                        help="synthetic set: ours, or the second drawn by independent code (default: data.generator)")
    parser.add_argument("--overwrite", action="store_true", help="replace output an earlier run wrote")
    args = parser.parse_args(argv)
    params = replace(load_params(args.params), "data", n_training=args.n, n_test=args.n_test, seed=args.seed,
                     generator=args.generator)
    train, test = generate_dataset(params, args.out, args.overwrite)
    print(f"wrote {params.data.n_training} training images to {train} and {params.data.n_test} test images to {test}")


if __name__ == "__main__":
    main()
