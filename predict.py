"""Segment whole images with a trained checkpoint, and evaluate against masks.

    python predict.py --checkpoint checkpoints/<run>/best.pth --input data/images_test/images --output predictions \
        --masks data/images_test/masks --metrics metrics.json

    torchrun --standalone --nproc_per_node=N predict.py ...   # the images split across N processes

Writes one palette PNG per input (same stem; pixel values are class indices, the palette shows the class colours), or
above ``--tiff-above`` megapixels a tiled palette BigTIFF; every image is segmented band by band, in column blocks
when wider than ``--block-width`` (a TIFF input is read the same way), so memory does not grow with the image.
With ``--masks`` prints per-class IoU and mIoU over the whole set (one confusion matrix for all images, as Keras
computes it) and the mean over images of each image's mIoU (the published notebook shows each image's).
"""

from __future__ import annotations

# isort: off
import lib.core.startup  # noqa: F401  (first: a Ctrl-C while the imports below load ends in one line)
# isort: on
import argparse
import contextlib
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dataloader.pairs import IMAGE_SUFFIXES, check_mask_size, image_name, list_images, mask_of, masks_by_id
from lib.core.atomic import atomic_open, atomic_write_text, hidden_name, remove_stale_temporaries_in
from lib.core.device import select_device
from lib.core.distributed import all_reduce_sum, cleanup, exit_process, init_distributed
from lib.core.errors import ArgumentParser, UserError, cli_main, write_error
from lib.core.imageio import ImageHeader, ImageRows, check_fits, is_tiff, read_header, save_mask, write_tiled_tiff
from lib.core.params import BLENDS, DEVICES, PRECISIONS, Params, replace
from lib.evaluation import format_table, image_confusion, metrics_json, summarize
from lib.segmenter import Segmenter


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a .pth written by train.py")
    p.add_argument("--input", required=True, help="an image, or a folder of images (or a folder holding images/)")
    p.add_argument("--output", required=True, help="folder for the predicted masks")
    p.add_argument("--masks", help="folder of ground-truth masks, named like the images: evaluate")
    p.add_argument("--mask-prefix", help="masks are named <prefix><id> (e.g. Mask_; default: data.mask_prefix) ...")
    p.add_argument("--image-prefix", help="... for images named <prefix><id> (e.g. Img_; default: data.image_prefix)")
    p.add_argument("--metrics", help="write the metrics as JSON to this file")
    p.add_argument("--overlap", type=float, help="window overlap in [0, 0.95] (default: the checkpoint's, 0.5)")
    p.add_argument("--blend", choices=BLENDS, help="probability blending of overlapping windows")
    p.add_argument("--tta", action="store_true", help="average over the four flips of every window")
    p.add_argument("--batch-size", type=int, help="windows per forward pass")
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="auto: the training's (the checkpoint's) where this device computes it natively, else bf16 "
                        "on CPUs and CUDA devices that compute it natively, fp16 on other CUDA devices, fp32 "
                        "elsewhere")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="CUDA only: replay each image size's sliding window as one CUDA graph (images up to 16 "
                        "MP, read whole: --block-width does not apply to them; each new size costs two eager calls "
                        "and a capture); faster where launching kernels is the bottleneck: small tiles, narrow models")
    p.add_argument("--save-probabilities", action="store_true",
                   help="also write <stem>_probabilities.npy (float32, classes × height × width), or beside a TIFF "
                        "mask <stem>_probabilities.zarr (float16, height × width × classes, chunks of 256²)")
    p.add_argument("--format", choices=["auto", "png", "tiff"], default="auto",
                   help="mask format: palette PNG, or tiled BigTIFF with a palette, written band by band (auto: TIFF "
                        "above --tiff-above megapixels)")
    p.add_argument("--tiff-above", type=float, default=64.0, metavar="MP",
                   help="with --format auto, images above this many megapixels get a TIFF mask (default 64)")
    p.add_argument("--block-width", type=int, default=8192, metavar="PX",
                   help="images wider than this are segmented in column blocks, so that memory is bounded along "
                        "both sides (default 8192; each pixel sums the same windows)")
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
        raise UserError(f"{path}: no images found (expected {', '.join(s.lstrip('.') for s in IMAGE_SUFFIXES)} "
                        "files)")
    return images


