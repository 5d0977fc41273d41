"""Benchmark ad-memory's detectors on one MVTec-layout category (one process per run, for honest peak RSS).

Fits on the good training images (all of them, or the first ``--train-limit``), predicts the whole
test split and reports image AUROC, pixel AUROC, AUPRO, image F1-max, fit seconds, ms/image at
batch 1 and batched, the backbone's own forward time for the same stages and batch sizes, the
coreset statistics (PatchCore) and the process's peak RSS. Appends one JSON line to ``--out``.

    flock /tmp/adcore-bench.lock env OMP_NUM_THREADS=2 ADCORE_PROGRESS=0 .venv/bin/python \\
        benchmarks/ad-memory/run.py --model patchcore --root /work/shared/data/mvtec_bottle --category bottle
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

__all__ = ["main"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, choices=["patchcore", "spade"])
    parser.add_argument("--root", required=True, help="dataset root holding CATEGORY/{train,test,ground_truth}")
    parser.add_argument("--category", required=True)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--params", default="{}", help="JSON of extra detector parameters")
    parser.add_argument("--train-limit", type=int, default=None, help="fit on the first N training images only")
    parser.add_argument("--fit-only", action="store_true", help="skip the test split (fit time/memory scaling runs)")
    parser.add_argument("--batch", type=int, default=8, help="batch size for prediction and the batched latency")
    parser.add_argument("--extra-indexes", default="", help="PatchCore: also evaluate these index kinds on the same bank, e.g. hnsw,ivf")
    parser.add_argument("--out", default=None, help="append a JSON line with the results here")
    args = parser.parse_args()

    from torch.utils.data import Subset

    from adcore.data import MVTecDataset, make_loader
    from adcore.evaluation import collect_predictions, measure_latency, peak_rss_mb
    from adcore.factory import get_model
    from adcore.metrics import evaluate

    params = {"input_size": args.size, **json.loads(args.params)}
    detector = get_model(args.model, **params)
    train = MVTecDataset(args.root, args.category, "train", image_size=args.size)
    if args.train_limit is not None:
        train = Subset(train, range(min(args.train_limit, len(train))))
    record: dict = {"model": args.model, "category": args.category, "params": params, "threads": torch.get_num_threads(),
                    "train_images": len(train)}

    started = time.perf_counter()
    detector.fit(make_loader(train, args.batch))
    record["fit_seconds"] = round(time.perf_counter() - started, 2)
    record["rss_after_fit_mb"] = round(peak_rss_mb(), 1)
    if args.model == "patchcore":
        record["coreset"] = detector.coreset_stats_
        record["bank"] = list(detector.memory_bank_.shape)

    if not args.fit_only:
        test = MVTecDataset(args.root, args.category, "test", image_size=args.size)
        record["test_images"] = len(test)
        started = time.perf_counter()
        outputs = collect_predictions(detector, make_loader(test, args.batch))
        record["predict_seconds"] = round(time.perf_counter() - started, 2)
        metrics = evaluate(outputs["labels"], outputs["scores"], outputs["masks"], outputs["maps"])
        record.update({k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items()})
        sample = torch.stack([test[i]["image"] for i in range(min(args.batch, len(test)))])
        batch1, batched = measure_latency(detector, sample, batch_size=args.batch, repeats=5)
        record["ms_per_image_batch1"], record["ms_per_image_batched"] = round(batch1, 1), round(batched, 1)
        backbone1, backbone_batched = _backbone_latency(detector._extractor, sample, args.batch)
        record["backbone_ms_batch1"], record["backbone_ms_batched"] = round(backbone1, 1), round(backbone_batched, 1)
        record["backbone_layers"] = list(detector._extractor.layer_names)
        for kind in filter(None, args.extra_indexes.split(",")):
            # same memory bank, other faiss index: accuracy and latency of approximate search
            other = type(detector)(**{**detector.get_params(), "index": kind})
            other.memory_bank_, other.fitted_ = detector.memory_bank_, True
            other._extractor = detector._extractor
            outputs = collect_predictions(other, make_loader(test, args.batch))
            scores = evaluate(outputs["labels"], outputs["scores"], outputs["masks"], outputs["maps"])
            latency = measure_latency(other, sample, batch_size=args.batch, repeats=5)
            record[f"index_{kind}"] = {"image_auroc": round(scores["image_auroc"], 4), "pixel_auroc": round(scores["pixel_auroc"], 4),
                                       "aupro": round(scores["aupro"], 4), "ms_per_image_batch1": round(latency[0], 1),
                                       "ms_per_image_batched": round(latency[1], 1)}
    record["peak_rss_mb"] = round(peak_rss_mb(), 1)
    line = json.dumps(record)
    print(line)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a") as handle:
            handle.write(line + "\n")


def _backbone_latency(extractor: torch.nn.Module, images: torch.Tensor, batch: int) -> tuple[float, float]:
    """The frozen backbone's forward alone (same stages, already-resized input), ms per image."""

    def timed(chunk: torch.Tensor) -> float:
        with torch.inference_mode():
            extractor(chunk)
            runs = []
            for _ in range(5):
                started = time.perf_counter()
                extractor(chunk)
                runs.append(time.perf_counter() - started)
        return sorted(runs)[len(runs) // 2] * 1000.0 / chunk.shape[0]

    return timed(images[:1]), timed(images[:batch])


if __name__ == "__main__":
    main()
