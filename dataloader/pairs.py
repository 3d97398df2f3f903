"""Image/mask pairs: ``<folder>/images/<prefix>ID.png`` matched with ``<folder>/masks/<mask_prefix>ID.png``."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lib.core.errors import UserError
from lib.core.imageio import read_image, read_mask
from lib.core.jobs import check_finished

# .btf (BigTIFF) and .svs (Aperio slides) are TIFFs, read as such (lib.core.imageio.is_tiff)
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".btf", ".svs", ".jpg", ".jpeg", ".bmp")


@dataclass(frozen=True)
class ImagePair:
    """One image file and its mask file (``mask`` is None for images to predict without truth)."""

    name: str
    image: Path
    mask: Path | None


def image_name(path: Path) -> str:
    """A file's name without its suffix: what images and masks pair by and outputs are named by. An ``.ome`` before
    the suffix belongs to it (``slide.ome.tif``, an OME-TIFF): its mask may be ``slide.png`` or ``slide.ome.png``, and
    its outputs are ``slide.png`` or ``slide.tif``, which are no OME-TIFFs."""
    stem = path.stem
    return stem[:-4] if stem.lower().endswith(".ome") else stem


def _natural_key(path: Path) -> list:
    # i2 before i10, as a person sorts them
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", image_name(path))]


def _image_files(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: folder {'is not a folder' if folder.exists() else 'not found'}")
    try:
        entries = list(os.scandir(folder))
    except OSError as err:
        raise UserError(f"{folder}: cannot list the folder ({err.strerror or err})") from None
    # a sub-folder named like an image is no image; a pipe or a broken link is listed, and refused when read
    files = (Path(e.path) for e in entries
             if Path(e.name).suffix.lower() in IMAGE_SUFFIXES and not e.name.startswith(".") and not e.is_dir())
    return sorted(files, key=lambda p: (_natural_key(p), p.name))


def list_images(folder: str | Path) -> list[Path]:
    """Image files of a folder in natural order (hidden and temporary files skipped).

    Raises:
        UserError: the folder is missing, or two of its images share a name but for the suffix (``x.jpg`` and
            ``x.bmp``): images and masks pair, and outputs are named, by the name without its suffix.
    """
    images = _image_files(folder)
    seen: dict[str, Path] = {}
    for image in images:
        name = image_name(image)
        if name in seen:
            raise UserError(f"{image}: shares the name {name!r} with {seen[name].name} (images and masks "
                            "pair, and outputs are named, by the name without its suffix: rename one)")
        seen[name] = image
    return images


def image_id(path: Path, prefix: str) -> str:
    """The part of a file's name that an image and its mask share (:func:`image_name` without its prefix)."""
    name = image_name(path)
    return name[len(prefix):] if prefix and name.startswith(prefix) else name


def masks_by_id(folder: str | Path, mask_prefix: str = "") -> dict[str, list[Path]]:
    """The masks of ``folder`` by the id they share with their image (:func:`image_id`), whatever their suffix. An id
    may name several masks (``x.png`` and ``x.tif``; ``3.png`` and ``Mask_3.png`` with the prefix ``Mask_``):
    :func:`mask_of` refuses them for the image that needs one, and only for it.

    Raises:
        UserError: the folder is missing.
    """
    found: dict[str, list[Path]] = {}
    for mask in _image_files(folder):
        found.setdefault(image_id(mask, mask_prefix), []).append(mask)
    return found


def mask_of(image: Path, masks: dict[str, list[Path]], folder: str | Path, image_prefix: str = "",
            mask_prefix: str = "") -> Path:
    """The mask of ``image`` among ``masks`` (:func:`masks_by_id` of ``folder``): ``Img_3.tif`` pairs with
    ``Mask_3.png``, ``Mask_3.tif`` or another image suffix.

    Raises:
        UserError: the image has no mask, or several, naming the image and the masks.
    """
    key = image_id(image, image_prefix)
    found = masks.get(key, [])
    if not found:
        raise UserError(f"{image}: no mask for this image (expected {Path(folder) / (mask_prefix + key)}.png, .tif or "
                        "another image suffix)")
    if len(found) > 1:
        raise UserError(f"{image}: {len(found)} masks pair with it ({', '.join(m.name for m in found)}, id {key!r}); "
                        "keep one")
    return found[0]


def find_pairs(folder: str | Path, image_prefix: str = "", mask_prefix: str = "", require_masks: bool = True
               ) -> list[ImagePair]:
    """Match the images of ``folder/images`` with the masks of ``folder/masks``.

    Names match after removing the prefixes: with ``image_prefix="Img_"`` and ``mask_prefix="Mask_"``,
    ``Img_3.png`` pairs with ``Mask_3.png``; with empty prefixes a mask is named like its image.

    Args:
        folder: holds ``images/`` and (when ``require_masks``) ``masks/``.
        image_prefix: prefix of image names.
        mask_prefix: prefix of mask names.
        require_masks: every image must have a mask, and every mask an image.

    Returns:
        The pairs, in natural order of the image names.

    Raises:
        UserError: a folder is missing or empty, a job of this project is writing it or was interrupted in it
            (:func:`lib.core.jobs.check_finished`), or an image has no mask or a mask no image (naming the file).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: data folder not found")
    check_finished(folder)  # a generated folder: not one being written or left interrupted
    images = list_images(folder / "images")
    if not images:
        raise UserError(f"{folder / 'images'}: no images found (expected PNG or TIFF files)")
    masks = masks_by_id(folder / "masks", mask_prefix) if require_masks else {}
    pairs, ids = [], {}
    for image in images:
        key = image_id(image, image_prefix)
        if key in ids:
            raise UserError(f"{image}: has the id {key!r} of {ids[key].name} (image prefix {image_prefix!r}), so both "
                            "would pair with one mask; rename one")
        ids[key] = image
        mask = mask_of(image, masks, folder / "masks", image_prefix, mask_prefix) if require_masks else None
        pairs.append(ImagePair(image_name(image), image, mask))
    for key in ids:
        masks.pop(key, None)
    if masks:
        orphan = next(iter(masks.values()))[0]
        expected = folder / "images" / f"{image_prefix}{image_id(orphan, mask_prefix)}"
        raise UserError(f"{orphan}: mask without an image (expected {expected}.png, .tif or another image suffix)")
    return pairs


def check_mask_size(mask: str | Path, mask_size: tuple[int, ...], image_size: tuple[int, ...]) -> None:
    """Refuse a mask whose size differs from its image's.

    Args:
        mask: the mask's file, for the message.
        mask_size, image_size: (height, width) of each.

    Raises:
        UserError: naming the mask and both sizes, width x height.
    """
    if tuple(mask_size) != tuple(image_size):
        raise UserError(f"{mask}: mask is {mask_size[1]}x{mask_size[0]} but its image is "
                        f"{image_size[1]}x{image_size[0]} (width x height)")


def load_pair(pair: ImagePair, colors: list[tuple[int, int, int]], keep_alpha: bool = False,
              channel_axis: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Read an image as stored (H×W or H×W×C, see :func:`lib.core.imageio.read_image`) and its mask (uint8 H×W of class
    indices). ``keep_alpha`` and ``channel_axis`` are ``read_image``'s (``params.data.read_options``).

    Raises:
        UserError: a file is unreadable, the sizes differ, or the mask holds a value that is no class.
    """
    image = read_image(pair.image, keep_alpha, channel_axis)
    if pair.mask is None:
        raise UserError(f"{pair.image}: no mask")
    mask = read_mask(pair.mask, colors)
    check_mask_size(pair.mask, mask.shape, image.shape[:2])
    return image, mask
