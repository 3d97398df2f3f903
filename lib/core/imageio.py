"""Reading and writing images and label masks, keeping every bit of the data as stored.

Images are read in their stored dtype (uint8, uint16, int16 or float32) with their channels: H×W for one channel,
H×W×C for more. PNG, JPEG and BMP go through Pillow (16-bit colour PNGs through pypng, since Pillow reduces them to
8 bit); TIFF goes through tifffile, the reader of microscopy and remote sensing. Label masks are H×W uint8 class
indices, written as palette PNGs (values = class indices, palette = class colours).
"""

from __future__ import annotations

import contextlib
import io
import logging
import operator
import os
import stat
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from lib.core.atomic import atomic_path, atomic_write_bytes
from lib.core.errors import UserError

IMAGE_DTYPES = ("uint8", "uint16", "int16", "float32")
CHANNEL_AXES = ("auto", "first", "last")
MAX_AUTO_CHANNELS = 16  # with generic TIFF axes, the channel axis is the one of at most this many planes
# Pillow stops at 89 MP by default (a "decompression bomb" guard against hostile files); our users' images are
# legitimately that large, so the guard is lifted here, where every image is opened
Image.MAX_IMAGE_PIXELS = None
# tifffile logs what it finds wrong in a damaged file; with no handler configured, Python printed those lines beside
# our one-line error. They still reach any handler the user configures (the record propagates to the root logger).
logging.getLogger("tifffile").addHandler(logging.NullHandler())


def _encode_png(img: Image.Image) -> bytes:
    # zlib level 1: a 96×96 patch image encodes in 0.42 instead of 0.74 ms and its mask in 0.17 instead of 0.43 ms,
    # for files 0.4% and 9% larger (noisy pixels barely compress at any level)
    buffer = io.BytesIO()
    img.save(buffer, format="PNG", optimize=False, compress_level=1)
    return buffer.getvalue()


def _reason(err: BaseException) -> str:
    return " ".join(str(err).split()) or err.__class__.__name__


# ---- images in ----

def read_image(path: str | Path, keep_alpha: bool = False, channel_axis: str = "auto") -> np.ndarray:
    """Read an image as stored: H×W (one channel) or H×W×C, dtype uint8, uint16, int16 or float32.

    Conversions (documented in the README): 1-bit images become uint8 0/255; palette images (PNG, TIFF, ...) become
    8-bit RGB; CMYK and YCbCr become RGB; the alpha channel of RGBA and gray+alpha images is dropped unless
    ``keep_alpha``. Nothing is rescaled (2- and 4-bit gray PNGs hold 0..3 and 0..15). A TIFF holds one 2-D image:
    axes YX, YXS (samples last) or CYX/SYX (one plane per channel); a TIFF whose axes tifffile cannot name (pages of
    generic planes) is read by ``channel_axis`` (see :func:`_tiff_plan`).

    Args:
        path: the image file (PNG, TIFF, JPEG or BMP).
        keep_alpha: keep the alpha channel of RGBA (and gray+alpha) images as a channel.
        channel_axis: where the channels are in a TIFF without named axes: ``auto``, ``first`` or ``last``.

    Returns:
        The pixel array, C-contiguous.

    Raises:
        UserError: the file is missing, unreadable or truncated; holds an unsupported dtype, layout or mode; or a
            float image holds NaN or infinite values (naming the file).
    """
    path = Path(path)
    if channel_axis not in CHANNEL_AXES:
        raise ValueError(f"channel_axis must be one of {CHANNEL_AXES}, got {channel_axis!r}")
    if is_tiff(path):
        array, layout = _tiff_open(path, True, channel_axis)
        if layout.colormap is not None:
            array = layout.colormap[array]
        elif layout.alpha and not keep_alpha:
            array = np.ascontiguousarray(array[..., :-1])
    else:
        decoded = _decode(path)
        if isinstance(decoded, np.ndarray):  # a 16-bit colour PNG
            array = decoded[..., :-1] if decoded.shape[2] in (2, 4) and not keep_alpha else decoded
        else:
            array = _pillow_array(decoded, path, keep_alpha)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    return check_pixels(array, path)


def check_pixels(array: np.ndarray, path: str | Path) -> np.ndarray:
    """Check that an image array has a supported dtype and, if float, only finite values; return it contiguous.

    Raises:
        UserError: naming the file and the dtype, or the number of NaN/infinite pixels.
    """
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    if array.dtype.name not in IMAGE_DTYPES:
        raise _unsupported_dtype(path, array.dtype.name)
    if array.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise UserError(f"{path}: {bad} pixel value(s) are NaN or infinite (expected finite values)")
    return np.ascontiguousarray(array)


def _unsupported_dtype(path: str | Path, dtype: str) -> UserError:
    return UserError(f"{path}: unsupported pixel type {dtype} (expected one of {', '.join(IMAGE_DTYPES)})")


# Pillow scales the samples of 2- and 4-bit gray PNGs (raw modes) up to 0..255 by these factors
_LOW_BIT_GRAY = {"L;2": 85, "L;4": 17}


