"""Image/mask pairing (dataloader.pairs): one rule for training (find_pairs) and predict.py (masks_by_id, mask_of)."""

from __future__ import annotations

import pytest

from dataloader.pairs import find_pairs, mask_of, masks_by_id
from lib.core.errors import UserError

# (id, image files, mask files, image prefix, mask prefix, expected {image: mask} or a fragment of the error)
CASES = [
    ("suffixes-differ", ["a.png", "b.TIF", "c.1.tiff"], ["a.tif", "b.tif", "c.1.png"], "", "",
     {"a.png": "a.tif", "b.TIF": "b.tif", "c.1.tiff": "c.1.png"}),
    ("ome-tiffs", ["slide.ome.tif", "b.OME.TIFF", "c.ome.tif"], ["slide.png", "b.tif", "c.ome.png"], "", "",
     {"slide.ome.tif": "slide.png", "b.OME.TIFF": "b.tif", "c.ome.tif": "c.ome.png"}),
    ("an-ome-tiff-and-a-tiff-of-one-name", ["a.ome.tif", "a.tif"], ["a.png"], "", "",
     "a.tif: shares the name 'a' with a.ome.tif"),
    ("tiffs-of-slide-scanners", ["s.svs", "b.btf", "notes.txt"], ["s.png", "b.tif"], "", "",
     {"s.svs": "s.png", "b.btf": "b.tif"}),
    ("prefixes", ["Img_1.png", "Img_2.png"], ["Mask_1.png", "Mask_2.tif"], "Img_", "Mask_",
     {"Img_1.png": "Mask_1.png", "Img_2.png": "Mask_2.tif"}),
    ("two-masks-one-suffix-each", ["x.png"], ["x.png", "x.tif"], "", "", "x.png: 2 masks pair with it (x.png, x.tif"),
    ("a-prefixed-and-a-bare-mask", ["x.png"], ["a_x.png", "x.png"], "", "a_", "2 masks pair with it"),
    ("two-images-one-id", ["3.png", "Img_3.png"], ["3.png"], "Img_", "", "Img_3.png: has the id '3' of 3.png"),
    ("no-mask", ["a.png", "b.png"], ["a.png"], "", "", "b.png: no mask for this image"),
    ("mask-without-image", ["a.png"], ["a.png", "z.png"], "", "", "z.png: mask without an image"),
]


def _layout(root, images, masks):
    for sub, names in (("images", images), ("masks", masks)):
        (root / sub).mkdir()
        for name in names:
            (root / sub / name).write_bytes(b"")  # pairing reads names only


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_find_pairs(tmp_path, case):
    _, images, masks, image_prefix, mask_prefix, expected = case
    _layout(tmp_path, images, masks)
    if isinstance(expected, str):
        with pytest.raises(UserError, match=expected.replace("(", r"\(")):
            find_pairs(tmp_path, image_prefix, mask_prefix)
    else:
        pairs = find_pairs(tmp_path, image_prefix, mask_prefix)
        assert {p.image.name: p.mask.name for p in pairs} == expected


def test_predict_is_stopped_only_by_masks_its_images_need(tmp_path):
    """Masks of other images may be ambiguous (other.png and other.tif) without stopping the images that have one."""
    _layout(tmp_path, ["x.png"], ["x.tif", "other.png", "other.tif"])
    found = masks_by_id(tmp_path / "masks")
    assert mask_of(tmp_path / "images" / "x.png", found, tmp_path / "masks").name == "x.tif"
    with pytest.raises(UserError, match="other.png: 2 masks pair with it"):
        mask_of(tmp_path / "images" / "other.png", found, tmp_path / "masks")


def test_a_folder_named_like_an_image_is_no_image(tmp_path):
    _layout(tmp_path, ["a.png"], ["a.png"])
    (tmp_path / "images" / "b.png").mkdir()
    assert [p.image.name for p in find_pairs(tmp_path)] == ["a.png"]


def test_a_folder_that_cannot_be_listed_is_one_line(tmp_path, monkeypatch):
    """Without read rights, the listing's PermissionError was a traceback."""
    import os

    _layout(tmp_path, ["a.png"], ["a.png"])

    def refused(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(os, "scandir", refused)
    with pytest.raises(UserError, match=r"images: cannot list the folder \(Permission denied\)$"):
        find_pairs(tmp_path)
