"""Pixel metrics' time and memory, this tree's ``adcore.metrics`` against another version of the file.

    # 1. the test maps of PaDiM (seed 0, 256 px) on one set, saved once
    .venv/bin/python benchmarks/performance/metrics_memory.py --dump mvtec_bottle:bottle /tmp/bottle_maps.npz
    # 2. the old module, then each version in a fresh process (3 calls each; VmHWM reset before each)
    git show 7944428~1:core/src/adcore/metrics.py > /tmp/metrics_old.py
    .venv/bin/python benchmarks/performance/metrics_memory.py /tmp/bottle_maps.npz --reference /tmp/metrics_old.py
    .venv/bin/python benchmarks/performance/metrics_memory.py /tmp/bottle_maps.npz

Prints ``evaluate``'s pixel AUROC and AUPRO, seconds per call and the peak above the level before
each call (MB). Seconds are rough unless the machine is quiet.
"""

from __future__ import annotations

import argparse
import importlib.util
import time

import numpy as np

__all__ = ["main"]


def _rss_mb() -> float:
    with open("/proc/self/statm", encoding="ascii") as handle:
        return int(handle.read().split()[1]) * 4096 / 2**20


def _hwm_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as handle:
        return next(int(line.split()[1]) / 1024 for line in handle if line.startswith("VmHWM"))


def _dump(dataset: str, path: str) -> None:
    import torch

    from ad_stat.padim import Padim
    from adcore.data import make_loader
    from adcore.datasets import parse_dataset
    from adcore.evaluation import collect_predictions

    torch.set_num_threads(2)
    train, test = parse_dataset(dataset, "../shared/data").load(256)
    outputs = collect_predictions(Padim(seed=0).fit(make_loader(train, 8)), make_loader(test, 8))
    np.savez(path, **{key: outputs[key].numpy() for key in ("maps", "masks", "labels", "scores")})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("maps", nargs="+", help="NPZ from --dump, or with --dump: DATASET NPZ")
    parser.add_argument("--dump", action="store_true")
    parser.add_argument("--reference", help="another metrics.py to load instead of adcore.metrics")
    args = parser.parse_args()
    if args.dump:
        _dump(*args.maps)
        return
    import torch

    if args.reference:
        spec = importlib.util.spec_from_file_location("metrics_reference", args.reference)
        metrics = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(metrics)
    else:
        import adcore.metrics as metrics
    data = np.load(args.maps[0])
    tensors = {key: torch.from_numpy(data[key]) for key in ("labels", "scores", "masks", "maps")}
    runs = []
    for _ in range(3):
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
        level, started = _rss_mb(), time.perf_counter()
        found = metrics.evaluate(tensors["labels"], tensors["scores"], tensors["masks"], tensors["maps"])
        runs.append((round(time.perf_counter() - started, 3), round(_hwm_mb() - level, 1)))
    print({"metrics": args.reference or "adcore.metrics", "pixel_auroc": found["pixel_auroc"], "aupro": found["aupro"],
           "seconds": [r[0] for r in runs], "peak_above_level_mb": [r[1] for r in runs]})


if __name__ == "__main__":
    main()