def _decode(path: Path) -> Image.Image | np.ndarray:
    """Decode a file with Pillow, with the values as stored: a PNG of 16 bits per sample in colour or gray+alpha,
    which Pillow would reduce to 8 bits, with pypng instead (as an H×W×planes uint16 array); a 2- or 4-bit gray PNG,
    which Pillow scales up to 0..255, scaled back (an 8-bit gray image of 0..3 or 0..15).

    Raises:
        UserError: the file is missing or unreadable, or its decoded pixels would not fit in the available memory.
    """
    try:
        with Image.open(path) as img:
            check_fits(path, img.size[1], img.size[0], len(img.getbands()) * (2 if ";16" in img.mode else 4
                                                                               if img.mode in ("I", "F") else 1))
            raw = _png_raw_mode(img)
            if raw in _PNG_16BIT_COLOUR_PLANES:
                return _read_png16(path)
            img.load()
            if raw in _LOW_BIT_GRAY:
                return Image.fromarray(np.asarray(img) // _LOW_BIT_GRAY[raw])
            return img.copy()
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (OSError, ValueError, SyntaxError, struct.error) as err:
        raise UserError(f"{path}: not a readable image ({_reason(err)})") from None


def available_memory() -> int:
    """Bytes of memory available to this process now (MemAvailable), or 0 where the system does not say."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


# decoded images below this size are not checked: reading /proc/meminfo for each of thousands of patches cost more
# than decoding them (3 of the 12 s that loading 8000 patch pairs took)
ALWAYS_FITS_BYTES = 64 * 2**20


def check_fits(path: str | Path, height: int, width: int, bytes_per_pixel: int) -> None:
    """Refuse an image whose decoded pixels would not fit in the available memory (PNG, JPEG and BMP are decoded
    whole; Pillow's decompression-bomb limit is lifted on purpose, this check takes its place). Images under
    ``ALWAYS_FITS_BYTES`` decoded pass unchecked.

    Raises:
        UserError: naming the file, its size and the memory it needs and has.
    """
    need = height * width * bytes_per_pixel
    if need >= ALWAYS_FITS_BYTES:
        check_memory(need, f"{path}: a {width}x{height} image", "decoded")


def check_memory(need: int, what: str, purpose: str) -> None:
    """Refuse a task that needs more memory than is available now (:func:`available_memory`; nothing is refused
    where the system does not say).

    Args:
        need: the bytes the task needs.
        what: what needs them, naming the file or key (the message starts with it).
        purpose: what the memory is for, after "needs N GiB of memory".

    Raises:
        UserError: ``<what> needs N GiB of memory <purpose>, M GiB is available``.
    """
    have = available_memory()
    if have and need > have:
        raise UserError(f"{what} needs {need / 2**30:.1f} GiB of memory {purpose}, {have / 2**30:.1f} GiB is available")


def _pillow_array(img: Image.Image, path: Path, keep_alpha: bool) -> np.ndarray:
    mode = img.mode
    if mode in ("L", "RGB", "F"):
        return np.asarray(img)
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(img).astype(np.uint16)
    if mode == "I" and _fits_uint16(img):  # Pillow opens some 16-bit gray files as 32-bit "I"
        return np.asarray(img).astype(np.uint16)
    if mode == "1":
        return np.asarray(img.convert("L"))
    if mode == "LA":
        return np.asarray(img) if keep_alpha else np.asarray(img.convert("L"))
    if mode in ("RGBA", "PA") or (mode == "P" and keep_alpha and "transparency" in img.info):
        return np.asarray(img.convert("RGBA")) if keep_alpha else np.asarray(img.convert("RGB"))
    if mode in ("P", "CMYK", "YCbCr"):
        return np.asarray(img.convert("RGB"))
    raise UserError(f"{path}: unsupported image mode {mode!r} (expected 8- or 16-bit gray, RGB or RGBA, or a TIFF)")


def _fits_uint16(img: Image.Image) -> bool:
    array = np.asarray(img)
    return bool(array.size) and int(array.min()) >= 0 and int(array.max()) <= 65535


def _png_raw_mode(img: Image.Image) -> str | None:
    """The raw mode of an opened, not yet decoded PNG: how its samples are stored (e.g. ``RGB;16B``, ``L;4``)."""
    return str(img.tile[0][3]) if img.format == "PNG" and img.tile else None


# the raw modes of PNGs of 16 bits per sample in colour or gray+alpha, which Pillow would reduce to 8 bits, and their
# planes (read with pypng instead, see _read_png16)
_PNG_16BIT_COLOUR_PLANES = {"RGB;16B": 3, "RGBA;16B": 4, "LA;16B": 2}


def _read_png16(path: Path) -> np.ndarray:
    import png

    try:
        with path.open("rb") as handle:  # closed here: pypng keeps a file it opened until garbage collection
            # read(), not asDirect(): the samples as stored, neither shifted down to an sBIT chunk's depth nor given
            # an alpha plane from a tRNS chunk (a colour marked transparent), as the header read_header gives says
            width, height, rows, info = png.Reader(file=handle).read()
            array = np.vstack([np.asarray(row, dtype=np.uint16) for row in rows])
    except (png.Error, OSError, ValueError) as err:
        raise UserError(f"{path}: not a readable image ({_reason(err)})") from None
    return array.reshape(height, width, info["planes"])


def is_tiff(path: Path) -> bool:
    """Whether a file is a TIFF or BigTIFF, by its first bytes: a TIFF is read by tifffile whatever its suffix
    (``.svs``, ``.btf``), where Pillow would read 16-bit colour as 8-bit and only the first of several pages. Every
    reader asks this first, so it also refuses what is no regular file (a pipe would block the read for ever).

    Raises:
        UserError: the file is missing, unreadable, or no regular file.
    """
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a pipe would block the read below for ever
            raise UserError(f"{path}: not a regular file (a folder, a pipe or a device), expected an image")
        with path.open("rb") as handle:
            return handle.read(4) in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
    except FileNotFoundError:
        raise UserError(f"{path}: file not found{' (a link to a missing file)' if path.is_symlink() else ''}") from None
    except OSError as err:
        raise UserError(f"{path}: not a readable image ({_reason(err)})") from None


@dataclass(frozen=True)
class ImageHeader:
    """What an image file holds, read without decoding its pixels: as :func:`read_image` would return it."""

    height: int
    width: int
    channels: int
    dtype: str


@dataclass(frozen=True)
class _TiffLayout:
    """How the first series of a TIFF maps to H×W or H×W×C: its header (channels counting alpha; of a palette image,
    its indices), whether the last channel is alpha, whether the channels come first in the file, the file's axes
    that are kept (see :func:`_tiff_plan`), and the colours of a palette image."""

    header: ImageHeader
    alpha: bool
    first: bool
    keep: tuple[int, ...]
    flags: dict = field(default_factory=dict)  # how tifffile opens the file (see _tiff_flags)
    colormap: np.ndarray | None = None  # of a palette image: N×3 uint8, the RGB of each index
    contiguous: tuple[int, tuple[int, ...], np.dtype] | None = None  # (offset, shape, file's dtype): see _Contiguous

    @property
    def rows_and_columns(self) -> tuple[int, int]:
        """The file's axes of the rows and the columns: those the plan made them, not those tifffile names Y and X
        (pages of generic planes read as H×W×C, tifffile's QYX, have their rows on the page axis)."""
        return self.keep[self.first], self.keep[self.first + 1]


def _tiff_flags(tif) -> dict:
    """tifffile's flags for opening a TIFF as one image: ``is_shaped=False`` where its pages were written one at a
    time (``imwrite(..., append=True)``, one plane each), so that tifffile takes every page for a series of its own
    and the first series is one plane of several. Without the flag they form one series of generic planes (``IYX``),
    read by ``channel_axis`` like any multi-page TIFF of plain planes. Series of different shapes (a whole-slide
    image's label, macro and thumbnail) are left alone: the first is the image."""
    series = tif.series
    one_by_one = tif.is_shaped and len(series) > 1 and all(
        len(s.pages) == 1 and s.shape == series[0].shape and s.dtype == series[0].dtype for s in series)
    return {"is_shaped": False} if one_by_one else {}


def _tiff_open(path: Path, read: bool, channel_axis: str) -> tuple[np.ndarray | None, _TiffLayout]:
    """The first series of a TIFF, opened once: its pixels (if ``read``) brought to H×W or H×W×C, and its layout.
    Of a pyramid (a whole-slide image, an OME-TIFF with sub-resolutions) the full resolution is read.

    Raises:
        UserError: the file is no TIFF, holds no image, or is cut short (a strip or tile lies past its end; found
            here from the header, not hours into segmenting it), or its pixels do not decode.
    """
    import tifffile

    try:
        with contextlib.ExitStack() as files:
            tif = files.enter_context(tifffile.TiffFile(path))
            flags = _tiff_flags(tif)
            if flags:
                tif = files.enter_context(tifffile.TiffFile(path, **flags))
            if not tif.series:
                raise UserError(f"{path}: not a readable image (the TIFF holds no image)")
            series = tif.series[0].levels[0]
            _check_data_within(series.pages, tif.filehandle.size, path)
            axes, shape, dtype = series.axes, tuple(series.shape), np.dtype(series.dtype)
            tag = tif.pages[0].tags.get("ExtraSamples")
            colormap = tif.pages[0].colormap if tif.pages[0].photometric == tifffile.PHOTOMETRIC.PALETTE else None
            contiguous = None if series.dataoffset is None or dtype == np.bool_ else (
                series.dataoffset, shape, np.dtype(tif.byteorder + dtype.char))
            array = series.asarray() if read else None
    except (MemoryError, UserError):
        raise
    except Exception as err:  # noqa: BLE001 - tifffile's codecs raise their own errors (zlib.error, LZMAError, ...)
        raise UserError(f"{path}: not a readable image ({_reason(err)})") from None
    keep, first = _tiff_plan(axes, shape, channel_axis, path)
    kept = [shape[i] for i in keep]
    height, width, channels = (kept[1], kept[2], kept[0]) if first else (*kept, 1)[:3]
    extra = tag.value if tag is not None else ()
    # tifffile marks the last sample of every 4-sample array it writes as alpha, whatever the data; only the
    # interleaved 8-bit RGBA and gray+alpha of image editors are taken for alpha, so no channel of a scientific
    # image (16-bit, float, or one plane per channel) is dropped
    marked = any(int(v) in (1, 2) for v in (extra if isinstance(extra, tuple) else (extra,)))
    alpha = marked and channels in (2, 4) and dtype == np.uint8 and not first
    if array is not None:
        array = array.reshape(kept)
        array = np.ascontiguousarray(np.moveaxis(array, 0, -1) if first else array)
    header = ImageHeader(height, width, channels, dtype.name)
    # a palette holds colours for one plane of 8- or 16-bit indices; any other is read as stored
    palette = _palette(colormap, dtype) if colormap is not None and channels == 1 and dtype in (np.uint8, np.uint16) \
        else None
    return array, _TiffLayout(header, alpha, first, tuple(keep), flags, palette, contiguous)


class _Contiguous:
    """The pixels of a TIFF stored uncompressed in one block, as tifffile writes a NumPy array by default (a single
    strip of the whole image): indexed like an array, each read maps the file, copies the region asked for in native
    byte order and unmaps it. Through tifffile's zarr store, each read decoded the whole strip it touched, there the
    whole image, for every window or band. The file stays open until :meth:`close`, so the reads stay on it even if
    another file takes its name.

    Args:
        path: the TIFF.
        offset, shape, dtype: where its pixels start, their shape and type in the file's byte order
            (``_TiffLayout.contiguous``).
    """

    def __init__(self, path: Path, offset: int, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.offset, self.shape, self.dtype = offset, shape, dtype
        self.ndim = len(shape)
        self.file = path.open("rb")

    def __getitem__(self, index: tuple[slice, ...]) -> np.ndarray:
        pixels = np.memmap(self.file, self.dtype, "r", self.offset, self.shape)
        return np.array(pixels[index], dtype=self.dtype.newbyteorder("="))  # a copy: the mapping goes with pixels

    def close(self) -> None:
        self.file.close()


def _palette(colormap: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """The RGB of every index of ``dtype`` (2^bits×3 uint8) from a TIFF's 3×N 16-bit colour map: its colours to
    8 bits, as Pillow reads a palette TIFF (image software writes 8-bit ones × 256 or 257); an index past the map's
    last colour is black, as there."""
    size = 1 << (8 * dtype.itemsize)
    colours = (np.asarray(colormap) >> 8).astype(np.uint8).T[:size]
    palette = np.zeros((size, 3), np.uint8)
    palette[:len(colours)] = colours
    return palette


def _check_data_within(pages: Iterable, size: int, path: Path) -> None:
    """Every strip or tile of the pages ends within the file's ``size`` bytes (a download or copy cut short)."""
    for page in pages:
        if page is None:
            continue
        offsets, counts = np.asarray(page.dataoffsets, np.int64), np.asarray(page.databytecounts, np.int64)
        end = int((offsets + counts).max(initial=0))
        if end > size:
            raise UserError(f"{path}: not a readable image (truncated: its pixel data runs to byte {end}, the file "
                            f"has {size})")


def _tiff_header(layout: _TiffLayout, keep_alpha: bool, path: Path, mask: bool = False) -> ImageHeader:
    """The header :func:`read_image` returns for a TIFF of this layout (alpha dropped unless kept, 1 bit as uint8);
    a ``mask`` may hold any integer type (label images often come as int32), its values are checked as it is read.

    Raises:
        UserError: an unsupported pixel type.
    """
    header = layout.header
    if layout.colormap is not None and not mask:  # a palette image is read as its colours
        return ImageHeader(header.height, header.width, 3, "uint8")
    if mask and np.dtype(header.dtype).kind not in "iub":
        raise UserError(f"{path}: unsupported mask pixel type {header.dtype} (expected integer class indices)")
    if not mask and header.dtype not in IMAGE_DTYPES and header.dtype != "bool":
        raise _unsupported_dtype(path, header.dtype)
    dtype = "uint8" if header.dtype == "bool" else header.dtype
    return ImageHeader(header.height, header.width, header.channels - (layout.alpha and not keep_alpha), dtype)


def _tiff_plan(axes: str, shape: tuple[int, ...], channel_axis: str, path: Path) -> tuple[list[int], bool]:
    """How a TIFF's array becomes H×W or H×W×C: the file's axes that are kept (those not of length 1, in order:
    rows, columns and channels, or channels first), and whether the channels come first (to be moved last).

    The rule: axes of length 1 are dropped, except rows and columns (Y, X) where the file names them. Two axes are
    YX. Of three, samples last (``YXS``) is H×W×C and one plane
    per channel (``SYX``, ``CYX``) is C×H×W. Where the file does not say (pages of generic planes, tifffile's ``Q``
    or ``I``), ``channel_axis`` decides: ``first`` or ``last``; ``auto`` takes the axis of at most 16 planes, the
    first if both are. Anything else (a Z stack, a time series, 4-D data) is refused.

    Raises:
        UserError: unsupported axes, or generic axes whose channel axis ``auto`` cannot tell.
    """
    if len(shape) == 3 and axes[0] in "QI" and axes[1:] == "YX":
        return _generic_pages_plan(shape, channel_axis, axes, path)
    # rows and columns stay where the file names them (an image one pixel high is still 2-D); other generic layouts
    # (Q, I) name no rows, so there every axis of length 1 goes
    named_rows = not set(axes) & set("QI")
    keep = [i for i, n in enumerate(shape) if n != 1 or (named_rows and axes[i] in "YX")]
    named, kept = "".join(axes[i] for i in keep), [shape[i] for i in keep]
    if len(kept) == 2:
        return keep, False
    if len(kept) != 3 or not ((named[1:] == "YX" and named[0] in "SCQI") or (named[:2] == "YX" and named[2] in "SCQ")):
        raise UserError(f"{path}: unsupported TIFF axes {axes!r} of shape {shape} (expected one 2-D image: YX, "
                        "YXS (samples last) or CYX (one plane per channel))")
    if named[0] in "SC":
        return keep, True
    if named[2] in "SC":
        return keep, False
    return keep, _channels_first(channel_axis, kept[0], kept[2], axes, shape, path)


def _channels_first(channel_axis: str, first: int, last: int, axes: str, shape: tuple[int, ...], path: Path) -> bool:
    """Whether the first of the two candidate channel axes of generic TIFF axes, of ``first`` and ``last`` planes, is
    the channel axis: as ``channel_axis`` says, or (``auto``) the first if it has at most 16 planes, else the last if
    it has.

    Raises:
        UserError: ``auto`` and neither has at most 16 planes.
    """
    if channel_axis != "auto":
        return channel_axis == "first"
    if first <= MAX_AUTO_CHANNELS or last <= MAX_AUTO_CHANNELS:
        return first <= MAX_AUTO_CHANNELS
    raise UserError(f"{path}: TIFF axes {axes!r} of shape {shape}: cannot tell the channel axis (no side has at "
                    f"most {MAX_AUTO_CHANNELS} planes); set data.channel_axis to 'first' or 'last'")


def _generic_pages_plan(shape: tuple[int, ...], channel_axis: str, axes: str, path: Path) -> tuple[list[int], bool]:
    """:func:`_tiff_plan` for pages of generic planes (tifffile's ``QYX`` or ``IYX``): the pages are the channels
    (``first``: C×H×W) or the rows (``last``: H pages of W×C), as ``channel_axis`` says (``auto``: the pages if
    there are at most 16, else the planes' columns if at most 16). The rows and columns are kept even of length 1
    (a 1-pixel-high image was read with its channels as rows); only a channel axis of length 1 goes."""
    first = _channels_first(channel_axis, shape[0], shape[2], axes, shape, path)
    channels = 0 if first else 2
    if shape[channels] == 1:
        return [i for i in range(3) if i != channels], False
    return [0, 1, 2], first


# Pillow modes: (channels, channels with alpha kept, dtype) as read_image returns them
_PILLOW_MODES = {"1": (1, 1, "uint8"), "L": (1, 1, "uint8"), "LA": (1, 2, "uint8"), "RGB": (3, 3, "uint8"),
                 "RGBA": (3, 4, "uint8"), "PA": (3, 4, "uint8"), "P": (3, 3, "uint8"), "CMYK": (3, 3, "uint8"),
                 "YCbCr": (3, 3, "uint8"), "I;16": (1, 1, "uint16"), "I;16B": (1, 1, "uint16"),
                 "I;16L": (1, 1, "uint16"), "I;16N": (1, 1, "uint16"), "I": (1, 1, "uint16"),
                 "F": (1, 1, "float32")}


def read_header(path: str | Path, keep_alpha: bool = False, channel_axis: str = "auto", mask: bool = False
                ) -> ImageHeader:
    """Size, channel count and dtype of an image as :func:`read_image` would return it, from the file's header
    (no pixel is decoded), so that a whole input set is checked before any output is written; with ``mask``, of a
    label mask (a TIFF of any integer type).

    Raises:
        UserError: the file is missing, not a readable image, or of an unsupported layout or mode.
    """
    path = Path(path)
    if is_tiff(path):
        return _tiff_header(_tiff_open(path, False, channel_axis)[1], keep_alpha, path, mask)
    try:
        with Image.open(path) as img:
            (width, height), mode, info = img.size, img.mode, img.info
            raw = _png_raw_mode(img)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (OSError, ValueError, SyntaxError, struct.error) as err:
        raise UserError(f"{path}: not a readable image ({_reason(err)})") from None
    if raw in _PNG_16BIT_COLOUR_PLANES:
        planes = _PNG_16BIT_COLOUR_PLANES[raw]
        return ImageHeader(height, width, planes - (planes in (2, 4) and not keep_alpha), "uint16")
    if mode not in _PILLOW_MODES:
        raise UserError(f"{path}: unsupported image mode {mode!r} (expected 8- or 16-bit gray, RGB or RGBA, or a TIFF)")
    plain, with_alpha, dtype = _PILLOW_MODES[mode]
    if mode == "P" and "transparency" in info:
        with_alpha = 4
    return ImageHeader(height, width, with_alpha if keep_alpha else plain, dtype)


def _cancel_pending_reads() -> None:
    """Cancel the reads zarr left pending on its event loop after one of them failed: it reads a region's tiles as
    concurrent tasks, and the others, destroyed at exit, printed about 26 lines ("Task was destroyed but it is
    pending!") under the one-line error. A no-op where zarr's loop cannot be reached (another zarr version)."""
    import asyncio

    try:
        from zarr.core import sync

        loop = sync._get_loop()
    except Exception:  # noqa: BLE001 - internals of zarr 3; without them the error is still right, only noisier
        return

    async def cancel() -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    try:
        asyncio.run_coroutine_threadsafe(cancel(), loop).result(timeout=10)
    except Exception:  # noqa: BLE001 - best effort, as above
        pass


class ImageRows:
    """An image read band by band: ``rows(top, bottom)`` returns those rows as :func:`read_image` would.

    A TIFF (tiled or striped, BigTIFF too) is decoded only where asked, through tifffile's zarr store (pixels stored
    uncompressed in one block: straight from the file, see :class:`_Contiguous`), so an image larger than memory can
    be streamed; PNG, JPEG and BMP cannot be read partially and are decoded whole (refused
    when they would not fit, see :func:`check_fits`). Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, path: str | Path, keep_alpha: bool = False, channel_axis: str = "auto",
                 mask_colors: list[tuple[int, int, int]] | None = None):
        self.path = Path(path)
        self.keep_alpha, self._whole, self._store, self._zarr = keep_alpha, None, None, None
        self.mask_colors = mask_colors  # read as a label mask: rows are uint8 class indices (see read_mask)
        if is_tiff(self.path):
            import tifffile
            import zarr

            _, layout = _tiff_open(self.path, False, channel_axis)
            self.header = _tiff_header(layout, keep_alpha, self.path, mask_colors is not None)
            self._alpha, self._first, self._keep = layout.alpha, layout.first, layout.keep
            self._colormap = layout.colormap if mask_colors is None else None  # a palette mask: its indices
            self._y, self._x = layout.rows_and_columns
            try:  # a pyramid's full size
                if layout.contiguous is not None:
                    self._zarr = _Contiguous(self.path, *layout.contiguous)
                else:
                    self._store = tifffile.imread(self.path, aszarr=True, series=0, level=0, **layout.flags)
                    self._zarr = zarr.open(self._store, mode="r")
            except (tifffile.TiffFileError, OSError, ValueError, KeyError, TypeError) as err:
                self.close()
                raise UserError(f"{self.path}: not a readable image ({_reason(err)})") from None
        else:
            self.header = read_header(self.path, keep_alpha, channel_axis, mask_colors is not None)
            self._whole = read_mask(self.path, mask_colors) if mask_colors is not None else \
                read_image(self.path, keep_alpha, channel_axis)

    def rows(self, top: int, bottom: int, left: int = 0, right: int | None = None) -> np.ndarray:
        """Rows ``top .. bottom`` (h×W or h×W×C, the stored dtype), or only their columns ``left .. right``.

        Raises:
            UserError: the file cannot be decoded there, or a float band holds NaN or infinite values.
        """
        right = self.header.width if right is None else right
        where = f"{self.path} (rows {top}..{bottom}, columns {left}..{right})"
        if self._whole is not None:
            return self._whole[top:bottom, left:right]
        axes = {self._y: slice(top, bottom), self._x: slice(left, right)}
        index = tuple(axes.get(i, slice(None)) for i in range(self._zarr.ndim))
        try:
            band = np.asarray(self._zarr[index])
        except MemoryError:
            raise
        except Exception as err:  # noqa: BLE001 - a corrupt tile: any codec's error (zlib.error, LZMAError, ...)
            _cancel_pending_reads()
            raise UserError(f"{where}: not a readable image ({_reason(err)})") from None
        band = band.reshape([band.shape[i] for i in self._keep])  # the axes _tiff_plan keeps
        if self._first:
            band = np.moveaxis(band, 0, -1)
        if self._alpha and not self.keep_alpha:
            band = band[..., :-1]
        if band.ndim == 3 and band.shape[2] == 1:
            band = band[..., 0]
        if self._colormap is not None:
            band = self._colormap[band]
        if self.mask_colors is not None:
            return mask_indices(band, self.mask_colors, where)
        return check_pixels(band, where)

    @property
    def shape(self) -> tuple[int, ...]:
        """H×W (a mask's class indices, or one channel), or H×W×C: the shape of the array :meth:`rows` reads from."""
        h = self.header
        one = h.channels == 1 or self.mask_colors is not None  # (a colour mask reads as indices)
        return (h.height, h.width) if one else (h.height, h.width, h.channels)

    @property
    def decoded_at_once(self) -> int:
        """The most pixels one read may decode, whatever its size: the whole image for a PNG (decoded on opening) or
        a compressed TIFF of one strip, a strip or tile otherwise (a row for an uncompressed TIFF of one block)."""
        if self._whole is not None:
            return self.header.height * self.header.width
        if isinstance(self._zarr, _Contiguous):
            return self.header.width
        chunks = self._zarr.chunks
        return chunks[self._y] * chunks[self._x]

    def __getitem__(self, index: int | slice | tuple[int | slice, int | slice]) -> np.ndarray:
        """``image[a:b]``, ``image[a:b, c:d]``, ``image[i]``...: those rows and columns by :meth:`rows`, indexed as
        NumPy indexes an array (bounds clipped, negative indices from the end, an integer drops its axis), so that
        code written for an array reads a window of the file instead.

        Raises:
            IndexError: an integer index out of range; ValueError: a slice with a step other than 1.
        """
        rows, columns = index if isinstance(index, tuple) else (index, slice(None))
        (top, bottom, drop_row), (left, right, drop_column) = (
            _index_range(i, n, axis) for i, n, axis in ((rows, self.header.height, 0),
                                                        (columns, self.header.width, 1)))
        window = self.rows(top, bottom, left, right)
        return window[(0 if drop_row else slice(None), 0 if drop_column else slice(None))]

    def bands(self, band_pixels: int = 2**20) -> Iterator[np.ndarray]:
        """The whole image as :meth:`rows` gives it, top to bottom, in bands of rows of about ``band_pixels`` pixels
        (at least one row): a pass over an image of any size in bounded memory.

        Raises:
            UserError: as :meth:`rows`, naming the band.
        """
        height, step = self.header.height, max(1, band_pixels // self.header.width)
        for top in range(0, height, step):
            yield self.rows(top, min(height, top + step))

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
        if isinstance(self._zarr, _Contiguous):
            self._zarr.close()

    def __enter__(self) -> ImageRows:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _index_range(index: int | slice, size: int, axis: int) -> tuple[int, int, bool]:
    """``start, stop, is_integer`` of a NumPy index along an axis of ``size`` (see :meth:`ImageRows.__getitem__`)."""
    if isinstance(index, slice):
        start, stop, step = index.indices(size)
        if step != 1:
            raise ValueError("ImageRows reads rows and columns with a step of 1")
        return start, max(start, stop), False
    position = operator.index(index)
    if not -size <= position < size:
        raise IndexError(f"index {position} is out of bounds for axis {axis} with size {size}")
    position %= size
    return position, position + 1, True


# ---- images out ----

def image_suffix(dtype: np.dtype | str, channels: int) -> str:
    """The file format that keeps an image exactly: ``.png`` for 8-bit gray or RGB (the published layout) and for
    16-bit gray, ``.tif`` (uncompressed, tifffile) for every other dtype and channel count."""
    name = np.dtype(dtype).name
    if (name == "uint8" and channels in (1, 3)) or (name == "uint16" and channels == 1):
        return ".png"
    return ".tif"


def encode_image(image: np.ndarray) -> bytes:
    """The bytes of ``image`` (H×W or H×W×C) in the format :func:`image_suffix` chooses; decoding gives it back
    exactly (H×W×1 as H×W, as :func:`read_image` returns one channel)."""
    image = np.ascontiguousarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image)
    channels = 1 if image.ndim == 2 else image.shape[2]
    if image_suffix(image.dtype, channels) == ".png":
        return _encode_png(Image.fromarray(image))
    import tifffile

    buffer = io.BytesIO()
    # minisblack + contig: C samples per pixel, never C pages or an RGB interpretation
    tifffile.imwrite(buffer, image, photometric="minisblack", planarconfig="contig" if image.ndim == 3 else None)
    return buffer.getvalue()


def save_image(path: str | Path, image: np.ndarray) -> None:
    """Save an image atomically, exactly (the format follows :func:`image_suffix`; ``path`` must carry it)."""
    channels = 1 if image.ndim == 2 else image.shape[2]
    suffix = image_suffix(image.dtype, channels)
    if Path(path).suffix.lower() != suffix:
        raise ValueError(f"{path}: a {image.dtype} image of {channels} channel(s) is saved as {suffix}")
    atomic_write_bytes(path, encode_image(image))


def _tiles(bands: Iterable[np.ndarray], height: int, width: int, tile: int) -> Iterator[np.ndarray]:
    """Tiles in row-major order from bands of rows in order (buffered until a row of tiles is complete), or read one
    at a time from an array (NumPy, zarr)."""
    if hasattr(bands, "shape"):
        for top in range(0, height, tile):
            for left in range(0, width, tile):
                yield np.asarray(bands[top:top + tile, left:left + tile])
        return
    buffered, top = [], 0
    for band in bands:
        buffered.append(band)
        rows = sum(b.shape[0] for b in buffered)
        while rows >= tile or (rows and top + rows == height):
            block = np.concatenate(buffered) if len(buffered) > 1 else buffered[0]
            take = min(tile, rows)
            for left in range(0, width, tile):
                yield block[:take, left:left + tile]
            buffered, top, rows = [block[take:]], top + take, rows - take
    received = top + sum(b.shape[0] for b in buffered)
    if received != height:
        raise ValueError(f"the bands covered {received} of {height} rows")


def write_tiled_tiff(path: str | Path, bands: Iterable[np.ndarray], height: int, width: int, dtype: np.dtype | str,
                     channels: int = 1, colors: list[tuple[int, int, int]] | None = None, tile: int = 256) -> None:
    """Write an image given as bands of rows (top to bottom) as a tiled, zlib-compressed BigTIFF, atomically, holding
    one row of tiles at a time; or given as an array (e.g. a zarr array on disk), read one tile at a time. With
    ``colors`` it is a palette image (values = class indices, the colormap shows the class colours), which QuPath,
    Fiji/ImageJ and napari open as a label image.

    Raises:
        UserError: the file cannot be written (naming it).
    """
    import tifffile

    shape = (height, width) if channels == 1 else (height, width, channels)
    extra: dict = {"photometric": "minisblack"}
    if colors is not None:
        colormap = np.zeros((3, 256), np.uint16)
        colormap[:, :len(colors)] = np.asarray(colors, np.uint16).T * 257
        colormap[:, len(colors):] = np.arange(len(colors), 256, dtype=np.uint16) * 257  # gray ramp, as save_mask
        extra = {"photometric": "palette", "colormap": colormap}
    elif channels > 1:
        extra["planarconfig"] = "contig"
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=True) as writer:
        writer.write(_tiles(bands, height, width, tile), shape=shape, dtype=np.dtype(dtype), tile=(tile, tile),
                     compression="zlib", **extra)


# ---- masks ----

def palette_bytes(colors: list[tuple[int, int, int]]) -> list[int]:
    """A 256-entry PIL palette whose first entries are the class colours (the rest gray ramp, to spot stray values)."""
    flat = [v for c in colors for v in c]
    ramp = [v for i in range(len(colors), 256) for v in (i, i, i)]
    return flat + ramp


def save_mask(path: str | Path, mask: np.ndarray, colors: list[tuple[int, int, int]]) -> None:
    """Save a label mask (H×W of class indices) as an 8-bit palette PNG showing the class colours, atomically.

    The pixel values are the class indices, so the file is exact for training and readable in any viewer.

    Raises:
        ValueError: a value that is no class index (a float, or outside ``0..len(colors) - 1``): as uint8 it would
            wrap or truncate into another class without a word.
    """
    mask = np.asarray(mask)
    if mask.dtype.kind not in "iub" or (mask.size and not 0 <= int(mask.min()) <= int(mask.max()) < len(colors)):
        raise ValueError(f"{path}: a mask of class indices 0..{len(colors) - 1} is expected, got {mask.dtype.name} "
                         f"values" + (f" {int(mask.min())}..{int(mask.max())}" if mask.dtype.kind in "iub" else ""))
    img = Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8), mode="P")
    img.putpalette(palette_bytes(colors))
    atomic_write_bytes(path, _encode_png(img))


def read_mask(path: str | Path, colors: list[tuple[int, int, int]]) -> np.ndarray:
    """Read a label mask as uint8 H×W of class indices.

    Index masks (8- or 16-bit gray or palette PNG, or an integer TIFF: pixel value = class index) are read as they
    are; colour masks (8-bit RGB/RGBA) are mapped through the class colours.

    Raises:
        UserError: the file is unreadable, or holds a value or colour that is no class (naming both).
    """
    path = Path(path)
    if is_tiff(path):
        array = _tiff_open(path, True, "auto")[0]  # a palette TIFF by its indices
        return mask_indices(array, colors, path)
    img = _decode(path)
    if isinstance(img, np.ndarray):  # 16 bits per sample in colour
        array = _eight_bit_colours(img, path)
    elif img.mode in ("L", "P", "1", "I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(img)  # 1 bit: bool, so 0 and 1
    elif img.mode in ("RGB", "RGBA"):
        array = np.asarray(img.convert("RGB"))
    else:
        raise _unsupported_mask_mode(path, img.mode)
    return mask_indices(array, colors, path)


def _unsupported_mask_mode(path: Path, mode: str) -> UserError:
    return UserError(f"{path}: unsupported mask mode {mode!r} (expected an index image (1-, 2-, 4-, 8- or 16-bit gray "
                     "or palette) or an RGB colour image)")


def _eight_bit_colours(array: np.ndarray, path: Path) -> np.ndarray:
    """The 8-bit RGB colours of a colour mask stored with 16 bits per sample: each an 8-bit colour × 257, as image
    software widens them, else refused (keeping the high bytes alone would merge colours into wrong classes)."""
    if array.shape[2] not in (3, 4):
        raise _unsupported_mask_mode(path, "LA")
    rgb = array[..., :3]
    if np.any(rgb % 257):
        raise UserError(f"{path}: 16-bit colours that are no 8-bit colours (expected an 8-bit colour mask, or 16-bit "
                        "values of 257 × an 8-bit one)")
    return (rgb // 257).astype(np.uint8)


def mask_indices(array: np.ndarray, colors: list[tuple[int, int, int]], path: str | Path) -> np.ndarray:
    """A decoded mask (or a band of one) as uint8 class indices: index values checked, colours mapped.

    Raises:
        UserError: a value or colour that is no class, or an unsupported layout (naming ``path``).
    """
    n = len(colors)
    if array.ndim == 3 and array.shape[2] in (3, 4) and array.dtype == np.uint8:
        return _colors_to_indices(array[..., :3], colors, path)
    if array.ndim != 2 or array.dtype.kind not in "iub":
        raise UserError(f"{path}: unsupported mask of shape {array.shape} and type {array.dtype.name} (expected an "
                        "H×W image of integer class indices, or an 8-bit RGB colour image)")
    if array.size and (int(array.max()) >= n or (array.dtype.kind == "i" and int(array.min()) < 0)):
        bad = sorted(int(v) for v in np.unique(array[(array >= n) | (array < 0)]))[:5]
        raise UserError(f"{path}: mask values {bad} are not class indices (expected 0..{n - 1})")
    return array.astype(np.uint8, copy=False)


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
