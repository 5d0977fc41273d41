"""Greedy coreset speed and memory on real patch features (PatchCore's bank for one category).

Extracts the category's training patch features exactly as PatchCore does, projects them to 128
dimensions, then runs :func:`ad_memory.memory_bank.greedy_coreset` at ratio 0.1 while a thread
samples the process's *current* RSS every 0.2 s (flat memory means the loop allocates nothing that
grows). For comparison it times the textbook loop (one full distance pass per pick) for a few
hundred picks. Prints one JSON line.

    flock /tmp/adcore-bench.lock env OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE ADCORE_PROGRESS=0 \\
        .venv/bin/python benchmarks/ad-memory/coreset.py --root ../shared/data/mvtec_bottle --category bottle
"""

from __future__ import annotations

import argparse
import json
import math
import os
import threading
import time

import torch

__all__ = ["main"]


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--category", required=True)
    parser.add_argument("--ratio", type=float, default=0.1)
    parser.add_argument("--reference-steps", type=int, default=300)
    args = parser.parse_args()

    from ad_memory.memory_bank import (
        CoresetStats,
        FeatureCollector,
        greedy_coreset,
        greedy_coreset_reference,
        random_projection,
    )
    from ad_memory.patchcore import PatchCore
    from adcore.data import MVTecDataset, make_loader
    from adcore.evaluation import peak_rss_mb

    detector = PatchCore()
    collector = FeatureCollector()
    with torch.inference_mode():
        for batch in make_loader(MVTecDataset(args.root, args.category, "train", image_size=256), 8):
            features = detector._embed(batch["image"])
            collector.add(features.permute(0, 2, 3, 1).reshape(-1, features.shape[1]))
    generator = torch.Generator().manual_seed(0)
    points = collector.project(random_projection(collector.chunks()[0].shape[1], 128, generator))
    count = math.ceil(args.ratio * points.shape[0])

    started = time.perf_counter()
    greedy_coreset_reference(points, args.reference_steps)
    reference_rate = args.reference_steps / (time.perf_counter() - started)

    samples: list[float] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(_current_rss_mb())
            time.sleep(0.2)

    before = _current_rss_mb()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stats = CoresetStats()
    greedy_coreset(points.clone(), count, stats=stats, overwrite=True)
    done.set()
    sampler.join()
    # the loop's memory: RSS over the second half of the run against the first sample after setup
    half = samples[len(samples) // 2:]
    print(json.dumps({
        "category": args.category, "threads": torch.get_num_threads(), "patches": points.shape[0],
        "picks": stats.iterations, "seconds": round(stats.seconds, 1),
        "iterations_per_second": round(stats.iterations_per_second, 1),
        "textbook_iterations_per_second": round(reference_rate, 1),
        "touched_fraction": round(stats.touched_fraction, 4),
        "rss_before_mb": round(before, 1), "rss_during_min_mb": round(min(samples), 1),
        "rss_during_max_mb": round(max(samples), 1), "rss_second_half_range_mb": round(max(half) - min(half), 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }))


if __name__ == "__main__":
    main()
