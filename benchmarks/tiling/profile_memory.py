"""Where the memory of one tiled prediction goes: resident memory sampled stage by stage.

Loads a tiled model (``huge_image.py --save``), builds one ``--side`` × ``--side`` image by
repeating a test mosaic, and predicts it while a thread reads ``VmRSS`` from ``/proc/self/status``
every millisecond (torch releases the GIL inside its kernels, so the thread sees the peaks inside
them). The prediction path is wrapped at its stages (input checks, each tile batch's scoring, the
blend, the stack of the maps); each stage's highest RSS is printed as one JSON line, with the RSS
just before the prediction, so the share of every stage is the difference.
``tracemalloc`` cannot see torch's allocations; this can.

    python benchmarks/tiling/profile_memory.py --model-file runs/tiling/huge_patchcore.safetensors \
        --mosaics runs/tiling/mosaics/PA_FLR01_TL_mosaic
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
from huge_image import build_huge_image, rss_mb  # this folder is on sys.path when run as a script

__all__ = ["main"]


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mosaics", type=Path, required=True)
    parser.add_argument("--model-file", type=Path, required=True)
    parser.add_argument("--side", type=int, default=8000)
    parser.add_argument("--dtype", choices=("float32", "uint8"), default="float32")
    args = parser.parse_args(argv)

    import adcore
    from adcore import base, tiling

    torch.set_num_threads(2)
    sampler = _Sampler()
    sampler.start()
    sampler.stage = "load model"
    detector = adcore.load(args.model_file)
    sampler.stage = "build image"
    huge = build_huge_image(args.mosaics, args.side, getattr(torch, args.dtype))
    sampler.stage = "idle before predict"
    time.sleep(0.2)
    held_before = rss_mb()
    _wrap(base, "validate_images", sampler, "validate_images")
    _wrap(tiling, "blend_tiles", sampler, "blend (tile scoring inside)")
    _wrap(type(detector), "_predict_resized", sampler, "tile batch: _predict_resized")
    _wrap(type(detector), "_predict", sampler, "tile batch: _predict")
    _wrap(torch, "stack", sampler, "torch.stack")
    sampler.stage = "predict (other)"
    start = time.perf_counter()
    prediction = detector.predict(huge[None])
    seconds = time.perf_counter() - start
    sampler.stage = "after predict"
    time.sleep(0.2)
    sampler.running = False
    sampler.join()
    print(json.dumps({"model": type(detector).__name__.lower(), "side": args.side,
                      "input_dtype": str(huge.dtype).removeprefix("torch."),
                      "image_mb": round(huge.numel() * huge.element_size() / 2**20),
                      "map_shape": list(prediction.anomaly_map.shape), "predict_seconds_untimed": round(seconds, 1),
                      "rss_mb_held_before_predict": round(held_before), "peak_rss_mb_vmhwm": round(rss_mb("VmHWM")),
                      "peak_rss_mb_by_stage": {k: round(v) for k, v in sampler.peaks.items()}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
