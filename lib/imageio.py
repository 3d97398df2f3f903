"""PNG reading and writing: gray or colour images, and label masks as palette PNGs (values = class indices)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from lib.atomic import atomic_write_bytes
from lib.errors import UserError


def _encode_png(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def save_gray(path: str | Path, image: np.ndarray) -> None:
    """Save an 8-bit gray (H×W) or RGB (H×W×3) image as PNG, atomically."""
    atomic_write_bytes(path, _encode_png(Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))))


def palette_bytes(colors: list[tuple[int, int, int]]) -> list[int]:
    """A 256-entry PIL palette whose first entries are the class colours (the rest gray ramp, to spot stray values)."""
    flat = [v for c in colors for v in c]
    ramp = [v for i in range(len(colors), 256) for v in (i, i, i)]
    return flat + ramp


def save_mask(path: str | Path, mask: np.ndarray, colors: list[tuple[int, int, int]]) -> None:
    """Save a label mask (H×W of class indices) as an 8-bit palette PNG showing the class colours, atomically.

    The pixel values are the class indices, so the file is exact for training and readable in any viewer.
    """
    img = Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8), mode="P")
    img.putpalette(palette_bytes(colors))
    atomic_write_bytes(path, _encode_png(img))


def open_png(path: str | Path) -> Image.Image:
    """Open and fully decode an image, turning every decoding problem into a :class:`UserError` naming the file."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            return img.copy()
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as err:
        reason = " ".join(str(err).split()) or err.__class__.__name__
        raise UserError(f"{path}: not a readable image ({reason})") from None


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as uint8 H×W (gray) or H×W×3 (colour).

    Conversions (documented in the README): palette and gray+alpha become gray or RGB, RGBA drops its alpha channel,
    16-bit gray is scaled to 8 bit by its full range (value >> 8), 32-bit integer and float modes are refused.

    Raises:
        UserError: the file is missing, unreadable, truncated, or of an unsupported mode.
    """
    img = open_png(path)
    mode = img.mode
    if mode in ("L", "RGB"):
        return np.asarray(img)
    if mode == "1":
        return np.asarray(img.convert("L"))
    if mode in ("LA",):
        return np.asarray(img.convert("L"))
    if mode in ("RGBA", "P", "PA", "CMYK", "YCbCr"):
        return np.asarray(img.convert("RGB"))
    if mode in ("I;16", "I;16B", "I;16L", "I;16N") or (mode == "I" and _is_16bit(img)):
        return (np.asarray(img, dtype=np.uint32) >> 8).astype(np.uint8)
    raise UserError(f"{path}: unsupported image mode {mode!r} (expected 8- or 16-bit gray, RGB or RGBA)")


def _is_16bit(img: Image.Image) -> bool:
    array = np.asarray(img)
    return bool(array.size) and int(array.min()) >= 0 and int(array.max()) <= 65535


def read_mask(path: str | Path, colors: list[tuple[int, int, int]]) -> np.ndarray:
    """Read a label mask as uint8 H×W of class indices.

    Index masks (L or P: pixel value = class index) are read as they are; colour masks (RGB/RGBA) are mapped through
    the class colours.

    Raises:
        UserError: the file is unreadable, or holds a value or colour that is no class (naming both).
    """
    img = open_png(path)
    n = len(colors)
    if img.mode in ("L", "P", "1"):
        mask = np.asarray(img if img.mode != "1" else img.convert("L"))
        if mask.size and int(mask.max()) >= n:
            bad = sorted(int(v) for v in np.unique(mask[mask >= n]))[:5]
            raise UserError(f"{path}: mask values {bad} are not class indices (expected 0..{n - 1})")
        return mask.astype(np.uint8, copy=False)
    if img.mode in ("RGB", "RGBA"):
        return _colors_to_indices(np.asarray(img.convert("RGB")), colors, path)
    raise UserError(f"{path}: unsupported mask mode {img.mode!r} (expected an index PNG (L or P) or an RGB colour PNG)")


def _colors_to_indices(rgb: np.ndarray, colors: list[tuple[int, int, int]], path: Path) -> np.ndarray:
    code = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    keys = np.array([(r << 16) | (g << 8) | b for r, g, b in colors], dtype=np.int32)
    order = np.argsort(keys)
    pos = np.clip(np.searchsorted(keys[order], code), 0, len(keys) - 1)
    found = keys[order][pos] == code
    if not found.all():
        bad = int(code[~found].flat[0])
        raise UserError(f"{path}: colour ({bad >> 16}, {(bad >> 8) & 255}, {bad & 255}) is no class colour "
                        f"(expected one of {[tuple(c) for c in colors]})")
    return order[pos].astype(np.uint8)
