"""Throughput of `adcore predict` against the Python API's own batched predict (docs/predict.md).

For one detector: train it on a PIPED category's good images (or take --model FILE), then measure

* floor: ``detector.predict`` on the test images pre-loaded as tensors at the detector's load size,
  in batches of --batch-size (no decoding, no writing): the best a CLI can do per image;
* cli: ``adcore predict`` as a subprocess, with and without heatmaps, on the test set and on a folder
  of N images (the test set repeated through symbolic links, one sub-folder per repeat).

The CLI is watched while it runs: rows in results.jsonl and the process's resident memory, every
0.2 s. Its steady-state rate is measured between the first and the last row (model loading and
imports excluded; they are reported apart as the start-up time), and memory at 10 %, 50 % and
100 % of the rows shows whether it stays flat. One JSON object per measurement goes to stdout.

    python benchmarks/predict/throughput.py --data ../shared/data/piped/PA_FLR01_TL --model-name padim \\
        --images 2000 --work runs/predict-bench
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def _rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def repeated_folder(test_images: list[Path], count: int, folder: Path) -> Path:
    """``folder/rep00000/<name>`` symbolic links: the test images repeated up to ``count`` files."""
    folder.mkdir(parents=True, exist_ok=True)
    made = 0
    for repeat in range(count // len(test_images) + 1):
        for image in test_images:
            if made == count:
                return folder
            link = folder / f"rep{repeat:05d}" / f"{image.parent.name}_{image.name}"
            link.parent.mkdir(exist_ok=True)
            if not link.exists():
                link.symlink_to(image.resolve())
            made += 1
    return folder


def floor(model_file: Path, images: list[Path], batch_size: int) -> dict:
    import torch

    import adcore
    from adcore.data import load_image
    from adcore.line.decoding import resize_for_detector

    detector = adcore.load(model_file)
    tensors = [resize_for_detector(load_image(p), detector.load_size) for p in images]
    batches = [torch.stack(tensors[i:i + batch_size]) for i in range(0, len(tensors), batch_size)] \
        if detector.load_size is not None else [t[None] for t in tensors]
    detector.predict(batches[0])  # warm-up (lazy backbone, allocator)
    start = time.perf_counter()
    for batch in batches:
        detector.predict(batch)
    seconds = time.perf_counter() - start
    return {"kind": "floor", "images": len(images), "seconds": seconds, "images_per_s": len(images) / seconds}


def cli(model_file: Path, source: Path, out: Path, *, heatmaps: bool, batch_size: int, workers: int,
        expected: int) -> dict:
    command = [sys.executable, "-m", "adcore.cli", "predict", str(model_file), str(source), "--out", str(out),
               "--batch-size", str(batch_size), "--workers", str(workers)] + ([] if heatmaps else ["--no-heatmaps"])
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "ADCORE_PROGRESS": "0"})
    samples = []  # (seconds, rows, rss MiB)
    results = out / "results.jsonl"
    while process.poll() is None:
        rows = results.read_text().count("\n") if results.exists() else 0
        samples.append((time.perf_counter() - started, rows, _rss_mib(process.pid)))
        time.sleep(0.2)
    stderr = process.stderr.read()
    total = time.perf_counter() - started
    rows = results.read_text().count("\n") if results.exists() else 0
    if process.returncode not in (0, 3) or rows != expected:
        raise SystemExit(f"adcore predict failed (exit {process.returncode}, {rows}/{expected} rows): {stderr}")
    first = next((t for t, r, _ in samples if r > 0), total)
    steady = max(total - first, 1e-9)

    def rss_at(fraction: float) -> float | None:
        return next((m for _, r, m in samples if r >= fraction * expected and m is not None), None)

    return {"kind": "cli", "heatmaps": heatmaps, "images": expected, "seconds": total, "startup_s": first,
            "images_per_s": (expected - 1) / steady if expected > 1 else None,
            "rss_mib": {"10%": rss_at(0.1), "50%": rss_at(0.5), "100%": rss_at(1.0)},
            "batch_size": batch_size, "workers": workers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a PIPED/MVTec category folder")
    parser.add_argument("--model-name", default="padim")
    parser.add_argument("--model", type=Path, help="a trained model file (else one is trained with adcore train)")
    parser.add_argument("--images", type=int, default=2000, help="images of the repeated set")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--work", type=Path, default=Path("runs/predict-bench"))
    parser.add_argument("-p", "--param", action="append", default=[], help="detector parameter for training")
    args = parser.parse_args()

    from adcore.data import list_images

    work = args.work / args.model_name
    work.mkdir(parents=True, exist_ok=True)
    model = args.model or work / "model.safetensors"
    if not model.exists():
        extra = [x for p in args.param for x in ("-p", p)]
        subprocess.run([sys.executable, "-m", "adcore.cli", "train", args.model_name, str(args.data), "--out",
                        str(model), *extra], check=True, stdout=sys.stderr)  # stdout carries only the JSON rows
    test = sorted(p for folder in sorted((args.data / "test").iterdir()) if folder.is_dir()
                  for p in list_images(folder))
    big = repeated_folder(test, args.images, work / f"repeated-{args.images}")
    print(json.dumps({"model": args.model_name, "set": "test", **floor(model, test, args.batch_size)}), flush=True)
    for name, source, count in (("test", args.data / "test", len(test)), (f"repeated-{args.images}", big, args.images)):
        for heatmaps in (False, True):
            out = work / f"out-{name}-{'heatmaps' if heatmaps else 'scores'}"
            if out.exists():
                import shutil

                shutil.rmtree(out)
            row = cli(model, source, out, heatmaps=heatmaps, batch_size=args.batch_size, workers=args.workers,
                      expected=count)
            print(json.dumps({"model": args.model_name, "set": name, **row}), flush=True)


if __name__ == "__main__":
    main()
