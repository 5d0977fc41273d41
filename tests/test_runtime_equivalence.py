"""adcore-runtime decodes and resizes images exactly as adcore does (issue 16: one resize rule,
tested for equality between the two packages).

adcore: ``adcore.data.load_image`` + ``F.interpolate(bilinear, align_corners=False,
antialias=shrinking)`` (BaseDetector's rule for images, no antialias for maps back). The runtime:
its numpy/Pillow ``load_image``, ``resize_image`` and ``resize_map``. Both within 1e-5.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("adcore_runtime") is None:  # a checkout without `pip install -e runtime`
    sys.path.insert(0, str(REPO / "runtime" / "src"))

from adcore_runtime import images as runtime_images  # noqa: E402

from adcore.data import load_image  # noqa: E402

TOLERANCE = 1e-5
SAMPLES = sorted((REPO / "examples" / "sample_data").rglob("*.png"))
#: sizes around the samples' 128×128: shrinking, enlarging, and one side each way
SIZES = [(256, 256), (100, 77), (37, 129), (128, 200), (300, 61), (128, 128), (1, 1)]


def adcore_resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """BaseDetector._predict_resized's rule for the image going into the model."""
    shrinking = image.shape[-2] > size[0] or image.shape[-1] > size[1]
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=shrinking)[0]


def test_the_samples_are_there():
    assert len(SAMPLES) >= 100, "examples/sample_data holds the real images this comparison uses"


@pytest.mark.parametrize("path", SAMPLES[::12], ids=lambda p: p.parent.name + "/" + p.name)
def test_real_images_decode_and_resize_alike(path: Path):
    ours = load_image(path)
    theirs = runtime_images.load_image(path)
    assert theirs.dtype == np.float32 and theirs.shape == tuple(ours.shape)
    assert np.abs(theirs - ours.numpy()).max() <= TOLERANCE
    for size in SIZES:
        expected = adcore_resize(ours, size).numpy()
        got = runtime_images.resize_image(theirs, size)
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= TOLERANCE, (size, np.abs(got - expected).max())


def _odd_files(folder: Path) -> list[Path]:
    rng = np.random.default_rng(7)
    rgb = rng.integers(0, 256, (203, 141, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (57, 311), dtype=np.uint8)
    files = {
        "rgb.png": Image.fromarray(rgb),
        "gray.png": Image.fromarray(gray),
        "bilevel.png": Image.fromarray(gray > 128),
        "palette.png": Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE),
        "rgba.png": Image.fromarray(np.dstack([rgb, rgb[..., 0]]), "RGBA"),
        "la.png": Image.fromarray(np.dstack([gray, gray[::-1]]), "LA"),
        "gray16.png": Image.fromarray((gray.astype(np.uint16) * 251)),
        "cmyk.jpg": Image.fromarray(rgb).convert("CMYK"),
        "rgb.jpg": Image.fromarray(rgb),
        "rgb.tif": Image.fromarray(rgb[:17, :5]),
        "tiny.bmp": Image.fromarray(rgb[:2, :3]),
    }
    paths = []
    for name, image in files.items():
        image.save(folder / name)
        paths.append(folder / name)
    rotated = Image.fromarray(rgb)
    exif = rotated.getexif()
    exif[0x0112] = 8  # rotate 90° on display
    rotated.save(folder / "rotated.jpg", exif=exif)
    paths.append(folder / "rotated.jpg")
    return paths


