"""The latency floor: the backbone's own forward time per image, at batch 1 and batched.

    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE ADCORE_PROGRESS=0 \\
        .venv/bin/python benchmarks/performance/latency_floor.py [--quick] [--size 256] [--batch 8] [--repeats 15]

For each detector named (default PatchCore, SPADE, PaDiM) the frozen extractor that detector
builds (EfficientNet-Lite0, truncated after the deepest stage it uses, batch norms folded) is run on
random 256-px images under ``torch.inference_mode``: one warm-up, then ``--repeats`` calls at batch 1
and at ``--batch``, median milliseconds per image. Every detector's latency is then reported as a
multiple of its own floor (``benchmarks/performance/abba.py`` does). One JSON line per detector.
``--quick``: 64 px, 2 repeats, to check the script.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

__all__ = ["main", "median_ms"]


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median milliseconds of ``repeats`` calls of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detectors", nargs="+", default=["patchcore", "spade", "padim"])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.size, args.repeats = 64, 2
    import torch

    from adcore.factory import get_model

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    images = torch.rand(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    for name in args.detectors:
        detector = get_model(name, input_size=args.size)
        extractor = detector.extractor
        with torch.inference_mode():
            batch1 = median_ms(lambda: extractor(images[:1]), args.repeats)
            batched = median_ms(lambda: extractor(images), max(1, args.repeats // 3)) / args.batch
        print(json.dumps({"detector": name, "backbone": detector.backbone, "layers": list(extractor.layer_names),
                          "size": args.size, "threads": torch.get_num_threads(), "floor_ms_batch1": round(batch1, 2),
                          "floor_ms_batched": round(batched, 2), "batch": args.batch}), flush=True)


if __name__ == "__main__":
    main()
