"""Image files: bad files give an error naming the file; every supported mode converts as documented."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from adcore.data import FolderDataset, load_image, make_loader
from adcore.errors import ImageLoadError, InvalidInputError


# -- files that cannot be read ------------------------------------------------------------------
def _bad_files(folder: Path, write_image, rgb_array) -> dict[str, Path]:
    png = write_image(folder / "ok.png", rgb_array)
    jpg = write_image(folder / "ok.jpg", rgb_array)
    data, jdata = png.read_bytes(), jpg.read_bytes()
    files = {
        "zero-byte": folder / "zero.png",
        "truncated png": folder / "truncated.png",
        "truncated jpeg": folder / "truncated.jpg",
        "text named .png": folder / "notes.png",
        "corrupt header": folder / "corrupt.png",
        "html page": folder / "page.jpg",
    }
    files["zero-byte"].write_bytes(b"")
    files["truncated png"].write_bytes(data[: len(data) // 2])
    files["truncated jpeg"].write_bytes(jdata[: len(jdata) // 2])
    files["text named .png"].write_text("this is not an image")
    corrupt = bytearray(data)
    corrupt[12:40] = b"\0" * 28
    files["corrupt header"].write_bytes(bytes(corrupt))
    files["html page"].write_text("<html><body>404 not found</body></html>")
    return files


@pytest.mark.parametrize("case", ["zero-byte", "truncated png", "truncated jpeg", "text named .png", "corrupt header",
                                  "html page"])
def test_unreadable_file_is_an_error_naming_it(tmp_path, write_image, rgb_array, case):
    path = _bad_files(tmp_path, write_image, rgb_array)[case]
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    assert str(path) in str(info.value)
    assert "empty (0 bytes)" in str(info.value) if case == "zero-byte" else "corrupt, truncated or non-image" in str(info.value)


def test_missing_file_and_folder_instead_of_file(tmp_path):
    with pytest.raises(ImageLoadError, match="does not exist"):
        load_image(tmp_path / "nope.png")
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(ImageLoadError, match="not a regular file"):
        load_image(tmp_path / "dir.png")


def test_broken_symlink_is_named(tmp_path):
    link = tmp_path / "gone.png"
    link.symlink_to(tmp_path / "missing-target.png")
    with pytest.raises(ImageLoadError, match="broken symbolic link"):
        load_image(link)


def test_bad_file_in_training_set_stops_fit_and_names_the_file(tmp_path, write_image, rgb_array, mean_detector_class):
    good = tmp_path / "good"
    for i in range(3):
        write_image(good / f"{i}.png", rgb_array)
    (good / "1.png").write_bytes((good / "0.png").read_bytes()[:50])
    dataset = FolderDataset(good, image_size=32)
    with pytest.raises(ImageLoadError, match=r"1\.png"):
        mean_detector_class().fit(make_loader(dataset, 2))


# -- conversions (documented in adcore.data) -----------------------------------------------------
def test_rgb_is_exact(tmp_path, write_image, rgb_array):
    image = load_image(write_image(tmp_path / "a.png", rgb_array))
    assert image.dtype == torch.float32 and tuple(image.shape) == (3, 20, 30)
    assert torch.equal(image, torch.from_numpy(rgb_array).permute(2, 0, 1).float() / 255)


def test_grayscale_is_repeated_to_three_channels(tmp_path, write_image, rgb_array):
    gray = rgb_array[..., 0]
    image = load_image(write_image(tmp_path / "g.png", gray))
    assert torch.equal(image, (torch.from_numpy(gray).float() / 255).expand(3, -1, -1))


def test_one_bit_image(tmp_path, write_image, rgb_array):
    bits = rgb_array[..., 0] > 128
    image = load_image(write_image(tmp_path / "b.png", bits))
    assert torch.equal(image, torch.from_numpy(bits).float().expand(3, -1, -1))


def test_rgba_drops_alpha_keeping_stored_colours(tmp_path, write_image, rgb_array):
    alpha = np.zeros((20, 30, 1), dtype=np.uint8)  # fully transparent: colours are kept, not blackened
    image = load_image(write_image(tmp_path / "a.png", np.concatenate([rgb_array, alpha], 2)))
    assert torch.equal(image, torch.from_numpy(rgb_array).permute(2, 0, 1).float() / 255)


def test_gray_alpha(tmp_path, write_image, rgb_array):
    gray = rgb_array[..., 0]
    image = load_image(write_image(tmp_path / "la.png", np.stack([gray, gray], -1), mode=None))
    assert torch.equal(image, (torch.from_numpy(gray).float() / 255).expand(3, -1, -1))


def test_palette_image_becomes_its_rgb_colours(tmp_path, write_image, rgb_array):
    from PIL import Image

    path = write_image(tmp_path / "p.png", rgb_array, mode="P")
    expected = np.asarray(Image.open(path).convert("RGB"))
    assert Image.open(path).mode == "P"
    assert torch.equal(load_image(path), torch.from_numpy(expected.copy()).permute(2, 0, 1).float() / 255)


def test_sixteen_bit_grayscale_uses_the_full_range(tmp_path, write_image):
    from PIL import Image

    values = np.array([[0, 1000, 32768, 65535]], dtype=np.uint16)
    path = write_image(tmp_path / "g16.png", values)
    assert Image.open(path).mode.startswith("I;16")
    image = load_image(path)
    assert torch.allclose(image[0, 0], torch.tensor([0, 1000, 32768, 65535]) / 65535.0)
    assert float(image.max()) == 1.0


def test_32_bit_integer_images(tmp_path, write_image):
    eight = np.array([[0, 128, 255]], dtype=np.int32)
    image = load_image(write_image(tmp_path / "i8.tif", eight))
    assert torch.allclose(image[0, 0], torch.tensor([0, 128, 255]) / 255.0)
    sixteen = np.array([[0, 4095, 65535]], dtype=np.int32)
    image = load_image(write_image(tmp_path / "i16.tif", sixteen))
    assert torch.allclose(image[0, 0], torch.tensor([0, 4095, 65535]) / 65535.0)
    with pytest.raises(ImageLoadError, match=r"values -5\.\.65535.*expected 0\.\.255 or 0\.\.65535"):
        load_image(write_image(tmp_path / "neg.tif", np.array([[-5, 65535]], dtype=np.int32)))


def test_float_images_must_be_in_unit_range(tmp_path, write_image):
    ok = np.array([[0.0, 0.25, 1.0]], dtype=np.float32)
    assert torch.equal(load_image(write_image(tmp_path / "f.tif", ok))[0, 0], torch.tensor([0.0, 0.25, 1.0]))
    with pytest.raises(ImageLoadError, match=r"float image with values 0\.\.255; expected 0\.\.1"):
        load_image(write_image(tmp_path / "f255.tif", np.array([[0.0, 255.0]], dtype=np.float32)))
    with pytest.raises(ImageLoadError, match="NaN or Inf"):
        load_image(write_image(tmp_path / "fnan.tif", np.array([[0.0, np.nan]], dtype=np.float32)))


@pytest.mark.parametrize("suffix", [".jpg", ".tif"])
def test_cmyk_becomes_rgb(tmp_path, write_image, rgb_array, suffix):
    from PIL import Image

    path = write_image(tmp_path / f"c{suffix}", rgb_array, mode="CMYK")
    assert Image.open(path).mode == "CMYK"
    image = load_image(path)
    assert tuple(image.shape) == (3, 20, 30)
    expected = torch.from_numpy(rgb_array).permute(2, 0, 1).float() / 255
    tolerance = 0.2 if suffix == ".jpg" else 1.5 / 255  # JPEG is lossy; TIFF round-trips through CMYK exactly-ish
    assert float((image - expected).abs().mean()) < tolerance


def test_exif_orientation_is_applied(tmp_path, rgb_array):
    from PIL import Image

    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    Image.fromarray(rgb_array).save(path, exif=exif, quality=100)
    image = load_image(path)
    assert tuple(image.shape) == (3, 30, 20)  # upright: width and height swapped
    stored = torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy()).permute(2, 0, 1).float() / 255
    upright = torch.rot90(stored, k=-1, dims=(1, 2))  # clockwise
    assert float((image - upright).abs().max()) < 1e-6


def test_non_square_images_keep_their_shape(tmp_path, write_image):
    image = load_image(write_image(tmp_path / "wide.png", np.zeros((7, 61, 3), dtype=np.uint8)))
    assert tuple(image.shape) == (3, 7, 61)


# -- size limits ------------------------------------------------------------------------------------
def test_decompression_bomb_guard_refuses_before_decoding(tmp_path, write_image, rgb_array, monkeypatch):
    path = write_image(tmp_path / "big.png", rgb_array)  # 600 pixels
    with pytest.raises(ImageLoadError, match=r"20 = 600 pixels, above the limit of 599 \(a decompression-bomb guard\)"):
        load_image(path, max_pixels=599)
    assert tuple(load_image(path, max_pixels=600).shape) == (3, 20, 30)
    monkeypatch.setenv("ADCORE_MAX_PIXELS", "100")
    with pytest.raises(ImageLoadError, match="limit of 100 "):
        load_image(path)
    with pytest.raises(ImageLoadError, match="limit of 100 "):
        FolderDataset(tmp_path, image_size=32)[0]
    monkeypatch.setenv("ADCORE_MAX_PIXELS", "lots")
    with pytest.raises(InvalidInputError, match="ADCORE_MAX_PIXELS must be a positive integer"):
        load_image(path)
    with pytest.raises(InvalidInputError, match="max_pixels must be a positive integer"):
        load_image(path, max_pixels=0)


def test_pillows_own_guard_does_not_override_the_configured_limit(tmp_path, write_image, rgb_array, monkeypatch):
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow alone would refuse 600 px (> 2 × 100)
    path = write_image(tmp_path / "a.png", rgb_array)
    assert tuple(load_image(path, max_pixels=1000).shape) == (3, 20, 30)
    assert Image.MAX_IMAGE_PIXELS == 100  # restored


def test_tiny_images_load_and_score_at_the_callers_size(tmp_path, write_image, gaussian):
    one = load_image(write_image(tmp_path / "one.png", np.full((1, 1, 3), 90, dtype=np.uint8)))
    assert tuple(one.shape) == (3, 1, 1)
    for height, width in [(2, 2), (3, 5), (5, 3)]:  # far below the backbone's stride of 8
        prediction = gaussian.predict(torch.full((1, 3, height, width), 0.5))
        assert tuple(prediction.anomaly_map.shape) == (1, height, width)
        assert bool(torch.isfinite(prediction.pred_score).all())
    with pytest.raises(InvalidInputError, match="1×1 pixels are too small to score"):
        gaussian.predict(one[None])


def test_huge_tensor_is_scored_without_error(gaussian):
    prediction = gaussian.predict(torch.full((1, 3, 300, 700), 0.5))
    assert tuple(prediction.anomaly_map.shape) == (1, 300, 700)


# -- mixed sizes -------------------------------------------------------------------------------------
def _mixed_folder(folder: Path, write_image) -> Path:
    rng = np.random.default_rng(3)
    for i, (h, w) in enumerate([(20, 30), (40, 40), (33, 17), (20, 30)]):
        write_image(folder / f"{i}.png", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    write_image(folder / "4.png", rng.integers(0, 256, (25, 25), dtype=np.uint8))  # and a grayscale one
    return folder


def test_mixed_sizes_are_resized_by_the_dataset(tmp_path, write_image):
    dataset = FolderDataset(_mixed_folder(tmp_path / "good", write_image), image_size=(24, 36))
    batch = next(iter(make_loader(dataset, 5)))
    assert tuple(batch["image"].shape) == (5, 3, 24, 36)
    assert tuple(batch["mask"].shape) == (5, 24, 36)


def test_mixed_sizes_without_resizing_name_the_files(tmp_path, write_image):
    dataset = FolderDataset(_mixed_folder(tmp_path / "good", write_image), image_size=None)
    with pytest.raises(InvalidInputError, match=r"images of different sizes cannot share a batch \(.*0\.png \(20, 30\).*"
                                                r"image_size=256"):
        next(iter(make_loader(dataset, 2)))
    assert [tuple(item["image"].shape) for item in make_loader(dataset, 1)][1] == (1, 3, 40, 40)


def test_fit_accepts_a_mixed_size_dataset_directly(tmp_path, write_image, mean_detector_class):
    dataset = FolderDataset(_mixed_folder(tmp_path / "good", write_image), image_size=None)
    detector = mean_detector_class(input_size=32).fit(dataset)  # ImageStream resizes each item
    assert detector.count_ == 5 and tuple(detector.mean_.shape) == (3, 32, 32)


def test_symlinked_image_is_followed(tmp_path, write_image, rgb_array):
    target = write_image(tmp_path / "elsewhere" / "real.png", rgb_array)
    (tmp_path / "good").mkdir()
    os.symlink(target, tmp_path / "good" / "link.png")
    assert len(FolderDataset(tmp_path / "good", image_size=32)) == 1
