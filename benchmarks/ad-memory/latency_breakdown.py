"""PatchCore on MVTec bottle at 256 px: fit once, then time each stage of ``predict`` and score the test set.

    flock /tmp/adcore-bench.lock env OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE ADCORE_PROGRESS=0 \
        .venv/bin/python benchmarks/ad-memory/latency_breakdown.py

Prints one JSON line with the stage timings (ms, mean of 5 after a warm-up) and one with the metrics.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import torch

from ad_memory.patchcore import PatchCore
from adcore.data import MVTecDataset, make_loader
from adcore.evaluation import collect_predictions
from adcore.metrics import evaluate

__all__ = ["main"]

ROOT, CATEGORY, SIZE = "../shared/data/mvtec_bottle", "bottle", 256


def main() -> None:
    torch.set_num_threads(2)
    train = MVTecDataset(ROOT, CATEGORY, split="train", image_size=SIZE)
    images = torch.stack([train[i]["image"] for i in range(len(train))])
    started = time.perf_counter()
    detector = PatchCore().fit(images)
    timings = {"fit_s": time.perf_counter() - started, "bank": list(detector.memory_bank_.shape)}
    sample = images[:8]
    with torch.inference_mode():
        timings["backbone_bs1_ms"] = _timed(lambda: detector.extractor(sample[:1]))
        timings["embed_bs1_ms"] = _timed(lambda: detector._embed(sample[:1]))
        features = detector._embed(sample[:1])
        patches = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1]).contiguous()
        index = detector._index()
        timings["faiss_flat_search_bs1_ms"] = _timed(lambda: index.search(patches, k=1))
        bank = detector.memory_bank_
        bank_norms = (bank * bank).sum(1)
        # the same exact search as one BLAS product and a row minimum, for comparison
        timings["torch_mm_search_bs1_ms"] = _timed(
            lambda: torch.addmm(bank_norms[None, :], patches, bank.t(), alpha=-2.0).min(1))
        timings["predict_bs1_ms"] = _timed(lambda: detector.predict(sample[:1]))
        timings["predict_bs8_ms_per_img"] = _timed(lambda: detector.predict(sample), repeats=3) / len(sample)
    print(json.dumps(timings))
    test = MVTecDataset(ROOT, CATEGORY, split="test", image_size=SIZE)
    outputs = collect_predictions(detector, make_loader(test, 8))
    metrics = evaluate(outputs["labels"], outputs["scores"], outputs["masks"], outputs["maps"])
    print(json.dumps({"bottle_metrics": metrics}, default=float))


def _timed(fn: Callable[[], object], repeats: int = 5) -> float:
    """Mean milliseconds of ``repeats`` calls after one warm-up call."""
    fn()
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - started) / repeats * 1000


if __name__ == "__main__":
    main()
