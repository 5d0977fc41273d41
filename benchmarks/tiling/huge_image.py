"""Peak memory of one tiled prediction on a huge image (the tiling issue's 8,000 × 8,000 target).

Fits a detector with ``tile_size`` on the train mosaics (``make_mosaics.py``) at native resolution,
then predicts one ``--side`` × ``--side`` image made by repeating a test mosaic, and prints one JSON
line: the process's resident memory before the prediction (held, and its peak so far), its peak
after (``VmHWM``), seconds, tiles, and the map's shape. With ``--save MODEL`` it only fits and
saves; with ``--model-file MODEL`` it only loads and predicts, so the predicting process's peak is
the prediction's own (what a line's scoring process holds), not the fit's. ``--dtype uint8`` passes
the image as a decoder gives it (183 MB at 8,000²) instead of as float32 (732 MB, what
``adcore.data.load_image`` returns). ``--by-stage`` samples ``VmRSS`` every millisecond in a thread
(torch releases the GIL inside its kernels, so it sees their peaks; ``tracemalloc`` cannot see
torch's allocations) and reports the highest value under each stage of the prediction (input
checks, the blend, each tile batch's scoring), so each stage's share is its difference from the
memory held before. (``predict_seconds`` is then not a timing.) ``--figure`` writes a downscaled heatmap of the huge image.

    python benchmarks/tiling/huge_image.py --mosaics runs/tiling/mosaics/PA_FLR01_TL_mosaic --model padim --save m.safetensors
    python benchmarks/tiling/huge_image.py --mosaics runs/tiling/mosaics/PA_FLR01_TL_mosaic --model-file m.safetensors
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = ["main", "rss_mb", "build_huge_image"]


def rss_mb(field: str = "VmRSS") -> float:
    """This process's resident memory now (``VmRSS``) or at its peak (``VmHWM``), in MiB."""
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no {field} in /proc/self/status")


def build_huge_image(mosaics: Path, side: int, dtype: torch.dtype) -> torch.Tensor:
    """A ``(3, side, side)`` image of repeated copies of the first impure test mosaic, filled in
    place (repeating then cropping would hold two full-size copies for a moment and set the peak).
    ``uint8`` is the image as a decoder gives it; ``float32`` as :func:`adcore.data.load_image` does."""
    from adcore.data import load_image

    mosaic = load_image(sorted((mosaics / "test" / "impurity").glob("*.png"))[0])
    if dtype == torch.uint8:
        mosaic = (mosaic * 255).round().to(torch.uint8)
    height, width = mosaic.shape[-2:]
    huge = torch.empty(3, side, side, dtype=dtype)
    for top in range(0, side, height):
        for left in range(0, side, width):
            block = huge[:, top:top + height, left:left + width]
            block.copy_(mosaic[:, : block.shape[1], : block.shape[2]])
    return huge


class _Sampler(threading.Thread):
    """Keeps the highest RSS seen under each stage label."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stage = "start"
        self.peaks: dict[str, float] = {}
        self.running = True

    def run(self) -> None:
        while self.running:
            value = rss_mb()
            if value > self.peaks.get(self.stage, 0.0):
                self.peaks[self.stage] = value
            time.sleep(0.001)


def _wrap(owner: Any, name: str, sampler: _Sampler, label: str) -> None:
    original: Callable[..., Any] = getattr(owner, name)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        outer = sampler.stage
        sampler.stage = label
        try:
            return original(*args, **kwargs)
        finally:
            sampler.stage = outer

    setattr(owner, name, wrapped)


def _by_stage(detector) -> _Sampler:
    """Start a sampler and wrap the prediction path's stages (innermost label wins)."""
    from adcore import base, tiling

    sampler = _Sampler()
    sampler.start()
    _wrap(base, "validate_images", sampler, "validate_images")
    _wrap(tiling, "blend_tiles", sampler, "blend (tile scoring inside)")
    _wrap(type(detector), "_predict_resized", sampler, "tile batch: _predict_resized")
    _wrap(type(detector), "_predict", sampler, "tile batch: _predict")
    sampler.stage = "predict (other)"
    return sampler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mosaics", type=Path, required=True, help="the mosaic category folder")
    parser.add_argument("--model", default="padim")
    parser.add_argument("--side", type=int, default=8000)
    parser.add_argument("--tile-size", type=int, default=256)
    parser.add_argument("--param", "-p", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--dtype", choices=("float32", "uint8"), default="float32",
                        help="the huge image as float32 (as adcore.data.load_image gives it) or uint8 (as decoded)")
    parser.add_argument("--by-stage", action="store_true",
                        help="also sample VmRSS every millisecond and report the peak under each stage of the prediction")
    parser.add_argument("--figure", type=Path, default=None)
    parser.add_argument("--save", type=Path, default=None, help="fit, save the model here and stop")
    parser.add_argument("--model-file", type=Path, default=None, help="load this model instead of fitting one")
    args = parser.parse_args(argv)

    import adcore
    from adcore.data import MVTecDataset, make_loader
    from adcore.tiling import tile_grid
    from adcore.values import parse_assignments

    torch.set_num_threads(2)
    if args.model_file is not None:
        detector = adcore.load(args.model_file)
        args.model = type(detector).__name__.lower()
    else:
        detector = adcore.get_model(args.model, tile_size=args.tile_size, input_size=args.tile_size,
                                    **parse_assignments(args.param))
        train = MVTecDataset(args.mosaics, None, "train", image_size=detector.load_size)
        detector.fit(make_loader(train, 1))
        if args.save is not None:
            detector.save(args.save)
            print(json.dumps({"saved": str(args.save), "peak_rss_mb_fit": round(rss_mb("VmHWM"))}))
            return 0
    huge = build_huge_image(args.mosaics, args.side, getattr(torch, args.dtype))
    before, held = rss_mb("VmHWM"), rss_mb()
    sampler = _by_stage(detector) if args.by_stage else None
    start = time.perf_counter()
    prediction = detector.predict(huge[None])
    seconds = time.perf_counter() - start
    after = rss_mb("VmHWM")
    stages = {}
    if sampler is not None:
        sampler.running = False
        sampler.join()
        stages = {"peak_rss_mb_by_stage": {name: round(value) for name, value in sampler.peaks.items()}}
    grid = tile_grid(args.side, args.side, detector.tile_size, detector.tile_overlap)
    print(json.dumps({"model": args.model, "side": args.side, "tile_size": args.tile_size, "tiles": len(grid),
                      "input_dtype": args.dtype, "image_mb": round(huge.numel() * huge.element_size() / 2**20),
                      "map_shape": list(prediction.anomaly_map.shape), "predict_seconds": round(seconds, 1),
                      "peak_rss_mb_before_predict": round(before), "rss_mb_held_before_predict": round(held),
                      "peak_rss_mb": round(after), **stages}))
    if args.figure is not None:
        from adcore.viz import save_heatmap_panel

        shown = huge.float() / 255.0 if huge.dtype == torch.uint8 else huge
        small = torch.nn.functional.interpolate(shown[None], size=(1000, 1000), mode="area")[0]
        amap = torch.nn.functional.interpolate(prediction.anomaly_map[None], size=(1000, 1000), mode="area")[0, 0]
        save_heatmap_panel(args.figure, small, amap, vmin=float(amap.min()), vmax=float(amap.max()),
                           title=f"{args.model}, {args.side} x {args.side} px, {len(grid)} tiles of {args.tile_size}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