def check_inputs(images: list[Path], masks: dict[Path, Path], segmenter: Segmenter) -> list[ImageHeader]:
    """Every image fits the model (pixel type, channels) and its mask's size, read from the headers, and every
    mask holds class values only, before any output is written; returns the headers."""
    headers = []
    for image in images:
        header = read_header(image, **segmenter.params.data.read_options)
        segmenter.check_image(header, str(image))
        if not is_tiff(image):  # decoded whole (PNG, JPEG, BMP cannot be read in bands)
            check_fits(image, header.height, header.width, header.channels * np.dtype(header.dtype).itemsize)
        if image in masks:
            mask = read_header(masks[image], mask=True)
            check_mask_size(masks[image], (mask.height, mask.width), (header.height, header.width))
            check_mask_values(masks[image], segmenter.class_colors)
        headers.append(header)
    return headers


def check_mask_values(mask: Path, colors: list[tuple[int, int, int]], band_pixels: int = 2**24) -> None:
    """Read a mask through once, in bands of about ``band_pixels``, so that a value that is no class stops the run
    before the first output rather than once segmentation reaches it (a PNG is decoded and checked whole; a TIFF
    costs a second read, small beside segmenting its image).

    Raises:
        UserError: naming the mask, the rows and the values.
    """
    with ImageRows(mask, mask_colors=colors) as rows:
        for _ in rows.bands(band_pixels):  # each band's values are checked as it is read
            pass


def writes_tiff(fmt: str, height: int, width: int, tiff_above: float) -> bool:
    """Whether the mask of an image of this size is a tiled TIFF (its probabilities zarr), else a PNG (npy)."""
    return fmt == "tiff" or (fmt == "auto" and height * width > tiff_above * 1e6)


def output_paths(out: Path, stem: str, tiff: bool) -> tuple[Path, Path]:
    """Where the mask of the image ``stem`` goes and where its probabilities go with ``--save-probabilities``:
    ``<stem>.png`` and ``<stem>_probabilities.npy``, or ``<stem>.tif`` and the zarr folder
    ``<stem>_probabilities.zarr`` (see :func:`writes_tiff`)."""
    return out / f"{stem}{'.tif' if tiff else '.png'}", out / f"{stem}_probabilities{'.zarr' if tiff else '.npy'}"


def check_outputs(images: list[Path], headers: list[ImageHeader], masks: dict[Path, Path], out: Path, fmt: str,
                  tiff_above: float, metrics: Path | None = None, keep: tuple[Path, ...] = (),
                  save_probabilities: bool = False) -> None:
    """The output folder is none that images or masks are read from (the masks written there would be read as inputs,
    or clash with them by name, next time); no mask or probability file to be written, nor the metrics file, may
    replace an input image or mask or a file of ``keep`` (the checkpoint, the input folder); no folder stands where a
    mask or probability file is to be written, nor a file where a probability folder is (found mid-run, one image's
    mask would already be written without its probabilities).

    Raises:
        UserError: naming the output folder or file and what it would replace.
    """
    sources = {p.parent.resolve() for p in [*images, *masks.values()]} | {p.resolve() for p in keep if p.is_dir()}
    data = {folder.parent for folder in sources if folder.name == "images"}  # a data folder holding images/
    sources |= data | {folder / "masks" for folder in data}  # and its ground truth, given as --masks or not
    if out.resolve() in sources:
        raise UserError(f"--output {out}: a folder of the input data (images, masks, or the data folder holding "
                        "them); the masks written there would replace or mix with them; choose another folder")
    inputs = {p.resolve() for p in [*images, *masks.values(), *keep]}
    written = set()
    for image, header in zip(images, headers):
        tiff = writes_tiff(fmt, header.height, header.width, tiff_above)
        mask, probabilities = output_paths(out, image_name(image), tiff)
        for path in (mask, output_paths(out, image_name(image), False)[1]):  # the .npy name in either format, as always
            if path.resolve() in inputs:
                raise UserError(f"{path}: the output would replace an input file; choose another --output folder")
            written.add(path.resolve())
        for path, folder in [(mask, False), *([(probabilities, tiff)] if save_probabilities else [])]:
            if path.exists() and path.is_dir() != folder:
                raise UserError(f"{path}: a {'file' if folder else 'folder'} stands where the output "
                                f"{'folder' if folder else 'file'} goes; remove it or choose another --output")
    if metrics is not None and metrics.resolve() in inputs | written:
        raise UserError(f"--metrics {metrics}: would replace an {'input' if metrics.resolve() in inputs else 'output'}"
                        " file (expected the path of a new JSON file)")
    if metrics is not None and metrics.is_file() and not _replaceable_metrics(metrics):
        raise UserError(f"--metrics {metrics}: exists and is no metrics file (expected the path of a new JSON file, "
                        "or of an earlier one to replace)")