def test_odd_files_and_sizes_decode_and_resize_alike(tmp_path: Path):
    for path in _odd_files(tmp_path):
        ours = load_image(path)
        theirs = runtime_images.load_image(path)
        assert theirs.shape == tuple(ours.shape), path.name
        assert np.abs(theirs - ours.numpy()).max() <= TOLERANCE, path.name
        height, width = ours.shape[-2:]
        # no output side of 1 when shrinking: torch 2.14's antialiased kernel then returns one value for every row
        # (a torch quirk no model input size meets; the runtime computes the true filter there)
        for size in [(224, 224), (height * 3 + 1, width * 2 - 1), (max(2, height // 5), max(2, width // 3)),
                     (max(2, height // 2), width * 2 + 3)]:
            got = runtime_images.resize_image(theirs, size)
            assert np.abs(got - adcore_resize(ours, size).numpy()).max() <= TOLERANCE, (path.name, size)


@pytest.mark.parametrize("source, target", [((256, 256), (900, 700)), ((28, 28), (128, 128)), ((64, 96), (37, 53)),
                                            ((224, 224), (224, 223)), ((32, 48), (1, 1)), ((7, 3), (1000, 17))])
def test_maps_resize_back_alike(source, target):
    amap = torch.from_numpy(np.random.default_rng(3).gamma(2.0, 3.0, source).astype(np.float32))
    expected = F.interpolate(amap[None, None], size=target, mode="bilinear", align_corners=False)[0, 0].numpy()
    got = runtime_images.resize_map(amap.numpy(), target)
    assert got.shape == target
    span = float(expected.max() - expected.min()) or 1.0
    assert np.abs(got - expected).max() / span <= TOLERANCE


def test_errors_match_in_kind(tmp_path: Path):
    from adcore.errors import ImageLoadError

    (tmp_path / "junk.png").write_bytes(b"definitely not a png")
    with pytest.raises(ImageLoadError):
        load_image(tmp_path / "junk.png")
    with pytest.raises(runtime_images.ImageLoadError, match="cannot read image"):
        runtime_images.load_image(tmp_path / "junk.png")


@pytest.mark.parametrize("height, width, tile, overlap", [(300, 200, 64, 0.25), (64, 64, 64, 0.0), (100, 37, (48, 20), 0.5),
                                                          (513, 129, 128, 0.1), (20, 90, 32, 0.3)])
def test_tiling_cuts_and_blends_alike(height, width, tile, overlap):
    from adcore.tiling import blend_tiles, tile_grid

    from adcore_runtime import tiling as runtime_tiling

    ours = tile_grid(height, width, tile, overlap)
    theirs = runtime_tiling.tile_grid(height, width, tile, overlap)
    assert (theirs.tops, theirs.lefts, theirs.tile_h, theirs.tile_w) == (ours.tops, ours.lefts, ours.tile_h, ours.tile_w)
    rng = np.random.default_rng(5)
    maps = [(t, l, rng.gamma(2.0, 1.0, (ours.tile_h, ours.tile_w)).astype(np.float32)) for t, l in ours.boxes()]
    expected = blend_tiles(ours, ((t, l, torch.from_numpy(m)) for t, l, m in maps), overlap).numpy()
    got = runtime_tiling.blend_tiles(theirs, maps, overlap)
    assert np.abs(got - expected).max() / float(expected.max() - expected.min()) <= TOLERANCE


def _toy_detector_class():
    from adcore.base import BaseDetector

    class ToyDetector(BaseDetector):
        """Local mean of |x - 0.5|, upsampled to the input size; the score is its maximum."""

        def __init__(self, *, input_size: int = 32) -> None:
            self.input_size = input_size

        def _fit(self, stream) -> None:
            for _ in stream:
                pass

        def _predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            deviation = (images - 0.5).abs().mean(1, keepdim=True)
            amap = F.interpolate(F.avg_pool2d(deviation, 4), size=images.shape[-2:], mode="bilinear",
                                 align_corners=False)[:, 0]
            return amap.amax(dim=(1, 2)), amap

    return ToyDetector


def _export_toy(detector, folder: Path) -> Path:
    """Contract C, by hand: the detector's resize-free graph and the sidecar (adcore export's job)."""
    import json
    import warnings

    class Graph(torch.nn.Module):
        def forward(self, images):
            return detector._predict(images)

    folder.mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Graph(), torch.rand(2, 3, *detector.image_size), str(folder / "model.onnx"),
                          input_names=["images"], output_names=["pred_score", "anomaly_map"],
                          dynamic_axes={"images": {0: "n"}}, dynamo=False)
    tiling = None if not detector.tiled else {name: getattr(detector, name)
                                              for name in ("tile_size", "tile_overlap", "tile_input_size")}
    (folder / "adcore-export.json").write_text(json.dumps({
        "format": "adcore-export", "format_version": 1, "artefact": "model.onnx", "runtime": "onnx",
        "detector": "toy", "input_size": list(detector.image_size), "outputs": ["pred_score", "anomaly_map"],
        "input": {"name": "images", "dtype": "float32", "layout": "NCHW", "range": [0, 1]},
        "threshold": None, "score_scale": None, "pixel_threshold": None, "pixel_scale": None, "tiling": tiling}))
    return folder


@pytest.mark.parametrize("params", [{"input_size": 32}, {"input_size": 32, "tile_size": 40, "tile_overlap": 0.25},
                                    {"input_size": 32, "tile_size": 48, "tile_input_size": 100}])
def test_runtime_predicts_what_the_detector_predicts(tmp_path: Path, params):
    """End to end on real and odd-size files: adcore's predict (load_image, BaseDetector's resize,
    tiling and map resize) against the runtime on the same graph."""
    pytest.importorskip("onnxruntime")
    from adcore.testing import make_normal_images

    from adcore_runtime import Runtime

    detector = _toy_detector_class()(**params).fit(make_normal_images(2, (32, 32), seed=0))
    runtime = Runtime(_export_toy(detector, tmp_path / "export"))
    odd = tmp_path / "odd.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (77, 131, 3), dtype=np.uint8)).save(odd)
    for path in [SAMPLES[0], SAMPLES[-1], odd]:
        image = load_image(path)
        expected = detector.predict(image[None])
        got = runtime.predict([path])
        np.testing.assert_allclose(got.pred_score, expected.pred_score.numpy(), rtol=1e-4)
        span = float(expected.anomaly_map.max() - expected.anomaly_map.min()) or 1.0
        assert got.anomaly_map.shape == tuple(expected.anomaly_map.shape)
        assert np.abs(got.anomaly_map - expected.anomaly_map.numpy()).max() / span <= 1e-4, path.name


def _counting(calls: list[int], run, position: int = 0):
    """``run`` recording the batch size of each call (the batch is its argument at ``position``)."""
    def counted(*args):
        calls.append(len(args[position]))
        return run(*args)
    return counted


def test_max_batch_is_read_and_honoured_alike(tmp_path: Path):
    """The sidecar's optional max_batch: both consumers read it alike, split a batch into the same
    graph calls, and refuse the same bad values."""
    import json

    pytest.importorskip("onnxruntime")
    from adcore.deployed import ExportedModel, _split_calls
    from adcore.errors import ModelFileError
    from adcore.testing import make_normal_images

    from adcore_runtime import ArtefactError, Runtime

    folder = _export_toy(_toy_detector_class()(input_size=32).fit(make_normal_images(2, (32, 32), seed=0)),
                         tmp_path / "export")
    sidecar = json.loads((folder / "adcore-export.json").read_text())
    images = make_normal_images(7, (40, 40), seed=3)
    for value in ("absent", None, 1, 3):
        written = dict(sidecar) if value == "absent" else {**sidecar, "max_batch": value}
        (folder / "adcore-export.json").write_text(json.dumps(written))
        runtime, exported = Runtime(folder, batch_size=8), ExportedModel(folder)
        want = None if value == "absent" else value
        assert runtime.artefact.max_batch == exported.max_batch == want
        runtime_calls: list[int] = []
        core_calls: list[int] = []
        runtime._engine.run = _counting(runtime_calls, runtime._engine.run, position=1)
        exported._run = _split_calls(_counting(core_calls, exported._runner()), exported.max_batch)
        got, expected = runtime.predict(images.numpy()), exported.predict(images)
        assert runtime_calls == core_calls == ([7] if want is None else [want] * (7 // want) + [7 % want] * (7 % want > 0))
        np.testing.assert_allclose(got.pred_score, expected.pred_score.numpy(), rtol=1e-5)
    for bad in (0, "2", True, 2.0):
        (folder / "adcore-export.json").write_text(json.dumps({**sidecar, "max_batch": bad}))
        with pytest.raises(ArtefactError, match="max_batch must be a positive integer or null"):
            Runtime(folder)
        with pytest.raises(ModelFileError, match="max_batch must be a positive integer or null"):
            ExportedModel(folder)
