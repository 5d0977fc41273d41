"""Latency and peak memory of one predicting process: torch eager, ONNX Runtime or OpenVINO.

    python benchmarks/deployment/latency.py --engine onnx --artefact runs/deploy/padim/onnx \
        --images ../shared/data/mvtec_bottle/bottle/test --batch 1 8

One engine per process, so the reported peak RSS (``ru_maxrss``) is that engine's alone: the ONNX
Runtime and OpenVINO engines import neither torch nor adcore (images are decoded with Pillow and
resized once, before timing). Prints one JSON line per batch size. Run it only on an idle machine
(run.sh holds the shared measurement lock); timings taken beside other work are void.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def load_images(folder: Path, size: tuple[int, int], limit: int) -> np.ndarray:
    from PIL import Image

    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES)[:limit]
    if not paths:
        sys.exit(f"no images under {folder}")
    arrays = [np.asarray(Image.open(p).convert("RGB").resize((size[1], size[0]), Image.BILINEAR), dtype=np.float32)
              for p in paths]
    return (np.stack(arrays) / 255.0).transpose(0, 3, 1, 2).copy()


def engine(name: str, artefact: Path | None, model: Path | None):
    """``(run(batch) -> None, input_size)`` for the engine ``name``."""
    if name == "torch":
        import torch

        import adcore

        detector = adcore.load(model)

        def run_torch(batch: np.ndarray) -> None:
            detector.predict(torch.from_numpy(batch))

        return run_torch, tuple(detector.image_size)
    sidecar = json.loads((artefact / "adcore-export.json").read_text())
    size = tuple(sidecar["input_size"])
    if name == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(artefact / sidecar["artefact"]), providers=["CPUExecutionProvider"])
        return (lambda batch: session.run(None, {"images": batch})), size
    import openvino as ov

    compiled = ov.Core().compile_model(str(artefact / sidecar["artefact"]), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return (lambda batch: compiled(batch)), size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engine", choices=["torch", "onnx", "openvino"], required=True)
    parser.add_argument("--model", type=Path, help="the .safetensors model (torch engine)")
    parser.add_argument("--artefact", type=Path, help="the export folder (onnx/openvino engines)")
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=32, help="images to time")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    run, size = engine(args.engine, args.artefact, args.model)
    images = load_images(args.images, size, args.limit)
    for batch_size in args.batch:
        batches = [images[i:i + batch_size] for i in range(0, len(images), batch_size)]
        for batch in batches[: args.warmup]:
            run(batch)
        started = time.perf_counter()
        for batch in batches:
            run(batch)
        elapsed = time.perf_counter() - started
        print(json.dumps({"label": args.label, "engine": args.engine, "batch": batch_size, "images": len(images),
                          "ms_per_image": round(1000 * elapsed / len(images), 3),
                          "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                          "input_size": list(size), "machine": platform.processor() or platform.machine()}), flush=True)


if __name__ == "__main__":
    main()