def _replaceable_metrics(path: Path) -> bool:
    """Whether a file is empty (``mktemp``'s) or starts like a JSON object (an earlier metrics file), read from its
    first bytes only."""
    with open(path, "rb") as handle:
        head = handle.read(64)
    return not head or head.lstrip().startswith(b"{")


def check_writable(folder: Path, what: str = "output folder") -> None:
    """Create ``folder`` if missing and check that a file can be written in it.

    Raises:
        UserError: it is a file, or cannot be created or written, naming it as ``what``.
    """
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder}: a file, not a folder (the {what})")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise UserError(f"{folder}: {what} is not writable ({err.strerror or err})") from None


def segment_file(segmenter: Segmenter, image_path: Path, out: Path, mask: Path | None, fmt: str, tiff_above: float,
                 save_probabilities: bool, block_width: int = 8192) -> torch.Tensor | None:
    """Segment one image file block by block and write its mask (and probabilities); return its confusion matrix
    against ``mask`` (read block by block too), or None without a mask.

    A palette PNG gathers the blocks in memory (small images, as before). A tiled BigTIFF takes the bands of rows as
    they come; an image wider than ``block_width`` is segmented in column blocks, whose labels go to a temporary zarr
    array read back tile by tile, so memory is bounded along both sides whatever the image size (TIFF input is read
    block by block as well).
    """
    n_classes, colors = len(segmenter.class_names), segmenter.class_colors
    cm = torch.zeros(n_classes, n_classes, dtype=torch.long)
    with contextlib.ExitStack() as stack:
        source = stack.enter_context(ImageRows(image_path, **segmenter.params.data.read_options))
        truth = stack.enter_context(ImageRows(mask, mask_colors=colors)) if mask is not None else None
        height, width = source.header.height, source.header.width
        tiff = writes_tiff(fmt, height, width, tiff_above)
        target, probabilities_path = output_paths(out, image_name(image_path), tiff)
        probabilities = ProbabilitySink(probabilities_path, height, width, n_classes, tiff) \
            if save_probabilities else None
        if probabilities is not None:
            stack.callback(probabilities.discard)  # a run stopped by an error leaves no temporary folder

        def label_blocks():
            for top, left, band, labels in segmenter.predict_bands(source, str(image_path), block_width):
                rows, cols = labels.shape
                if truth is not None:
                    cm.add_(image_confusion(labels, truth.rows(top, top + rows, left, left + cols), n_classes))
                if probabilities is not None:
                    probabilities.write(top, left, band)
                yield top, left, labels.cpu().numpy().astype(np.uint8)

        if not tiff:
            save_mask(target, gather(label_blocks(), (height, width)), colors)
        elif width <= block_width:  # one column block: its bands of rows go straight to the file
            write_tiled_tiff(target, (labels for _, _, labels in label_blocks()), height, width, np.uint8,
                             colors=colors)
        else:
            scratch = stack.enter_context(scratch_array(labels_scratch(out, image_name(image_path)), (height, width)))
            rows = ChunkRows(scratch)
            for top, left, labels in label_blocks():
                rows.write(top, left, labels)
            rows.close()
            write_tiled_tiff(target, scratch, height, width, np.uint8, colors=colors)
        if probabilities is not None:
            probabilities.close()
    return cm if mask is not None else None


