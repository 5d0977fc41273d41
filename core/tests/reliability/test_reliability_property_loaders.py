"""Property tests for the image and mask loaders: random sizes, modes and masks written with PIL."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from adcore.data import FolderDataset, load_image, load_mask, make_loader  # noqa: E402
from adcore.inputs import ImageStream  # noqa: E402

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# PIL modes written by _write: each returns the file and the exact expected tensor (None: checked for range only)
MODES = ["L", "RGB", "RGBA", "LA", "P", "1", "I;16", "CMYK", "F", "I"]


def _write(folder: Path, mode: str, base: np.ndarray) -> tuple[Path, torch.Tensor | None]:
    from PIL import Image

    gray = base[..., 0]
    if mode == "L":
        image, expected = Image.fromarray(gray), torch.from_numpy(gray).float().div(255).expand(3, -1, -1)
    elif mode == "RGB":
        image, expected = Image.fromarray(base), torch.from_numpy(base).permute(2, 0, 1).float().div(255)
    elif mode == "RGBA":
        image = Image.fromarray(np.concatenate([base, gray[..., None]], 2))
        expected = torch.from_numpy(base).permute(2, 0, 1).float().div(255)
    elif mode == "LA":
        image = Image.fromarray(np.stack([gray, base[..., 1]], 2))
        expected = torch.from_numpy(gray).float().div(255).expand(3, -1, -1)
    elif mode == "P":
        image, expected = Image.fromarray(base).convert("P"), None
    elif mode == "1":
        bits = gray > 127
        image, expected = Image.fromarray(bits), torch.from_numpy(bits).float().expand(3, -1, -1)
    elif mode == "I;16":
        wide = gray.astype(np.uint16) * 257
        image, expected = Image.fromarray(wide), torch.from_numpy(wide.astype(np.float32) / 65535).expand(3, -1, -1)
    elif mode == "I":
        ints = gray.astype(np.int32)
        image = Image.fromarray(ints)
        peak = 255.0 if ints.max() <= 255 else 65535.0
        expected = torch.from_numpy(ints.astype(np.float32) / peak).expand(3, -1, -1)
    elif mode == "F":
        floats = gray.astype(np.float32) / 255
        image, expected = Image.fromarray(floats), torch.from_numpy(floats).expand(3, -1, -1)
    else:
        image, expected = Image.fromarray(base).convert("CMYK"), None
    suffix = ".tif" if mode in ("CMYK", "F", "I") else ".png"
    path = folder / f"image_{mode.replace(';', '')}{suffix}"
    image.save(path)
    return path, expected


@SETTINGS
@given(height=st.integers(1, 40), width=st.integers(1, 40), mode=st.sampled_from(MODES), seed=st.integers(0, 2**16))
def test_any_mode_and_size_loads_as_rgb_in_unit_range(height, width, mode, seed):
    base = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as folder:
        path, expected = _write(Path(folder), mode, base)
        image = load_image(path)
    assert image.dtype == torch.float32 and tuple(image.shape) == (3, height, width)
    assert bool(torch.isfinite(image).all()) and float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    if expected is not None:
        assert torch.allclose(image, expected.float(), atol=1e-6), mode


@SETTINGS
@given(height=st.integers(1, 30), width=st.integers(1, 30), foreground=st.integers(1, 255),
       noise=st.integers(0, 127), seed=st.integers(0, 2**16))
def test_masks_binarise_by_the_documented_rule(height, width, foreground, noise, seed):
    rng = np.random.default_rng(seed)
    region = rng.random((height, width)) < 0.3
    values = np.where(region, foreground, 0).astype(np.uint8)
    if foreground >= 128:  # anti-aliased/noisy background below half the range
        values = np.where(region, values, rng.integers(0, noise + 1, (height, width))).astype(np.uint8)
    with tempfile.TemporaryDirectory() as folder:
        from PIL import Image

        path = Path(folder) / "mask.png"
        Image.fromarray(values).save(path)
        mask = load_mask(path)
    if values.max() >= 128:
        expected = values >= 128
    else:
        expected = values > 0
    assert mask.dtype == torch.float32 and tuple(mask.shape) == (height, width)
    assert torch.equal(mask, torch.from_numpy(expected.astype(np.float32)))


@SETTINGS
@given(sizes=st.lists(st.tuples(st.integers(4, 48), st.integers(4, 48)), min_size=1, max_size=5),
       target=st.tuples(st.integers(16, 40), st.integers(16, 40)), batch=st.integers(1, 4))
def test_folder_datasets_of_mixed_sizes_batch_at_the_requested_size(sizes, target, batch):
    from PIL import Image

    rng = np.random.default_rng(len(sizes))
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for name in ("good", "bad", "masks"):
            (root / name).mkdir()
        for index, (h, w) in enumerate(sizes):
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "good" / f"g{index}.png")
            Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).save(root / "bad" / f"b{index}.png")
            mask = np.zeros((h, w), dtype=np.uint8)
            mask[: max(1, h // 3), : max(1, w // 3)] = 255
            Image.fromarray(mask).save(root / "masks" / f"b{index}_mask.png")
        dataset = FolderDataset(root / "good", [root / "bad"], root / "masks", image_size=target)
        seen = 0
        for item in make_loader(dataset, batch):
            count = item["image"].shape[0]
            assert tuple(item["image"].shape) == (count, 3, *target)
            assert tuple(item["mask"].shape) == (count, *target)
            assert set(item["mask"].unique().tolist()) <= {0.0, 1.0}
            assert torch.equal(item["label"] == 1, item["mask"].flatten(1).amax(1) > 0)
            seen += count
        assert seen == 2 * len(sizes)
        stream = ImageStream(FolderDataset(root / "good", image_size=None), (16, 24), batch_size=batch)
        assert stream.num_images() == len(sizes)
        assert all(tuple(b.shape[1:]) == (3, 16, 24) for b in stream)


FORMATS = {".png": "PNG", ".jpg": "JPEG", ".tif": "TIFF", ".bmp": "BMP", ".webp": "WEBP"}


@settings(max_examples=60, deadline=None)
@given(suffix=st.sampled_from(sorted(FORMATS)), seed=st.integers(0, 2**32 - 1), cut=st.booleans())
def test_damaged_files_load_or_raise_image_load_error_only(suffix, seed, cut):
    """Random byte damage (and truncation) of valid files: a valid image or an ImageLoadError naming the file."""
    import io
    import random
    import warnings

    from PIL import Image

    from adcore.errors import ImageLoadError

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(buffer, FORMATS[suffix])
    data = bytearray(buffer.getvalue())
    chooser = random.Random(seed)
    for _ in range(chooser.randint(1, 8)):
        data[chooser.randrange(len(data))] = chooser.randrange(256)
    if cut:
        data = data[: chooser.randrange(1, len(data))]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"damaged{suffix}"
        path.write_bytes(bytes(data))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Pillow warns about e.g. corrupt EXIF and then decodes the pixels
                image = load_image(path)
        except ImageLoadError as exc:
            assert str(path) in str(exc)
            return
    assert image.dtype == torch.float32 and image.shape[0] == 3 and image.ndim == 3
    assert bool(torch.isfinite(image).all()) and 0.0 <= float(image.min()) and float(image.max()) <= 1.0
