"""Predict time and peak memory with the frozen CPU backbone's passes (``adcore.backbones.CPU_PIXELS_PER_PASS``,
two 256-px images) against one pass over the whole batch (the code before), for every detector on the
shared feature path (issue 21: nothing may get slower elsewhere).

    python benchmarks/performance/backbone_passes.py --prepare        # fit the models once (not timed)
    flock /tmp/adcore-bench.lock python benchmarks/performance/backbone_passes.py --rounds 3

``--prepare`` fits each detector on 24 of bottle's good training images at 256 px (the trained ones for
one epoch: the forward's cost does not depend on how well they learned) into ``--work``. The measurement
runs one fresh process per (detector, setting), in the order A B B A per round, each scoring the same
32 test images in batches of ``--batch`` after one warm-up batch: ms per image (total over images) and
the process's peak RSS (``VmHWM``). "passes" is the code as it is; "one pass" sets
``CPU_PIXELS_PER_PASS`` above any batch, "passes of N" to N images (``--against``). One JSON line per process to ``--results``, a summary to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["main"]

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data" / "mvtec_bottle" / "bottle"
DETECTORS = {"padim": {}, "patchcore": {}, "spade": {}, "stfpm": {"epochs": 1}, "fastflow": {"epochs": 1}}


def _images(split: str, count: int, size: int):
    """The first ``count`` images of bottle's ``split`` as adcore's own loader gives them."""
    import torch

    from adcore.data import MVTecDataset

    dataset = MVTecDataset(DATA.parent, DATA.name, split, image_size=size)
    return torch.stack([dataset[index]["image"] for index in range(min(count, len(dataset)))])


def _prepare(work: Path, size: int) -> None:
    import adcore

    work.mkdir(parents=True, exist_ok=True)
    train = None
    for name, params in DETECTORS.items():
        target = work / f"{name}.safetensors"
        if target.exists():
            continue
        if train is None:
            train = _images("train", 24, size)
        detector = adcore.get_model(name, input_size=size, seed=0, **params).fit(train)
        detector.save(target)
        print(f"fitted {name} -> {target}", file=sys.stderr)


def _child(model: Path, setting: str, batch: int, size: int) -> dict:
    import torch

    import adcore
    import adcore.backbones

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    if setting == "one pass":
        adcore.backbones.CPU_PIXELS_PER_PASS = 1 << 40
    elif setting.startswith("passes of "):  # "passes of N": N images of this size per pass
        adcore.backbones.CPU_PIXELS_PER_PASS = int(setting.split()[-1]) * size * size
    detector = adcore.load(model)
    images = _images("test", 32, size)
    with torch.inference_mode():
        detector.predict(images[:batch])
        start = time.perf_counter()
        for first in range(0, images.shape[0], batch):
            detector.predict(images[first:first + batch])
        seconds = time.perf_counter() - start
    peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")) / 1024
    return {"detector": model.stem, "setting": setting, "batch": batch, "ms_per_image": 1000 * seconds / images.shape[0],
            "peak_rss_mb": round(peak, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "backbone-passes")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "performance" / "results" / "backbone_passes.jsonl")
    parser.add_argument("--prepare", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--input-size", type=int, default=256)
    parser.add_argument("--detectors", nargs="+", default=list(DETECTORS))
    parser.add_argument("--against", default="one pass",
                        help='the other setting: "one pass" (the code before) or "passes of N" (N images per pass)')
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "SETTING"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(Path(args.child[0]), args.child[1], args.batch, args.input_size)))
        return 0
    if args.prepare:
        _prepare(args.work, args.input_size)
        return 0
    rows = []
    for _ in range(args.rounds):
        for name in args.detectors:
            for setting in ("passes", args.against, args.against, "passes"):
                done = subprocess.run([sys.executable, __file__, "--batch", str(args.batch), "--input-size",
                                       str(args.input_size), "--child", str(args.work / f"{name}.safetensors"), setting],
                                      capture_output=True, text=True, check=True)
                rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with open(args.results, "a", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    other = args.against
    print(f"| detector | passes: ms/img (median) | {other}: ms/img (median) | passes ÷ {other} | peak RSS MB passes / {other} |")
    print("|---|---:|---:|---:|---|")
    for name in args.detectors:
        mine = {s: [r for r in rows if r["detector"] == name and r["setting"] == s] for s in ("passes", other)}
        ms = {s: statistics.median(r["ms_per_image"] for r in v) for s, v in mine.items()}
        rss = {s: statistics.median(r["peak_rss_mb"] for r in v) for s, v in mine.items()}
        print(f"| {name} | {ms['passes']:.1f} | {ms[other]:.1f} | {ms['passes'] / ms[other]:.2f} | "
              f"{rss['passes']:.0f} / {rss[other]:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
