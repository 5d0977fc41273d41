"""PaDiM on one MVTec-layout set with the backbone's input normalisation as adcore feeds it (the
statistics the Lite0 weights were trained with, timm's ``pretrained_cfg``: mean = std = 0.5) and as
anomalib feeds it (ImageNet's mean and std), everything else equal: fit on all good training images,
the whole test split scored, image / pixel AUROC and AUPRO from ``adcore.metrics``. Accuracy only.

    python benchmarks/performance/padim_normalisation.py --data ../shared/data/mvtec_bottle --category bottle
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

__all__ = ["main"]

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def run(data: Path, category: str, normalisation: str, seed: int, size: int) -> dict:
    import adcore
    from adcore.data import MVTecDataset
    from adcore.evaluation import evaluate_detector

    detector = adcore.get_model("padim", input_size=size, seed=seed)
    if normalisation == "imagenet":
        extractor = detector.extractor
        extractor.mean.copy_(torch.tensor(IMAGENET[0]).view(1, 3, 1, 1))
        extractor.std.copy_(torch.tensor(IMAGENET[1]).view(1, 3, 1, 1))
    train = MVTecDataset(data, category, "train", image_size=size)
    test = MVTecDataset(data, category, "test", image_size=size)
    result, _ = evaluate_detector(detector, train, test, calibration_set=[], latency=False)
    return {"category": category, "normalisation": normalisation, "seed": seed, "image_auroc": result.image_auroc,
            "pixel_auroc": result.pixel_auroc, "aupro": result.aupro,
            "mean": detector.extractor.mean.flatten().tolist(), "std": detector.extractor.std.flatten().tolist()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--category", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--input-size", type=int, default=256)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/ad-stat/results/padim_normalisation.jsonl"))
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    for normalisation in ("lite0", "imagenet"):
        row = run(args.data, args.category, normalisation, args.seed, args.input_size)
        print(json.dumps(row), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
