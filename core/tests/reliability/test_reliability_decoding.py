"""Memory-safe decoding (issue 22): large images are decoded reduced when they are resized anyway,
the default bomb guard is sized to the machine, and the cost is said before decoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from adcore import data, decoding, memory
from adcore.data import FolderDataset, default_max_pixels, load_image
from adcore.errors import ImageLoadError


def smooth(height: int, width: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // width, y * 255 // height, (x + y) * 127 // (width + height)], -1).astype(np.uint8)


def resized(image: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(image[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]


@pytest.mark.parametrize("suffix, expected", [(".png", (3, 40, 67)), (".jpg", (3, 60, 100))])
def test_large_images_are_decoded_reduced_for_a_small_target(tmp_path, write_image, monkeypatch, suffix, expected):
    monkeypatch.setattr(decoding, "REDUCE_ABOVE_PIXELS", 1000)
    path = write_image(tmp_path / f"big{suffix}", smooth(120, 200), quality=95)
    full = load_image(path)
    reduced = load_image(path, target_size=32)
    assert tuple(full.shape) == (3, 120, 200)
    # PNG: Image.reduce by 3 (still >= 32 per side); JPEG: DCT scaling to 1/2 (1/4 would go below 40×67)
    assert tuple(reduced.shape) == expected
    assert float((resized(full, 32) - resized(reduced, 32)).abs().max()) < 0.03


def test_small_images_and_no_target_decode_exactly_as_before(tmp_path, write_image, rgb_array):
    path = write_image(tmp_path / "a.png", rgb_array)
    assert torch.equal(load_image(path, target_size=16), load_image(path))


def test_datasets_decode_reduced_at_their_image_size(tmp_path, write_image, monkeypatch):
    monkeypatch.setattr(decoding, "REDUCE_ABOVE_PIXELS", 1000)
    for i in range(2):
        write_image(tmp_path / "good" / f"{i}.png", smooth(120, 200))
    calls = []
    real = data.load_image
    monkeypatch.setattr(data, "load_image", lambda *a, **k: calls.append(k.get("target_size")) or real(*a, **k))
    item = FolderDataset(tmp_path / "good", image_size=32)[0]
    assert tuple(item["image"].shape) == (3, 32, 32) and calls == [(32, 32)]


def test_default_guard_is_sized_to_the_machine(monkeypatch):
    monkeypatch.delenv("ADCORE_MAX_PIXELS", raising=False)
    monkeypatch.setattr(memory, "total_memory_bytes", lambda: 16 * 10**9)
    assert default_max_pixels() == 16 * 10**9 // 2 // 180 == data.resolve_max_pixels()
    monkeypatch.setattr(memory, "total_memory_bytes", lambda: 512 * 10**9)
    assert default_max_pixels() == 100_000_000
    monkeypatch.setattr(memory, "total_memory_bytes", lambda: 10**8)
    assert default_max_pixels() == 4_000_000
    monkeypatch.setattr(memory, "total_memory_bytes", lambda: None)
    assert default_max_pixels() == 100_000_000


def test_the_guard_says_what_the_image_would_cost(tmp_path, write_image, rgb_array):
    path = write_image(tmp_path / "ok.png", rgb_array)
    with pytest.raises(ImageLoadError) as info:
        load_image(path, max_pixels=500)
    assert str(info.value) == (f"image {path} has 30×20 = 600 pixels, above the limit of 500 (a decompression-bomb "
                               "guard); decoding it needs about 1.8 KB and its float tensor 7.2 KB. Raise the limit with "
                               "max_pixels= or ADCORE_MAX_PIXELS if the machine has the memory")


def test_an_image_larger_than_the_free_memory_is_refused_before_decoding(tmp_path, write_image, monkeypatch):
    path = write_image(tmp_path / "big.png", smooth(1000, 2000))
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: 10_000_000)
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    assert str(info.value) == (f"image {path} (2000×1000) cannot be read: decoding it needs about 6.0 MB and its float "
                               "tensor 24.0 MB, more than the 10.0 MB of memory available")
