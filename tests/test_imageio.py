"""Images in as they are stored: every dtype, channel count and format reads back bit for bit; masks in 8 and 16 bit,
PNG and TIFF; each unsupported file gets one clear error naming it."""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import png
import pytest
import tifffile
from PIL import Image

from lib.core.errors import UserError
from lib.core.imageio import (
    ImageHeader,
    ImageRows,
    encode_image,
    image_suffix,
    read_header,
    read_image,
    read_mask,
    save_image,
    save_mask,
)
from tests.conftest import REPO

RNG = np.random.default_rng(0)


def _values(dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    if dtype == "float32":
        return RNG.uniform(-1000, 3000, shape).astype(np.float32)
    info = np.iinfo(dtype)
    return RNG.integers(info.min, info.max, shape, endpoint=True).astype(dtype)


def _pillow(path: Path, a: np.ndarray, mode: str | None = None) -> None:
    Image.fromarray(a, mode).save(path) if mode else Image.fromarray(a).save(path)


def _png16(path: Path, a: np.ndarray) -> None:
    h, w, c = a.shape
    with path.open("wb") as handle:
        png.Writer(w, h, greyscale=c in (1, 2), alpha=c in (2, 4), bitdepth=16).write(handle, a.reshape(h, -1))


def _tiff(path: Path, a: np.ndarray, **kw) -> None:
    tifffile.imwrite(path, a, **kw)


def _png_low_bit(bits: int) -> Callable[[Path, np.ndarray], None]:
    """A writer of a 1-, 2- or 4-bit gray PNG (pypng), values as given."""
    def write(path: Path, a: np.ndarray) -> None:
        with path.open("wb") as handle:
            png.Writer(a.shape[1], a.shape[0], greyscale=True, bitdepth=bits).write(handle, a.tolist())
    return write


def _with_chunk(write: Callable[[Path, np.ndarray], None], kind: bytes, data: bytes
                ) -> Callable[[Path, np.ndarray], None]:
    """``write``, then a chunk inserted before the PNG's pixel data (e.g. sBIT, the significant bits)."""
    def write_with_chunk(path: Path, a: np.ndarray) -> None:
        write(path, a)
        raw = path.read_bytes()
        at = raw.index(b"IDAT") - 4
        chunk = struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        path.write_bytes(raw[:at] + chunk + raw[at:])
    return write_with_chunk


PALETTE = np.array([(0, 0, 0), (230, 40, 40), (120, 250, 80), (7, 8, 9)], np.uint8)


def _palette_tiff(path: Path, a: np.ndarray) -> None:
    """Indices ``a`` with PALETTE's colours as image software writes them (16 bits, 8-bit value × 257)."""
    colormap = np.zeros((3, 256), np.uint16)
    colormap[:, :len(PALETTE)] = PALETTE.T.astype(np.uint16) * 257
    tifffile.imwrite(path, a.astype(np.uint8), photometric="palette", colormap=colormap)


def _palette_png(path: Path, a: np.ndarray) -> None:
    img = Image.fromarray(a.astype(np.uint8), "P")
    img.putpalette(PALETTE.flatten().tolist())
    img.save(path)


_BITS, _INDICES = RNG.integers(0, 2, (9, 7)).astype(np.uint8), RNG.integers(0, 4, (9, 7))


# (id, file name, writer, stored array, expected array) — reading gives the expected array exactly
ROUND_TRIPS = [
    ("png-8-gray", "a.png", _pillow, _values("uint8", (9, 7)), None),
    ("png-8-rgb", "a.png", _pillow, _values("uint8", (9, 7, 3)), None),
    ("png-16-gray-12-bit", "a.png", _pillow, _values("uint16", (9, 7)) >> 4, None),
    ("png-16-gray-full", "a.png", _pillow, _values("uint16", (9, 7)), None),
    ("png-16-rgb", "a.png", _png16, _values("uint16", (9, 7, 3)), None),
    # an sBIT chunk (12 significant bits, as cameras write) does not shift the samples down: they stay as stored
    ("png-16-rgb-sbit-12", "a.png", _with_chunk(_png16, b"sBIT", bytes([12] * 3)), _values("uint16", (9, 7, 3)) >> 4,
     None),
    # 2- and 4-bit gray: the values stored (Pillow scales them up to 0..255 by 85 and 17)
    ("png-2-bit-gray", "a.png", _png_low_bit(2), RNG.integers(0, 4, (9, 7)).astype(np.uint8), None),
    ("png-4-bit-gray", "a.png", _png_low_bit(4), RNG.integers(0, 16, (9, 7)).astype(np.uint8), None),
    ("png-1-bit-gray", "a.png", _png_low_bit(1), _BITS, _BITS * np.uint8(255)),
    # a palette image is read as its colours, TIFF as PNG
    ("tiff-palette", "a.tif", _palette_tiff, _INDICES, PALETTE[_INDICES]),
    ("png-palette", "a.png", _palette_png, _INDICES, PALETTE[_INDICES]),
    ("tiff-uint8-gray", "a.tif", _tiff, _values("uint8", (9, 7)), None),
    ("tiff-uint16-gray", "a.tif", _tiff, _values("uint16", (9, 7)), None),
    ("tiff-int16-gray", "a.tiff", _tiff, _values("int16", (9, 7)), None),
    ("tiff-float32-gray", "a.tif", _tiff, _values("float32", (9, 7)), None),
    ("tiff-uint16-rgb", "a.tif", _tiff, _values("uint16", (9, 7, 3)), None),
    ("tiff-uint16-4ch-samples", "a.tif", lambda p, a: _tiff(p, a, photometric="minisblack", planarconfig="contig"),
     _values("uint16", (9, 7, 4)), None),
    ("tiff-float32-5ch-samples", "a.tif", lambda p, a: _tiff(p, a, photometric="minisblack", planarconfig="contig"),
     _values("float32", (9, 7, 5)), None),
    ("tiff-uint16-cyx-imagej", "a.tif", lambda p, a: _tiff(p, np.moveaxis(a, -1, 0), imagej=True,
                                                             metadata={"axes": "CYX"}),
     _values("uint16", (9, 7, 3)), None),
    ("tiff-uint16-pages-as-channels", "a.tif", lambda p, a: _tiff(p, np.moveaxis(a, -1, 0),
                                                                    photometric="minisblack"),
     _values("uint16", (30, 20, 4)), None),
    ("tiff-uint16-planar-rgb", "a.tif", lambda p, a: _tiff(p, np.moveaxis(a, -1, 0), photometric="rgb",
                                                             planarconfig="separate"),
     _values("uint16", (9, 7, 3)), None),
    # tifffile writes an H×W×C array with photometric minisblack as H pages of W×C (axes QYX): rows are pages
    ("tiff-uint16-pages-of-rows", "a.tif", lambda p, a: _tiff(p, a, photometric="minisblack"),
     _values("uint16", (24, 30, 3)), None),
    ("tiff-float32-pages-of-rows-wide", "a.tif", lambda p, a: _tiff(p, a, photometric="minisblack"),
     _values("float32", (20, 40, 2)), None),
    # one pixel high or wide: rows and columns of length 1 stay (a 1×W×3 image was read as a W×3 gray one)
    ("tiff-uint16-one-row", "a.tif", _tiff, _values("uint16", (1, 40)), None),
    ("tiff-uint16-rgb-one-row", "a.tif", _tiff, _values("uint16", (1, 40, 3)), None),
    ("tiff-float32-one-column", "a.tif", _tiff, _values("float32", (40, 1)), None),
    ("tiff-uint16-planar-one-row", "a.tif", lambda p, a: _tiff(p, np.moveaxis(a, -1, 0), photometric="minisblack",
                                                                 planarconfig="separate"),
     _values("uint16", (1, 40, 4)), None),
    # pages of generic planes, one pixel high: the pages are the channels, the length-1 rows stay (they were dropped
    # and the pages read as rows: a 2×40 gray image)
    ("tiff-uint16-pages-as-channels-one-row", "a.tif", lambda p, a: _tiff(p, np.moveaxis(a, -1, 0),
                                                                            photometric="minisblack"),
     _values("uint16", (1, 40, 2)), None),
    ("tiff-uint16-appended-pages-one-row", "a.tif",
     lambda p, a: [tifffile.imwrite(p, a[..., k], append=True) for k in range(a.shape[2])],
     _values("uint16", (1, 40, 3)), None),
]


@pytest.mark.parametrize("case", ROUND_TRIPS, ids=[c[0] for c in ROUND_TRIPS])
def test_images_read_back_exactly(tmp_path, case):
    _, name, write, stored, expected = case
    write(tmp_path / name, stored)
    got = read_image(tmp_path / name)
    expected = stored if expected is None else expected
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert np.array_equal(got, expected)
    header = read_header(tmp_path / name)
    assert (header.height, header.width, header.channels, header.dtype) == (
        *expected.shape[:2], 1 if expected.ndim == 2 else expected.shape[2], expected.dtype.name)
    with ImageRows(tmp_path / name) as rows:  # read in bands (a TIFF) the same
        assert np.array_equal(rows.rows(0, header.height), expected)
        assert np.array_equal(rows.rows(header.height - 1, header.height), expected[-1:])


ALPHA = [
    ("png-rgba", lambda p, a: _pillow(p, a, "RGBA"), _values("uint8", (6, 5, 4))),
    ("png-16-rgba", _png16, _values("uint16", (6, 5, 4))),
    ("png-gray-alpha", lambda p, a: _pillow(p, a, "LA"), _values("uint8", (6, 5, 2))),
    ("tiff-rgba", lambda p, a: _tiff(p, a, photometric="rgb", extrasamples=["unassalpha"]),
     _values("uint8", (6, 5, 4))),
    ("tiff-rgba-tifffile-default", _tiff, _values("uint8", (6, 5, 4))),
    ("tiff-gray-alpha", lambda p, a: _tiff(p, a, photometric="minisblack", extrasamples=["assocalpha"]),
     _values("uint8", (6, 5, 2))),
]


@pytest.mark.parametrize("case", ALPHA, ids=[c[0] for c in ALPHA])
@pytest.mark.parametrize("keep_alpha", [False, True])
def test_alpha_is_dropped_unless_kept(tmp_path, case, keep_alpha):
    _, write, stored = case
    write(tmp_path / "a.png" if "png" in case[0] else tmp_path / "a.tif", stored)
    path = next(tmp_path.iterdir())
    got = read_image(path, keep_alpha=keep_alpha)
    expected = stored if keep_alpha else stored[..., :-1]
    assert read_header(path, keep_alpha=keep_alpha).channels == expected.shape[2]
    assert np.array_equal(got, expected[..., 0] if expected.shape[2] == 1 else expected)


# tifffile.imwrite(f, a) marks the 4th of 4 samples as alpha whatever the data: scientific images keep every channel
TIFF_KEEPS_EVERY_CHANNEL = [
    ("uint16-4-samples-last", "uint16", (30, 20, 4), False),
    ("float32-4-planes", "float32", (30, 20, 4), True),
    ("int16-2-samples-last", "int16", (30, 20, 2), False),
    ("float32-2-planes", "float32", (30, 20, 2), True),
    ("uint8-4-planes", "uint8", (30, 20, 4), True),
    ("uint16-4-explicit-alpha", "uint16", (30, 20, 4), False),
]


@pytest.mark.parametrize("case", TIFF_KEEPS_EVERY_CHANNEL, ids=[c[0] for c in TIFF_KEEPS_EVERY_CHANNEL])
def test_tiff_extra_samples_of_scientific_images_stay_channels(tmp_path, case):
    name, dtype, shape, planar = case
    a = _values(dtype, shape)
    extra = {"photometric": "rgb", "extrasamples": ["unassalpha"]} if "explicit" in name else {}
    _tiff(tmp_path / "a.tif", np.moveaxis(a, -1, 0) if planar else a, **extra)
    got = read_image(tmp_path / "a.tif")
    assert got.dtype == a.dtype and np.array_equal(got, a)
    assert read_header(tmp_path / "a.tif").channels == shape[2]


def test_channel_axis_decides_generic_tiff_pages(tmp_path):
    """Five pages of 20×30 are five channels (auto); 20 pages of 30×5 are an H×W×C array written naively."""
    a = _values("uint16", (20, 30, 5))
    _tiff(tmp_path / "naive.tif", a, photometric="minisblack")  # tifffile writes 20 pages of 30×5
    assert read_image(tmp_path / "naive.tif").shape == (20, 30, 5)  # auto: the side of ≤ 16 planes
    assert np.array_equal(read_image(tmp_path / "naive.tif", channel_axis="last"), a)
    assert read_image(tmp_path / "naive.tif", channel_axis="first").shape == (30, 5, 20)
    one_row = _values("uint16", (1, 30, 5))  # one page of 30×5: with "last" it is one row of 30 pixels, 5 channels
    _tiff(tmp_path / "row.tif", one_row, photometric="minisblack")
    assert np.array_equal(read_image(tmp_path / "row.tif", channel_axis="last"), one_row)
    assert read_header(tmp_path / "row.tif", channel_axis="last").channels == 5


@pytest.mark.parametrize("byteorder, planar", [("<", "contig"), (">", "contig"), ("<", "separate")])
def test_an_uncompressed_tiff_is_read_region_by_region_from_the_file(tmp_path, monkeypatch, byteorder, planar):
    """tifffile writes an array uncompressed as one strip by default: through its zarr store, every window read
    decoded the whole strip, the whole image (164 ms a 96² window of a 6000×8000 2-channel image; 1.4 ms now)."""
    import tifffile

    a = _values("uint16", (40, 30, 2))
    stored = np.moveaxis(a, -1, 0) if planar == "separate" else a
    tifffile.imwrite(tmp_path / "a.tif", stored, photometric="minisblack", planarconfig=planar, byteorder=byteorder)
    monkeypatch.setattr(tifffile, "imread", None)  # not through the zarr store
    with ImageRows(tmp_path / "a.tif") as rows:
        band = rows.rows(7, 19, 3, 25)
        assert band.dtype == np.dtype("uint16") and band.dtype.isnative and np.array_equal(band, a[7:19, 3:25])


def test_an_open_image_is_read_from_its_file_even_when_another_takes_its_name(tmp_path):
    """Mapped by name at each read, an uncompressed TIFF replaced while open gave rows of the new file."""
    import tifffile

    tifffile.imwrite(tmp_path / "a.tif", np.full((40, 50), 7, np.uint8))
    tifffile.imwrite(tmp_path / "b.tif", np.full((40, 50), 99, np.uint8))
    with ImageRows(tmp_path / "a.tif") as rows:
        assert np.all(rows.rows(0, 20) == 7)
        os.replace(tmp_path / "b.tif", tmp_path / "a.tif")
        assert np.all(rows.rows(20, 40) == 7)


def test_pages_written_one_at_a_time_are_read_as_channels_not_as_their_first_page(tmp_path):
    """tifffile gives each page written by ``imwrite(..., append=True)`` a series of its own; reading the first
    series dropped every other plane without a word. They are pages of generic planes (channel_axis decides), through
    both readers, while series of other shapes (a whole-slide image's thumbnail) leave the first one the image."""
    import tifffile

    a = _values("uint16", (3, 20, 30))
    for plane in a:
        tifffile.imwrite(tmp_path / "planes.tif", plane, append=True)
    with tifffile.TiffFile(tmp_path / "planes.tif") as tif:
        assert len(tif.series) == 3
    got = read_image(tmp_path / "planes.tif")
    assert got.dtype == a.dtype and np.array_equal(got, np.moveaxis(a, 0, -1))
    assert read_header(tmp_path / "planes.tif").channels == 3
    with ImageRows(tmp_path / "planes.tif") as rows:
        assert np.array_equal(rows.rows(5, 9), got[5:9])
    tifffile.imwrite(tmp_path / "slide.tif", a[0])
    tifffile.imwrite(tmp_path / "slide.tif", a[1, :8, :8], append=True)  # a smaller series after the image
    assert np.array_equal(read_image(tmp_path / "slide.tif"), a[0])


def test_written_images_read_back_exactly_in_the_chosen_format(tmp_path):
    for dtype in ("uint8", "uint16", "int16", "float32"):
        for channels in (1, 2, 3, 4, 5):
            shape = (11, 13) if channels == 1 else (11, 13, channels)
            a = _values(dtype, shape)
            suffix = image_suffix(dtype, channels)
            assert suffix == (".png" if (dtype, channels) in (("uint8", 1), ("uint8", 3), ("uint16", 1)) else ".tif")
            save_image(tmp_path / f"{dtype}_{channels}{suffix}", a)
            got = read_image(tmp_path / f"{dtype}_{channels}{suffix}")
            assert got.dtype == a.dtype and np.array_equal(got, a), (dtype, channels)
        # one channel as H×W×1 too (it raised Pillow's and tifffile's errors), read back as H×W
        a = _values(dtype, (11, 13, 1))
        save_image(tmp_path / f"{dtype}_hw1{image_suffix(dtype, 1)}", a)
        assert np.array_equal(read_image(tmp_path / f"{dtype}_hw1{image_suffix(dtype, 1)}"), a[..., 0])


@pytest.mark.parametrize("mask, message", [
    (np.full((3, 3), 256), r"class indices 0\.\.2 is expected, got int64 values 256\.\.256"),  # wrapped to 0
    (np.full((3, 3), -1), r"got int64 values -1\.\.-1"),
    (np.full((3, 3), 3, np.uint8), r"got uint8 values 3\.\.3"),
    (np.full((3, 3), 1.7), r"got float64 values$"),  # truncated to 1
])
def test_a_mask_of_values_that_are_no_class_is_not_saved(tmp_path, mask, message):
    with pytest.raises(ValueError, match=message):
        save_mask(tmp_path / "m.png", mask, COLORS)
    assert not list(tmp_path.iterdir())


def test_eight_bit_png_bytes_are_a_plain_pillow_png_at_zlib_level_1():
    """The published layout (a plain gray PNG); level 1 since the encoding of thousands of patches is what counts."""
    a = _values("uint8", (16, 16))
    buffer = io.BytesIO()
    Image.fromarray(a).save(buffer, format="PNG", optimize=False, compress_level=1)
    assert encode_image(a) == buffer.getvalue()


COLORS = [(0, 0, 0), (255, 0, 0), (0, 255, 0)]
MASKS = [
    ("png-8-index", "m.png", lambda p, a: _pillow(p, a.astype(np.uint8))),
    ("png-16-index", "m.png", lambda p, a: _pillow(p, a.astype(np.uint16))),
    ("tiff-8-index", "m.tif", lambda p, a: _tiff(p, a.astype(np.uint8))),
    ("tiff-16-index", "m.tif", lambda p, a: _tiff(p, a.astype(np.uint16))),
    ("tiff-int8-index", "m.tif", lambda p, a: _tiff(p, a.astype(np.int8))),
    ("tiff-int32-index", "m.tif", lambda p, a: _tiff(p, a.astype(np.int32))),  # label images as skimage writes them
    ("tiff-uint32-index", "m.tif", lambda p, a: _tiff(p, a.astype(np.uint32))),
    ("tiff-int64-index", "m.tif", lambda p, a: _tiff(p, a.astype(np.int64))),
    ("png-colour", "m.png", lambda p, a: _pillow(p, np.array(COLORS, np.uint8)[a])),
    ("tiff-colour", "m.tif", lambda p, a: _tiff(p, np.array(COLORS, np.uint8)[a], photometric="rgb")),
    # 2- and 4-bit gray PNGs hold the indices as stored (Pillow scales them up by 85 and 17)
    ("png-2-bit-index", "m.png", _png_low_bit(2)),
    ("png-4-bit-index", "m.png", _png_low_bit(4)),
    # palette files by their indices, whatever the colours
    ("png-palette-index", "m.png", _palette_png),
    ("tiff-palette-index", "m.tif", _palette_tiff),
    # 16-bit colours that are 8-bit ones × 257, as image software widens them
    ("png-16-colour", "m.png", lambda p, a: _png16(p, np.array(COLORS, np.uint16)[a] * 257)),
    ("png-16-colour-alpha", "m.png",
     lambda p, a: _png16(p, np.concatenate([np.array(COLORS, np.uint16)[a] * 257, np.full((*a.shape, 1), 65535)],
                                           axis=2).astype(np.uint16))),
]


@pytest.mark.parametrize("case", MASKS, ids=[c[0] for c in MASKS])
def test_masks_of_every_kind(tmp_path, case):
    _, name, write = case
    labels = RNG.integers(0, 3, (8, 6))
    write(tmp_path / name, labels)
    got = read_mask(tmp_path / name, COLORS)
    assert got.dtype == np.uint8 and np.array_equal(got, labels)
    with ImageRows(tmp_path / name, mask_colors=COLORS) as rows:  # the streamed route, header first
        assert np.array_equal(rows.rows(0, 8), labels) and read_header(tmp_path / name, mask=True).height == 8


def test_a_palette_tiff_with_fewer_colours_than_its_indices_reads_as_pillow_reads_it(tmp_path):
    """An index past the last of a short colour map is black, as in Pillow (it was an IndexError's traceback)."""
    colormap = np.arange(48, dtype=np.uint16).reshape(3, 16) * 257
    indices = np.array([[0, 1], [2, 200]], np.uint8)
    path = tmp_path / "short.tif"
    # tifffile writes only full colour maps: a gray TIFF with the tag, then its photometric set to palette (3)
    tifffile.imwrite(path, indices, photometric="minisblack", extratags=[(320, "H", 48, colormap.flatten(), True)])
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[0].tags["PhotometricInterpretation"].valueoffset
    raw = bytearray(path.read_bytes())
    raw[offset:offset + 2] = (3).to_bytes(2, "little")
    path.write_bytes(bytes(raw))
    with Image.open(path) as img:
        expected = np.asarray(img.convert("RGB"))
    assert np.array_equal(read_image(path), expected) and expected[1, 1].tolist() == [0, 0, 0]
    with ImageRows(path) as rows:
        assert np.array_equal(rows.rows(0, 2), expected)


def test_a_one_bit_png_mask_holds_indices_0_and_1(tmp_path):
    """As a 1-bit TIFF mask does (an image of 1 bit reads as 0/255, a mask as the classes 0 and 1)."""
    labels = RNG.integers(0, 2, (8, 6)).astype(np.uint8)
    _png_low_bit(1)(tmp_path / "m.png", labels)
    assert np.array_equal(read_mask(tmp_path / "m.png", COLORS), labels)


@pytest.mark.parametrize("colours, message", [
    # keeping the high bytes alone merged every colour below 256 into black: background
    (np.array(COLORS, np.uint16), r"m.png: 16-bit colours that are no 8-bit colours \(expected an 8-bit colour mask"),
    (np.array(COLORS, np.uint16) * 257 + 1, r"m.png: 16-bit colours that are no 8-bit colours"),
])
def test_sixteen_bit_colours_that_are_no_eight_bit_ones_are_refused(tmp_path, colours, message):
    _png16(tmp_path / "m.png", colours[RNG.integers(0, 3, (8, 6))])
    with pytest.raises(UserError, match=message):
        read_mask(tmp_path / "m.png", COLORS)


def test_a_sixteen_bit_transparent_colour_adds_no_alpha_channel(tmp_path):
    """A tRNS chunk (one colour marked transparent) in a 16-bit RGB PNG: the header and the pixels agree on 3
    channels, with ``keep_alpha`` too (pypng's asDirect added an alpha plane the header did not count)."""
    a = _values("uint16", (6, 5, 3))
    with (tmp_path / "a.png").open("wb") as handle:
        png.Writer(5, 6, greyscale=False, bitdepth=16, transparent=(1, 2, 3)).write(handle, a.reshape(6, -1))
    for keep_alpha in (False, True):
        assert np.array_equal(read_image(tmp_path / "a.png", keep_alpha=keep_alpha), a)
        assert read_header(tmp_path / "a.png", keep_alpha=keep_alpha).channels == 3


def test_a_float_mask_is_refused_as_a_mask(tmp_path):
    _tiff(tmp_path / "m.tif", np.zeros((8, 6), np.float32))
    with pytest.raises(UserError, match=r"m.tif: unsupported mask pixel type float32 \(expected integer class"):
        read_header(tmp_path / "m.tif", mask=True)


@pytest.mark.parametrize("name, write", [("m.png", lambda p, a: _pillow(p, a)), ("m.tif", _tiff)])
def test_sixteen_bit_mask_value_that_is_no_class(tmp_path, name, write):
    labels = RNG.integers(0, 3, (8, 6)).astype(np.uint16)
    labels[2, 3] = 1000
    write(tmp_path / name, labels)
    with pytest.raises(UserError, match=rf"{name}: mask values \[1000\] are not class indices \(expected 0..2\)"):
        read_mask(tmp_path / name, COLORS)


# (id, writer of a bad file at path, fragment of the message)
REFUSED = [
    ("tiff-z-stack", lambda p: _tiff(p, _values("uint16", (5, 8, 8)), imagej=True, metadata={"axes": "ZYX"}),
     "unsupported TIFF axes 'ZYX'"),
    ("tiff-4d", lambda p: _tiff(p, _values("uint16", (2, 3, 8, 8)), photometric="minisblack"),
     "unsupported TIFF axes"),
    ("tiff-no-channel-axis", lambda p: _tiff(p, _values("uint16", (20, 30, 40)), photometric="minisblack"),
     "cannot tell the channel axis"),
    ("tiff-float64", lambda p: _tiff(p, np.zeros((8, 8))), "unsupported pixel type float64"),
    ("tiff-int32", lambda p: _tiff(p, np.zeros((8, 8), np.int32)), "unsupported pixel type int32"),
    ("tiff-nan", lambda p: _tiff(p, np.where(np.eye(8) > 0, np.nan, 1).astype(np.float32)),
     "8 pixel value(s) are NaN or infinite"),
    ("tiff-inf", lambda p: _tiff(p, np.full((8, 8), np.inf, np.float32)), "64 pixel value(s) are NaN or infinite"),
    ("tiff-truncated", lambda p: p.write_bytes(encode_image(_values("float32", (64, 64)))[:300]),
     "not a readable image"),
    ("text-named-tif", lambda p: p.write_text("not an image"), "not a readable image"),
    ("tiff-pages-truncated", lambda p: _truncated_pages(p), "not a readable image"),
    ("tiff-no-image", lambda p: p.write_bytes(b"II*\x00\x00\x00\x00\x00"),  # what an interrupted writer leaves
     "not a readable image (the TIFF holds no image)"),
    ("tiff-cut-short", lambda p: _cut_short(p), "not a readable image (truncated: its pixel data runs to byte"),
    ("tiff-corrupt-zlib-tile", lambda p: _corrupt_last_tile(p, "zlib"), "not a readable image ("),
    ("tiff-corrupt-lzma-strip", lambda p: _corrupt_last_tile(p, "lzma"), "not a readable image"),
]


def _truncated_pages(path: Path) -> None:
    """Three pages cut off inside the first: tifffile also logs the broken page chain ("invalid page offset")."""
    with tifffile.TiffWriter(path) as tif:
        for _ in range(3):
            tif.write(_values("uint16", (300, 200)), contiguous=False)
    path.write_bytes(path.read_bytes()[:110_000])


@pytest.mark.parametrize("compression,dtype", [("lzw", "uint16"), ("zstd", "float32"), ("packbits", "uint8"),
                                               ("adobe_deflate", "int16"), ("webp", "uint8"), ("jpeg", "uint8"),
                                               ("jpeg2000", "uint8"), ("jpegxl", "uint8")])
def test_the_compressions_of_gdal_and_slide_scanners_are_read(tmp_path, compression, dtype):
    """LZW (GDAL, ImageJ), zstd, PackBits, WebP, JPEG and JPEG 2000 (slide scanners) need imagecodecs, a requirement:
    read whole and band by band, a lossless file gives its pixels back exactly, a JPEG what tifffile decodes."""
    pixels = _values(dtype, (160, 96, 3) if dtype == "uint8" and compression != "packbits" else (160, 96))
    extra = {"photometric": "rgb"} if pixels.ndim == 3 else {}
    _tiff(tmp_path / "c.tif", pixels, compression=compression, tile=(32, 32), **extra)
    stored = pixels if compression != "jpeg" else tifffile.imread(tmp_path / "c.tif")
    assert np.array_equal(read_image(tmp_path / "c.tif"), stored)
    with ImageRows(tmp_path / "c.tif") as rows:
        assert np.array_equal(rows.rows(40, 100, 20, 70), stored[40:100, 20:70])


def _cut_short(path: Path) -> None:
    """A compressed TIFF whose header is whole and whose last 30% is missing."""
    _tiff(path, _values("uint16", (200, 300)), compression="zlib", tile=(32, 32))
    path.write_bytes(path.read_bytes()[:int(path.stat().st_size * 0.7)])


def test_a_tiff_cut_short_is_refused_from_its_header(tmp_path):
    """predict.py checks every header before its first output: a truncated slide is refused there, not once
    segmentation reaches its missing part."""
    _cut_short(tmp_path / "cut.tif")
    with pytest.raises(UserError, match=r"cut.tif: not a readable image \(truncated: .* the file has \d+\)"):
        read_header(tmp_path / "cut.tif")


@pytest.mark.parametrize("layout", ["subifds", "pages"])
def test_a_pyramid_is_read_at_full_resolution(tmp_path, layout):
    """Whole-slide images and OME-TIFFs carry sub-resolutions (as SubIFDs or as reduced pages); zarr opened the
    whole pyramid as a group, which ImageRows could not index."""
    full = _values("uint16", (300, 200))
    with tifffile.TiffWriter(tmp_path / "p.tif", bigtiff=True) as tif:
        if layout == "subifds":
            tif.write(full, subifds=1, tile=(64, 64), compression="zlib", metadata={"axes": "YX"})
        else:
            tif.write(full, tile=(64, 64), compression="zlib")
        tif.write(full[::2, ::2], subfiletype=1, tile=(64, 64), compression="zlib")
    assert np.array_equal(read_image(tmp_path / "p.tif"), full)
    assert read_header(tmp_path / "p.tif") == ImageHeader(300, 200, 1, "uint16")
    with ImageRows(tmp_path / "p.tif") as rows:
        assert np.array_equal(rows.rows(70, 150, 10, 130), full[70:150, 10:130])


@pytest.mark.parametrize("name", ["s.svs", "b.btf", "o.ome.btf", "x.dat"])
@pytest.mark.parametrize("pixels, extra", [
    (_values("uint16", (64, 48, 3)), {"photometric": "rgb"}),  # Pillow read 8 bits of each sample
    (_values("int16", (64, 48)), {}),                          # Pillow: "unsupported image mode 'I'"
    (_values("uint8", (5, 64, 48)), {"photometric": "minisblack"}),  # Pillow: the first of the 5 pages
    (_values("uint8", (2, 64, 48)), {"photometric": "minisblack", "planarconfig": "separate"}),  # Pillow: unreadable
], ids=["uint16-rgb", "int16", "5-pages", "2-planes"])
def test_a_tiff_is_read_as_a_tiff_whatever_its_suffix(tmp_path, name, pixels, extra):
    """Slide scanners and BigTIFF writers name their TIFFs .svs or .btf; such a file went to Pillow, which lost
    bits, pages or channels silently."""
    _tiff(tmp_path / name, pixels, **extra)
    expected = np.moveaxis(pixels, 0, -1) if pixels.shape[0] in (2, 5) else pixels
    assert np.array_equal(read_image(tmp_path / name), expected)
    height, width = expected.shape[:2]
    channels = expected.shape[2] if expected.ndim == 3 else 1
    assert read_header(tmp_path / name) == ImageHeader(height, width, channels, pixels.dtype.name)
    with ImageRows(tmp_path / name) as rows:
        assert np.array_equal(rows.rows(10, 50, 5, 40), expected[10:50, 5:40])


def _corrupt_last_tile(path: Path, compression: str, which: int = -1, shape: tuple[int, int] = (40, 40)) -> None:
    """A compressed TIFF whose header is sound and whose last tile (or strip, or the ``which``-th) is garbage: its
    codec's own error (zlib.error, lzma.LZMAError) must become one line naming the file, where and while it is
    decoded."""
    tiles = {"tile": (16, 16)} if compression == "zlib" else {"rowsperstrip": 8}
    _tiff(path, _values("uint16", shape), compression=compression, **tiles)
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[0].dataoffsets[which], tif.pages[0].databytecounts[which]
    data = bytearray(path.read_bytes())
    data[offset:offset + count] = b"\x00" * count
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("case", REFUSED, ids=[c[0] for c in REFUSED])
def test_unsupported_images_are_refused_naming_the_file(tmp_path, case):
    _, write, fragment = case
    write(tmp_path / "bad.tif")
    with pytest.raises(UserError) as err:
        read_image(tmp_path / "bad.tif")
    message = str(err.value)
    assert message.startswith(str(tmp_path / "bad.tif")) and fragment in message and "\n" not in message


@pytest.mark.parametrize("compression", ["zlib", "lzma"])
def test_a_corrupt_tile_read_band_by_band_is_refused_naming_its_rows(tmp_path, compression):
    _corrupt_last_tile(tmp_path / "bad.tif", compression)
    with ImageRows(tmp_path / "bad.tif") as rows:
        assert rows.rows(0, 8).shape == (8, 40)  # the sound part reads
        with pytest.raises(UserError, match=r"bad.tif \(rows 32..40, columns 0..40\): not a readable image"):
            rows.rows(32, 40)


def test_a_corrupt_first_tile_gives_one_line_and_no_noise_at_exit(tmp_path):
    """zarr reads a band's tiles as concurrent tasks: when the first fails, the others must not be left pending, or
    about 26 lines of "Task was destroyed but it is pending!" follow the one-line error when the process exits."""
    import subprocess
    import sys

    _corrupt_last_tile(tmp_path / "bad.tif", "zlib", which=0, shape=(400, 400))  # the first of 625 tiles
    code = ("from lib.core.imageio import ImageRows\nfrom lib.core.errors import UserError\n"
            f"rows = ImageRows({str(tmp_path / 'bad.tif')!r})\n"
            "try:\n    rows.rows(0, 400)\nexcept UserError as err:\n    print(err)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    lines = (done.stdout + done.stderr).splitlines()
    assert len(lines) == 1 and "bad.tif (rows 0..400, columns 0..400): not a readable image" in lines[0], lines


def test_a_truncated_page_chain_gives_one_line_without_tifffile_logs(tmp_path):
    """tifffile logs "invalid page offset" for a broken page chain; with no logging set up, Python printed it beside
    the one-line error (pytest installs its own handlers, so only a process of its own shows it)."""
    import subprocess
    import sys

    _truncated_pages(tmp_path / "bad.tif")
    code = ("from lib.core.imageio import read_header, read_image\nfrom lib.core.errors import UserError\n"
            f"for read in (read_header, read_image):\n    try:\n        read({str(tmp_path / 'bad.tif')!r})\n"
            "    except UserError as err:\n        print(err)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    lines = (done.stdout + done.stderr).splitlines()
    assert len(lines) == 2 and all("bad.tif: not a readable image" in line for line in lines), lines


def test_an_image_that_cannot_fit_in_memory_is_refused(tmp_path, monkeypatch):
    """Pillow's decompression-bomb limit is lifted; the available memory takes its place."""
    import lib.core.imageio

    _pillow(tmp_path / "big.png", _values("uint16", (300, 200)))
    assert read_image(tmp_path / "big.png").shape == (300, 200)  # 60,000 pixels: Pillow would accept it anyway

    def unasked():
        raise AssertionError("the available memory was read for a small image")

    monkeypatch.setattr(lib.core.imageio, "available_memory", unasked)
    assert read_image(tmp_path / "big.png").shape == (300, 200)  # under ALWAYS_FITS_BYTES: not checked
    monkeypatch.setattr(lib.core.imageio, "ALWAYS_FITS_BYTES", 0)
    monkeypatch.setattr(lib.core.imageio, "available_memory", lambda: 100_000)
    with pytest.raises(UserError, match=r"big.png: a 200x300 image needs 0.0 GiB of memory decoded, 0.0 GiB"):
        read_image(tmp_path / "big.png")
    monkeypatch.setattr(lib.core.imageio, "available_memory", lambda: 120_000)  # 300 × 200 × 2 bytes fit
    assert read_image(tmp_path / "big.png").dtype == np.uint16


@pytest.mark.parametrize("case", [c for c in ROUND_TRIPS if c[1].endswith((".tif", ".tiff"))] + [ROUND_TRIPS[4]],
                         ids=[c[0] for c in ROUND_TRIPS if c[1].endswith((".tif", ".tiff"))] + [ROUND_TRIPS[4][0]])
def test_rows_read_band_by_band_equal_the_whole_image(tmp_path, case):
    from lib.core.imageio import ImageRows

    _, name, write, stored, _ = case
    write(tmp_path / name, stored)
    whole = read_image(tmp_path / name)
    with ImageRows(tmp_path / name) as rows:
        assert (rows.header.height, rows.header.width) == whole.shape[:2]
        bands = [rows.rows(top, min(top + 4, whole.shape[0])) for top in range(0, whole.shape[0], 4)]
        assert np.array_equal(rows.rows(2, 3), whole[2:3])  # a band of one row keeps its row axis
        assert np.array_equal(rows.rows(1, 5, 2, 6), whole[1:5, 2:6])  # and a block of columns (predict.py's)
    assert np.array_equal(np.concatenate(bands), whole)


def test_rows_of_a_tiled_bigtiff(tmp_path):
    from lib.core.imageio import ImageRows

    a = _values("uint16", (700, 530, 3))
    tifffile.imwrite(tmp_path / "t.tif", a, tile=(128, 128), photometric="minisblack", planarconfig="contig",
                     bigtiff=True, compression="zlib")
    with ImageRows(tmp_path / "t.tif") as rows:
        assert np.array_equal(rows.rows(100, 357), a[100:357]) and np.array_equal(rows.rows(690, 700), a[690:])
        assert np.array_equal(rows.rows(100, 357, 129, 400), a[100:357, 129:400])  # a block of columns
    tifffile.imwrite(tmp_path / "p.tif", np.moveaxis(a, -1, 0), tile=(128, 128), photometric="minisblack",
                     planarconfig="separate")  # one plane per channel: the column axis is the last one
    with ImageRows(tmp_path / "p.tif") as rows:
        assert np.array_equal(rows.rows(3, 300, 500, 530), a[3:300, 500:530])
    b = np.where(np.eye(700, 530)[..., None] > 0, np.nan, 1.0).astype(np.float32)
    tifffile.imwrite(tmp_path / "n.tif", b, tile=(128, 128))
    with ImageRows(tmp_path / "n.tif") as rows, pytest.raises(UserError, match=r"rows 0..10, columns 0..530\): 10 pix"):
        rows.rows(0, 10)


@pytest.mark.parametrize("height,width,band_rows,channels,dtype", [
    (300, 530, [7, 100, 3, 190], 1, "uint8"),  # bands across tile rows, a partial last tile row and column
    (256, 256, [256], 1, "uint8"),  # exactly one tile
    (70, 600, [1] * 70, 3, "float16"),  # one-row bands, fewer rows than a tile, samples per pixel
])
def test_tiled_tiff_written_from_bands(tmp_path, height, width, band_rows, channels, dtype):
    from lib.core.imageio import write_tiled_tiff

    shape = (height, width) if channels == 1 else (height, width, channels)
    a = (RNG.integers(0, 3, shape) if dtype == "uint8" else RNG.random(shape)).astype(dtype)
    tops = np.cumsum([0] + band_rows)
    bands = (a[t:b] for t, b in zip(tops[:-1], tops[1:]))
    colors = COLORS if channels == 1 else None
    write_tiled_tiff(tmp_path / "out.tif", bands, height, width, dtype, channels, colors, tile=128)
    with tifffile.TiffFile(tmp_path / "out.tif") as tif:
        page = tif.pages[0]
        assert tif.is_bigtiff and page.is_tiled and (page.tilelength, page.tilewidth) == (128, 128)
        assert np.array_equal(page.asarray(), a)
        if colors:
            assert page.photometric == tifffile.PHOTOMETRIC.PALETTE
            assert [tuple(int(v) // 257 for v in page.colormap[:, c]) for c in range(3)] == COLORS
    if colors:
        assert np.array_equal(read_mask(tmp_path / "out.tif", COLORS), a)  # our masks read back as index masks
    assert not [p for p in tmp_path.iterdir() if p.name != "out.tif"]  # no temporary file left


def test_tiled_tiff_refuses_bands_that_do_not_cover_the_image(tmp_path):
    from lib.core.imageio import write_tiled_tiff

    with pytest.raises(ValueError, match="covered 100 of 300 rows"):
        write_tiled_tiff(tmp_path / "out.tif", [np.zeros((100, 50), np.uint8)], 300, 50, "uint8", tile=64)
    assert not list(tmp_path.iterdir())  # nothing left under the final name or a temporary one


# (index) an ImageRows of a 7×5×2 image answers as the NumPy array does
ROW_INDICES = [np.s_[2:5], np.s_[2:5, 1:3], np.s_[-3:], np.s_[:, -2:], np.s_[5:2], np.s_[0:100, 4:100], np.s_[3],
               np.s_[-1], np.s_[3, 1:4], np.s_[1:4, 2], np.s_[6, 4], np.s_[np.int64(2)]]


@pytest.mark.parametrize("index", ROW_INDICES, ids=[str(i) for i in ROW_INDICES])
def test_image_rows_index_as_numpy_does(tmp_path, index):
    image = np.arange(7 * 5 * 2, dtype=np.uint16).reshape(7, 5, 2)
    tifffile.imwrite(tmp_path / "a.tif", image, tile=(16, 16), photometric="minisblack", planarconfig="contig")
    with ImageRows(tmp_path / "a.tif") as rows:
        assert rows.shape == image.shape
        assert np.array_equal(rows[index], image[index])


@pytest.mark.parametrize("index,error", [(np.s_[7], IndexError), (np.s_[:, -6], IndexError), (np.s_[::2], ValueError)])
def test_image_rows_refuse_what_numpy_refuses_or_they_cannot_read(tmp_path, index, error):
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((7, 5), np.uint8), tile=(16, 16))
    with ImageRows(tmp_path / "a.tif") as rows, pytest.raises(error):
        rows[index]


def test_a_colour_mask_reads_as_an_array_of_indices(tmp_path):
    """A colour mask's header has 3 channels, but its rows are class indices: its shape said H×W×3, and patch
    sampling on it failed to unpack (a review)."""
    colors = [(0, 0, 0), (255, 0, 0), (0, 0, 255)]
    indices = np.random.default_rng(0).integers(0, 3, (9, 11)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "m.tif", np.array(colors, np.uint8)[indices], tile=(16, 16), photometric="rgb")
    with ImageRows(tmp_path / "m.tif", mask_colors=colors) as rows:
        assert rows.shape == (9, 11) and np.array_equal(rows[2:5, 3:9], indices[2:5, 3:9])


@pytest.mark.parametrize("layout,decoded", [("tiles", 16 * 16), ("strips", 4 * 40), ("one strip", 40 * 30),
                                            ("uncompressed", 40), ("png", 40 * 30)])
def test_the_pixels_one_read_decodes_are_known(tmp_path, layout, decoded):
    """lib.prepare holds a mask whole where any read of it decodes most of it anyway (a compressed TIFF of one
    strip was decoded once a window)."""
    mask = np.zeros((30, 40), np.uint8)
    path = tmp_path / ("m.png" if layout == "png" else "m.tif")
    if layout == "png":
        Image.fromarray(mask).save(path)
    else:
        options = {"tiles": {"tile": (16, 16), "compression": "zlib"}, "strips": {"rowsperstrip": 4,
                   "compression": "zlib"}, "one strip": {"rowsperstrip": 30, "compression": "zlib"},
                   "uncompressed": {}}[layout]
        tifffile.imwrite(path, mask, **options)
    with ImageRows(path, mask_colors=[(0, 0, 0), (255, 255, 255)]) as rows:
        assert rows.decoded_at_once == decoded
