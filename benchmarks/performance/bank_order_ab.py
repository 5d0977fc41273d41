"""PatchCore with the bank keyed by image content (issue 23) against the stream-order bank, one process each.

    OMP_WAIT_POLICY=PASSIVE ADCORE_PROGRESS=0 farm-bench -n 8 --timeout 600 --vs "sh -c 'exec .venv/bin/python benchmarks/performance/bank_order_ab.py plain >>/tmp/p.txt 2>&1'" \
        -- sh -c 'exec .venv/bin/python benchmarks/performance/bank_order_ab.py keyed >>/tmp/k.txt 2>&1'

``keyed`` is the current code; ``plain`` passes no keys to the collector, which is the code before
(rows in stream order). Each process fits on PIPED PA_BDP01_TL's 24 good images at 256 px (batches of
8) and prints its fit seconds and the median of 24 batch-1 ``predict`` calls on test images.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import ad_memory.patchcore as patchcore_module
from adcore import get_model

ROOT = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "piped" / "PA_BDP01_TL"


def load(paths: list[Path]) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.asarray(Image.open(p).convert("RGB").resize((256, 256)), dtype=np.float32) / 255)
                        .permute(2, 0, 1) for p in paths])


def main(mode: str) -> None:
    torch.set_num_threads(2)
    train = load(sorted((ROOT / "train" / "good").glob("*.png")))
    test = load(sorted((ROOT / "test").rglob("*.png"))[:24])
    if mode == "plain":
        patchcore_module.content_keys = lambda batch: None  # the collector's stream-order path
    start = time.perf_counter()
    model = get_model("patchcore", input_size=256).fit([train[i:i + 8] for i in range(0, len(train), 8)])
    fit = time.perf_counter() - start
    model.predict(test[:1])
    times = []
    for i in range(test.shape[0]):
        start = time.perf_counter()
        model.predict(test[i:i + 1])
        times.append((time.perf_counter() - start) * 1000)
    print(mode, "fit", round(fit, 2), "bs1 median", round(statistics.median(times), 1))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "keyed")