def scratch_folder(final: Path) -> Path:
    """The temporary name of a zarr folder on its way to ``final``: fixed, so that a rerun finds one a kill left."""
    return final.with_name(hidden_name(final.name, ".tmp"))


def labels_scratch(out: Path, stem: str) -> Path:
    """The temporary zarr folder of the labels of an image done in column blocks (:func:`scratch_array`)."""
    return scratch_folder(out / f"{stem}.labels.zarr")


def open_scratch_zarr(tmp: Path, shape: tuple[int, ...], dtype: str, named: Path):
    """A new zarr array in the temporary folder ``tmp`` (one a killed run left there is removed first), in chunks of
    256 × 256 pixels and all of any further axis.

    Raises:
        UserError: it cannot be written, naming ``named`` (the file it is for).
    """
    import zarr

    shutil.rmtree(tmp, ignore_errors=True)
    try:
        return zarr.open_array(str(tmp), mode="w", shape=shape, chunks=(256, 256, *shape[2:]), dtype=dtype)
    except OSError as err:
        raise write_error(named, err) from None


def remove_leftovers(out: Path, stems: list[str]) -> None:
    """What a killed run left for the images ``stems`` in ``out``, whatever the options of this run: the temporary
    files of their masks (PNG or TIFF) and probabilities, and their zarr folders (probabilities, column-block labels).
    The folder is listed once for all of them: once per image made a run over many tiles quadratic in their number."""
    names: set[str] = set()
    for stem in stems:
        (png, npy), (tif, zarr) = output_paths(out, stem, False), output_paths(out, stem, True)
        names.update(path.name for path in (png, tif, npy))
        for folder in (scratch_folder(zarr), labels_scratch(out, stem)):
            shutil.rmtree(folder, ignore_errors=True)
    remove_stale_temporaries_in(out, names)


def gather(blocks: Iterable[tuple[int, int, np.ndarray]], shape: tuple[int, ...]) -> np.ndarray:
    """One array of ``shape`` from its ``(top, left, block)`` parts (the last axes of a block are its rows and
    columns)."""
    whole = None
    for top, left, block in blocks:
        if whole is None:
            whole = np.empty((*block.shape[:-2], *shape), block.dtype)
        whole[..., top:top + block.shape[-2], left:left + block.shape[-1]] = block
    return whole


class ChunkRows:
    """Writes the bands of rows of each column block into a zarr array in whole rows of chunks, so that a chunk is
    compressed and written once: a band covering part of a chunk would make zarr read, change and rewrite it, about
    five times per chunk for the bands of a 96-pixel window (measured: +23% time on a 1-gigapixel image)."""

    def __init__(self, array):
        self.array, self.pending = array, {}  # column block's left edge -> (top of the held rows, held bands)

    def write(self, top: int, left: int, block: np.ndarray) -> None:
        """Hold ``block`` (h×w[×C], the rows of column block ``left`` after those given before) and write every row
        of chunks it completes."""
        start, bands = self.pending.get(left, (top, []))
        bands.append(block)
        end = top + block.shape[0]
        step = self.array.chunks[0]
        done = end if end >= self.array.shape[0] else end // step * step
        if done > start:
            held = np.concatenate(bands) if len(bands) > 1 else bands[0]
            self.array[start:done, left:left + held.shape[1]] = held[:done - start]
            bands = [held[done - start:]] if done < end else []
            start = done
        self.pending[left] = (start, bands)

    def close(self) -> None:
        """Write what is still held (nothing, once every block reached the bottom)."""
        for left, (start, bands) in self.pending.items():
            if bands:
                held = np.concatenate(bands)
                self.array[start:start + held.shape[0], left:left + held.shape[1]] = held
        self.pending = {}


@contextlib.contextmanager
def scratch_array(path: Path, shape: tuple[int, int]) -> Iterator:
    """A temporary uint8 zarr array on disk (chunks of 256²), removed on exit: labels of column blocks, read back
    tile by tile in the row-major order a tiled TIFF is written in."""
    array = open_scratch_zarr(path, shape, "uint8", path)
    try:
        yield array
    finally:
        shutil.rmtree(path, ignore_errors=True)


