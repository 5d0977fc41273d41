"""anomalib 2.7's PatchCore inference time with a memory bank of the size its fit would build.

Run with anomalib's interpreter (not adcore's), pointing at the reference runner, which this
script imports for its offline Lite0 weights and network guard (it is not copied):

    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE ANOMALIB_VENV/bin/python \\
        benchmarks/performance/anomalib_patchcore_latency.py \\
        --runner ../shared/tools/anomalib-reference/run_anomalib.py \\
        --data ../shared/data/mvtec_bottle --category bottle --out RESULT.json [--quick]

Why: anomalib's own fit on bottle takes about 32 minutes (its greedy coreset runs at ~12 picks/s
here), and inference time depends on the memory bank's size, not on which patches it holds (an
exhaustive search). So this script builds anomalib's ``Patchcore`` exactly as the runner does
(Lite0, ``blocks.2``/``blocks.4``, 256 px, no crop, ``num_neighbors`` 9), collects the training
patch embeddings with anomalib's own training forward, fills the memory bank with a uniform random
``coreset_ratio`` share of them (the size its coreset would have: ratio × patches), and times the
end-to-end module forward (pre-processor → model → post-processor) with the runner's own
``measure_latency``. It records no accuracy (the bank is not a coreset). ``--quick``: 4 training
and 4 test images, to check the script.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import resource
import sys
import time
from pathlib import Path

__all__ = ["main"]


def _load_runner(path: str):
    # the runner sets up offline weights and the network guard when imported; its main() is not run
    spec = importlib.util.spec_from_file_location("run_anomalib", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["run_anomalib"] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runner", required=True, help="path of ../shared/tools/anomalib-reference/run_anomalib.py")
    parser.add_argument("--data", required=True, help="an MVTec-layout root, e.g. ../shared/data/mvtec_bottle")
    parser.add_argument("--category", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--coreset-ratio", type=float, default=0.1)
    parser.add_argument("--bank-size", type=int, default=None, help="override ratio × patches")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--latency-images", type=int, default=32)
    parser.add_argument("--latency-batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", default=None, help="passed on to the runner (converted weights)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    runner = _load_runner(args.runner)
    import numpy as np
    import torch
    from anomalib.models import Patchcore
    from PIL import Image

    torch.set_num_threads(args.threads)
    root = Path(args.data) / args.category
    train_paths = sorted((root / "train" / "good").glob("*.png"))
    test_paths = sorted(p for p in (root / "test").rglob("*.png"))
    if args.quick:
        train_paths, test_paths, args.latency_images, args.latency_batch = train_paths[:4], test_paths[:4], 4, 2

    def read(path: Path) -> torch.Tensor:
        array = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
        return torch.from_numpy(array).permute(2, 0, 1).contiguous()

    size = (args.image_size, args.image_size)
    model = Patchcore(backbone="tf_efficientnet_lite0", layers=runner.EFFNET_LAYERS["patchcore"], pre_trained=True,
                      coreset_sampling_ratio=args.coreset_ratio, num_neighbors=9,
                      pre_processor=Patchcore.configure_pre_processor(image_size=size), evaluator=False, visualizer=False)
    started = time.perf_counter()
    model.model.train()
    with torch.no_grad():
        for first in range(0, len(train_paths), 8):
            batch = torch.stack([read(p) for p in train_paths[first:first + 8]])
            model.model(model.pre_processor(batch) if callable(model.pre_processor) else batch)
    embeddings = torch.vstack(model.model.embedding_store)
    model.model.embedding_store.clear()
    bank_size = args.bank_size or max(1, int(len(embeddings) * args.coreset_ratio))
    chosen = torch.randperm(len(embeddings), generator=torch.Generator().manual_seed(args.seed))[:bank_size]
    model.model.memory_bank = embeddings[chosen].contiguous()
    del embeddings
    build_seconds = time.perf_counter() - started
    model.eval()
    test_images = [read(p) for p in test_paths[:args.latency_images]]
    latency = runner.measure_latency(model, test_images, batch_size=args.latency_batch, warmup=3, reps=3)
    result = {"library": "anomalib", "model": "patchcore", "category": args.category, "image_size": args.image_size,
              "threads": torch.get_num_threads(), "bank": list(model.model.memory_bank.shape),
              "bank_filled_by": "uniform random selection (latency depends on the bank's size, not its content)",
              "embedding_and_bank_seconds": round(build_seconds, 2), **latency,
              "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), "quick": args.quick}
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
