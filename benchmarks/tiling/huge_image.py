"""Peak memory of one tiled prediction on a huge image (the tiling issue's 8,000 × 8,000 target).

Fits a detector with ``tile_size`` on the train mosaics (``make_mosaics.py``) at native resolution,
then predicts one ``--side`` × ``--side`` image made by repeating a test mosaic, and prints one JSON
line: peak RSS of the process before and after the prediction, seconds, tiles, and the map's shape.
With ``--save MODEL`` it only fits and saves; with ``--model-file MODEL`` it only loads and predicts,
so the predicting process's peak is the prediction's own (what a line's scoring process holds),
not the fit's. ``--figure`` writes a downscaled heatmap of the huge image.

    python benchmarks/tiling/huge_image.py --mosaics runs/tiling/mosaics/PA_FLR01_TL_mosaic --model padim --save m.safetensors
    python benchmarks/tiling/huge_image.py --mosaics runs/tiling/mosaics/PA_FLR01_TL_mosaic --model-file m.safetensors
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch

__all__ = ["main"]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mosaics", type=Path, required=True, help="the mosaic category folder")
    parser.add_argument("--model", default="padim")
    parser.add_argument("--side", type=int, default=8000)
    parser.add_argument("--tile-size", type=int, default=256)
    parser.add_argument("--param", "-p", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--figure", type=Path, default=None)
    parser.add_argument("--save", type=Path, default=None, help="fit, save the model here and stop")
    parser.add_argument("--model-file", type=Path, default=None, help="load this model instead of fitting one")
    args = parser.parse_args(argv)

    import adcore
    from adcore.data import MVTecDataset, load_image, make_loader
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
            print(json.dumps({"saved": str(args.save), "peak_rss_mb_fit": round(_peak_rss_mb())}))
            return 0
    mosaic = load_image(sorted((args.mosaics / "test" / "impurity").glob("*.png"))[0])
    repeats = -(-args.side // mosaic.shape[-1])
    huge = mosaic.repeat(1, repeats, repeats)[:, : args.side, : args.side].contiguous()
    del mosaic
    before = _peak_rss_mb()
    start = time.perf_counter()
    prediction = detector.predict(huge[None])
    seconds = time.perf_counter() - start
    after = _peak_rss_mb()
    grid = tile_grid(args.side, args.side, detector.tile_size, detector.tile_overlap)
    print(json.dumps({"model": args.model, "side": args.side, "tile_size": args.tile_size, "tiles": len(grid),
                      "map_shape": list(prediction.anomaly_map.shape), "predict_seconds": round(seconds, 1),
                      "peak_rss_mb_before_predict": round(before), "peak_rss_mb": round(after),
                      "image_mb": round(huge.numel() * 4 / 2**20)}))
    if args.figure is not None:
        from adcore.viz import save_heatmap_panel

        small = torch.nn.functional.interpolate(huge[None], size=(1000, 1000), mode="area")[0]
        amap = torch.nn.functional.interpolate(prediction.anomaly_map[None], size=(1000, 1000), mode="area")[0, 0]
        save_heatmap_panel(args.figure, small, amap, vmin=float(amap.min()), vmax=float(amap.max()),
                           title=f"{args.model}, {args.side} x {args.side} px, {len(grid)} tiles of {args.tile_size}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