class ProbabilitySink:
    """``--save-probabilities``: a C×H×W float32 ``.npy`` beside a PNG mask, or a H×W×C float16 zarr array (chunks of
    256×256 pixels) beside a TIFF mask; each written block by block under a temporary name and renamed when complete.
    The ``.npy``'s blocks go to their places in the file as they come: gathered in memory first, then copied into a
    buffer for ``np.save``, a 36-MP image's probabilities took 2.8 times their size in memory on top of the run."""

    def __init__(self, path: Path, height: int, width: int, n_classes: int, streamed: bool):
        self.path, self.streamed, self.shape = path, streamed, (n_classes, height, width)
        if streamed:
            self.tmp = scratch_folder(self.path)
            self.rows = ChunkRows(open_scratch_zarr(self.tmp, (height, width, n_classes), "float16", self.path))
            return
        self.writing: contextlib.ExitStack | None = contextlib.ExitStack()
        self.file = self.writing.enter_context(atomic_open(path))
        try:
            self._guarded(np.lib.format.write_array_header_1_0, self.file,
                          {"descr": "<f4", "fortran_order": False, "shape": self.shape})
        except UserError:
            self.discard()
            raise
        self.start = self.file.tell()

    def _guarded(self, write, *args) -> None:
        try:
            write(*args)
        except OSError as err:
            raise write_error(self.path, err) from None

    def _write_at(self, index: int, values: np.ndarray) -> None:
        """Write contiguous float32 ``values`` from the ``index``-th value of the C×H×W array on."""
        self._guarded(self.file.seek, self.start + 4 * index)
        self._guarded(self.file.write, memoryview(values).cast("B"))

    def write(self, top: int, left: int, block: torch.Tensor) -> None:
        if self.streamed:
            self.rows.write(top, left, block.permute(1, 2, 0).cpu().numpy().astype(np.float16))
            return
        _, height, width = self.shape
        for c, plane in enumerate(np.ascontiguousarray(block.cpu().numpy(), dtype=np.float32)):
            if plane.shape[1] == width:  # whole rows: one run of the file
                self._write_at((c * height + top) * width, plane)
                continue
            for row, values in enumerate(plane, top):
                self._write_at((c * height + row) * width + left, values)

    def close(self) -> None:
        if self.streamed:
            self.rows.close()
            shutil.rmtree(self.path, ignore_errors=True)
            os.replace(self.tmp, self.path)
            return
        writing, self.writing = self.writing, None
        writing.close()  # synced and renamed into place

    def discard(self) -> None:
        """Remove the temporary file or zarr folder, if :meth:`close` did not rename it into place."""
        if self.streamed:
            shutil.rmtree(self.tmp, ignore_errors=True)
        elif self.writing is not None:
            stop = UserError("discarded")  # thrown into atomic_open, which removes its temporary file
            with contextlib.suppress(UserError):  # a flush that fails there too: the first error is the one to tell
                self.writing.__exit__(UserError, stop, None)
            self.writing = None


def assign_images(pixels: list[int], world_size: int) -> list[list[int]]:
    """Indices of the images each process segments: the largest first, each to the least loaded process (by
    pixel count), so that one huge image does not leave the others idle; deterministic, the same on every process."""
    loads, shares = [0] * world_size, [[] for _ in range(world_size)]
    for i in sorted(range(len(pixels)), key=lambda i: (-pixels[i], i)):
        rank = loads.index(min(loads))
        shares[rank].append(i)
        loads[rank] += pixels[i]
    return [sorted(share) for share in shares]


