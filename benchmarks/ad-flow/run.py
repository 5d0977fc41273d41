"""Benchmark one ad-flow detector on one MVTec-layout category; writes a JSON record.

Usage (serialise through the shared lock so timings are honest)::

    flock /tmp/adcore-bench.lock env OMP_NUM_THREADS=2 .venv/bin/python benchmarks/ad-flow/run.py \
        fastflow --root /work/shared/data/mvtec_bottle --category bottle --params '{"epochs": 40}' \
        --out benchmarks/ad-flow/results/fastflow_bottle.json

Measures image AUROC, pixel AUROC, AUPRO, F1-max (adcore.metrics.evaluate), fit seconds (total,
and per epoch of flow training), ms per image at batch 1 and batched, peak RSS, the loss per epoch.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch

from adcore.data import MVTecDataset, make_loader
from adcore.factory import get_model
from adcore.metrics import evaluate

__all__ = ["main"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=["fastflow", "differnet"])
    parser.add_argument("--root", required=True)
    parser.add_argument("--category", required=True)
    parser.add_argument("--params", default="{}", help="JSON of detector parameters")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16, help="batch size for the batched timing / evaluation")
    parser.add_argument("--bs1-images", type=int, default=8, help="images timed one by one")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    torch.set_num_threads(max(1, torch.get_num_threads()))
    params = {"input_size": args.size, **json.loads(args.params)}
    detector = get_model(args.model, **params)
    train = MVTecDataset(args.root, args.category, "train", image_size=args.size)
    test = MVTecDataset(args.root, args.category, "test", image_size=args.size)

    started = time.perf_counter()
    detector.fit(make_loader(train, batch_size=32))
    fit_seconds = time.perf_counter() - started

    scores, maps, labels, masks = [], [], [], []
    started = time.perf_counter()
    for batch in make_loader(test, batch_size=args.batch):
        prediction = detector.predict(batch["image"])
        scores.append(prediction.pred_score)
        maps.append(prediction.anomaly_map)
        labels.append(batch["label"])
        masks.append(batch["mask"])
    batched_ms = (time.perf_counter() - started) * 1000 / len(test)

    single = [test[i]["image"][None] for i in range(min(args.bs1_images, len(test)))]
    detector.predict(single[0])  # warm-up
    started = time.perf_counter()
    for image in single:
        detector.predict(image)
    bs1_ms = (time.perf_counter() - started) * 1000 / len(single)

    metrics = evaluate(torch.cat(labels), torch.cat(scores), torch.cat(masks), torch.cat(maps))
    epochs = len(detector.history_["loss"])
    record = {
        "model": args.model, "category": args.category, "train_images": len(train), "test_images": len(test),
        "params": {k: (list(v) if isinstance(v, tuple) else v) for k, v in detector.get_params().items()},
        "image_auroc": metrics["image_auroc"], "pixel_auroc": metrics.get("pixel_auroc"),
        "aupro": metrics.get("aupro"), "image_f1_max": metrics["image_f1_max"],
        "fit_s": fit_seconds, "epochs": epochs, "train_s": detector.timing_["train_s"],
        "train_s_per_epoch": detector.timing_["train_s"] / max(epochs, 1), "timing": detector.timing_,
        "ms_per_image_bs1": bs1_ms, "ms_per_image_batched": batched_ms, "batched_size": args.batch,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch_threads": torch.get_num_threads(), "loss": detector.history_["loss"],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1))
    print(json.dumps({k: v for k, v in record.items() if k not in ("loss", "params")}, indent=1))


if __name__ == "__main__":
    main()
