"""Re-score one trained FastFlow with other anomaly-map formulas (a diagnostic for docs/ad-flow.md).

Trains FastFlow on a category once, then scores the test split with the detector's map
(-exp(-½·mean_c z²) per level, averaged: the paper / anomalib) and with variants: the same map
Gaussian-smoothed (σ = 4), the per-level log-likelihood ½·mean_c z² (no exp: rules out
saturation of the exp at 0 as the cause of a low pixel AUROC), smoothed, and the summed
negative log-likelihood over channels and levels. Prints one line per variant:
``epochs variant image_auroc pixel_auroc aupro``.

    flock /tmp/adcore-bench.lock env OMP_NUM_THREADS=2 ADCORE_PROGRESS=0 .venv/bin/python \\
        benchmarks/ad-flow/map_variants.py --root ../shared/data/mvtec_bottle --category bottle --epochs 12
"""

from __future__ import annotations

import argparse

import torch

from adcore.data import MVTecDataset, make_loader
from adcore.factory import get_model
from adcore.metrics import evaluate
from adcore.ops import gaussian_blur, upsample

__all__ = ["main", "variant_maps"]


def variant_maps(detector, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every map variant for one batch, from the trained flow's latent outputs."""
    with torch.no_grad():
        features = detector.extractor(images)
        outputs = detector.head_([features[name] for name in detector.resolved_layers()])
    size = tuple(images.shape[-2:])
    likelihood = torch.stack([upsample(-torch.exp(-0.5 * z.pow(2).mean(1)), size) for z, _ in outputs]).mean(0)
    log_likelihood = torch.stack([upsample(0.5 * z.pow(2).mean(1), size) for z, _ in outputs]).mean(0)
    summed = torch.stack([upsample(0.5 * z.pow(2).sum(1), size) for z, _ in outputs]).sum(0)
    return {"exp (default)": likelihood, "exp, smoothed σ=4": gaussian_blur(likelihood, 4.0),
            "log-likelihood": log_likelihood, "log-likelihood, smoothed σ=4": gaussian_blur(log_likelihood, 4.0),
            "summed NLL": summed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--category", required=True)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()

    detector = get_model("fastflow", input_size=args.size, epochs=args.epochs, batch_size=args.batch_size)
    train = MVTecDataset(args.root, args.category, "train", image_size=args.size)
    test = MVTecDataset(args.root, args.category, "test", image_size=args.size)
    detector.fit(make_loader(train, batch_size=32))
    maps: dict[str, list[torch.Tensor]] = {}
    labels, masks = [], []
    for batch in make_loader(test, batch_size=16):
        for name, value in variant_maps(detector, batch["image"]).items():
            maps.setdefault(name, []).append(value)
        labels.append(torch.as_tensor(batch["label"]))
        masks.append(batch["mask"].bool())
    labels_all, masks_all = torch.cat(labels), torch.cat(masks)
    for name, parts in maps.items():
        stacked = torch.cat(parts)
        metrics = evaluate(labels_all, stacked.flatten(1).amax(1), masks_all, stacked)
        print(f"{args.epochs} {name}: {metrics['image_auroc']:.4f} {metrics['pixel_auroc']:.4f} {metrics['aupro']:.4f}",
              flush=True)


if __name__ == "__main__":
    main()