def with_inference_flags(params: Params, args: argparse.Namespace) -> Params:
    """``params`` with the inference settings the flags give, through the same checks as parameters.json.

    Raises:
        UserError: a value out of its range (naming the key).
    """
    return replace(params, "inference", overlap=args.overlap, blend=args.blend, batch_size=args.batch_size,
                   tta=args.tta or None)


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info = init_distributed(select_device(args.device).type)
    segmenter = Segmenter.from_checkpoint(args.checkpoint, args.device, args.precision, cuda_graphs=args.cuda_graphs)
    segmenter.params = with_inference_flags(segmenter.params, args)
    segmenter.inference = segmenter.params.inference
    if not math.isfinite(args.tiff_above) or args.tiff_above < 0:
        raise UserError(f"--tiff-above {args.tiff_above}: expected a number of megapixels >= 0")
    if args.block_width < segmenter.window:
        raise UserError(f"--block-width {args.block_width}: expected at least the window, {segmenter.window} pixels")
    if args.metrics and not args.masks:
        raise UserError(f"--metrics {args.metrics}: needs --masks (the metrics compare the masks with the predictions)")
    if args.metrics and Path(args.metrics).is_dir():
        raise UserError(f"--metrics {args.metrics}: is a folder (expected the path of a JSON file)")
    images = input_images(Path(args.input))
    masks: dict[Path, Path] = {}
    if args.masks:
        if not Path(args.masks).is_dir():
            found = "a file" if Path(args.masks).exists() else "not found"
            raise UserError(f"{args.masks}: {found} (expected the folder of masks)")
        data = segmenter.params.data  # the name rule the model was trained with, unless overridden
        image_prefix = data.image_prefix if args.image_prefix is None else args.image_prefix
        mask_prefix = data.mask_prefix if args.mask_prefix is None else args.mask_prefix
        found = masks_by_id(args.masks, mask_prefix)
        masks = {im: mask_of(im, found, args.masks, image_prefix, mask_prefix) for im in images}
    headers = check_inputs(images, masks, segmenter)
    out = Path(args.output)
    check_outputs(images, headers, masks, out, args.format, args.tiff_above,
                  Path(args.metrics) if args.metrics else None, (Path(args.checkpoint), Path(args.input)),
                  args.save_probabilities)
    if args.metrics:  # first: a bad --metrics leaves no empty output folder behind
        check_writable(Path(args.metrics).resolve().parent, "folder of --metrics")
    # made by this run, deepest first; with one process only (under torchrun another may be about to write there)
    made = [folder for folder in (out, *out.parents) if not folder.exists()] if info.world_size == 1 else []
    check_writable(out)
    mine = assign_images([h.height * h.width for h in headers], info.world_size)[info.rank]
    n_classes = len(segmenter.class_names)
    # one confusion matrix per image, zero for those of other processes: summed over processes, they are complete
    confusions = torch.zeros(len(images), n_classes, n_classes, dtype=torch.long)
    remove_leftovers(out, [image_name(images[i]) for i in mine])
    try:
        for i in tqdm(mine, desc="predict", unit="img", disable=args.quiet or not info.is_main, file=sys.stderr):
            cm = segment_file(segmenter, images[i], out, masks.get(images[i]), args.format, args.tiff_above,
                              args.save_probabilities, args.block_width)
            if cm is not None:
                confusions[i] = cm
    except UserError:
        for folder in made:  # an image refused mid-run (NaN pixels) before any output: the folders made go too
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty
        raise
    device = segmenter.device if info.enabled and segmenter.device.type == "cuda" else torch.device("cpu")
    confusions = all_reduce_sum(confusions.to(device), info).cpu()  # NCCL reduces on the GPU
    cleanup(info)
    if not info.is_main:
        return 0
    print(f"wrote {len(images)} mask(s) to {out}" + (f" ({info.world_size} processes)" if info.enabled else "")
          + f", {segmenter.device.type} {segmenter.precision}")
    if masks:
        metrics = summarize(list(confusions), segmenter.class_names)
        metrics["images"] = [p.name for p in images]
        print(format_table(metrics))
        if args.metrics:
            atomic_write_text(args.metrics, metrics_json(metrics))
            print(f"metrics written to {args.metrics}")
        if math.isnan(metrics["miou"]):
            print("warning: no class occurs in the masks or the predictions", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        status = main()
    except SystemExit as stop:  # a UserError leaves main() through cli_main's sys.exit(2)
        status = stop.code
    exit_process(status)
