"""Decoding in the runtime alone (no torch): the conversions adcore documents, and its errors.

tests/test_runtime_equivalence.py in the main suite checks the same numbers against adcore itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adcore_runtime import ImageLoadError, load_image
from adcore_runtime.images import resize_image, resize_taps, to_image_array


def test_modes_become_rgb_in_unit_range(tmp_path: Path):
    gray = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    Image.fromarray(gray).save(tmp_path / "l.png")
    out = load_image(tmp_path / "l.png")
    assert out.shape == (3, 6, 8) and out.dtype == np.float32
    np.testing.assert_allclose(out[1], gray / 255, atol=1e-7)
    Image.fromarray((gray.astype(np.uint16) * 257)).save(tmp_path / "i16.png")
    np.testing.assert_allclose(load_image(tmp_path / "i16.png")[0], gray / 255, atol=1e-6)
    rgba = np.dstack([np.full((6, 8, 3), 200, np.uint8), np.zeros((6, 8), np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_allclose(load_image(tmp_path / "rgba.png"), 200 / 255, atol=1e-7)  # alpha dropped, colour kept


def test_exif_orientation_is_applied(tmp_path: Path):
    array = np.zeros((4, 10, 3), dtype=np.uint8)
    array[:, :2] = 255
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    image.save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    assert load_image(tmp_path / "rotated.jpg").shape == (3, 10, 4)


def test_bad_files_name_themselves(tmp_path: Path, monkeypatch):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    for name, message in [("empty.png", "is empty"), ("junk.png", "cannot read image"), ("none.png", "does not exist")]:
        with pytest.raises(ImageLoadError, match=message):
            load_image(tmp_path / name)
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setenv("ADCORE_MAX_PIXELS", "100")
    with pytest.raises(ImageLoadError, match="decompression-bomb guard"):
        load_image(tmp_path / "big.png")


def test_arrays_and_pillow_images():
    hwc = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    chw = to_image_array(hwc)
    np.testing.assert_array_equal(chw, hwc.transpose(2, 0, 1).astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(to_image_array(Image.fromarray(hwc)), chw)
    np.testing.assert_array_equal(to_image_array(chw), chw)
    assert to_image_array(hwc[..., 0]).shape == (3, 5, 7)


def test_resize_taps_sum_to_one_and_identity_is_free():
    for in_size, out_size, aa in [(100, 7, True), (7, 100, False), (33, 33, True), (1, 5, False)]:
        _, weight = resize_taps(in_size, out_size, aa)
        np.testing.assert_allclose(weight.sum(axis=1), 1.0, atol=1e-6)
    image = np.random.default_rng(1).random((3, 9, 9), dtype=np.float32)
    assert resize_image(image, (9, 9)) is image
