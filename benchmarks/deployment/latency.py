"""Latency and peak memory of one predicting process: torch eager, ONNX Runtime or OpenVINO.

    python benchmarks/deployment/latency.py --engine onnx --artefact runs/deployment/padim/onnx \
        --images ../shared/data/mvtec_bottle/bottle/test --batch 8 --label padim

One engine and one batch size per process (measure.sh runs one process each), so the reported peak
resident memory is that engine's alone at that batch size: ``peak_rss_mb`` is the process's
``VmHWM`` (not ``ru_maxrss``, which Linux carries across ``exec`` from the forking parent). The ONNX
Runtime and OpenVINO engines import neither torch nor adcore (the record says so). Every engine gets
the same input: ``--limit`` test images decoded with Pillow and resized to the model's input size
once, before timing, as float32 NCHW in [0, 1]; torch runs ``adcore.load(model).predict`` on it (the
detector's whole eager path: normalisation, forward, map post-processing, score), the other two run
the exported graph, which holds the same steps. Each engine runs on ``OMP_NUM_THREADS`` threads
(default 2). Times: ``--warmup`` calls first, then every batch of the images timed on its own;
``ms_per_image_median`` is the median call divided by the batch size, ``ms_per_image_mean`` the
total divided by the images. An artefact whose sidecar declares ``max_batch`` gets each batch in
calls of at most that many images, as adcore-runtime and ``adcore.deployed`` feed it (the record's
``max_batch``). Prints one JSON line. Timings are void beside other work: measure.sh
holds the shared measurement lock around each process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB (``VmHWM``; ``ru_maxrss`` where there is no /proc)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def load_images(folder: Path, size: tuple[int, int], limit: int) -> np.ndarray:
    from PIL import Image

    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES and not p.name.startswith("."))
    paths = paths[:limit]
    if not paths:
        sys.exit(f"no images under {folder}")
    arrays = [np.asarray(Image.open(p).convert("RGB").resize((size[1], size[0]), Image.BILINEAR), dtype=np.float32)
              for p in paths]
    return np.ascontiguousarray((np.stack(arrays) / 255.0).transpose(0, 3, 1, 2), dtype=np.float32)


def split(run, limit: int | None):
    """``run`` on calls of at most ``limit`` images (the sidecar's ``max_batch``), as the consumers do."""
    if limit is None:
        return run
    return lambda batch: [run(batch[i:i + limit]) for i in range(0, len(batch), limit)]


def engine(name: str, target: Path, threads: int):
    """``(run(batch) -> None, input_size, max_batch)`` for the engine ``name`` on ``target``."""
    if name == "torch":
        import torch

        import adcore

        torch.set_num_threads(threads)
        detector = adcore.load(target)

        def run_torch(batch: np.ndarray) -> None:
            detector.predict(torch.from_numpy(batch))

        return run_torch, tuple(detector.image_size), None
    sidecar = json.loads((target / "adcore-export.json").read_text())
    size = tuple(sidecar["input_size"])
    graph = str(target / sidecar["artefact"])
    if name == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        return split(lambda batch: session.run(None, {"images": batch}), sidecar.get("max_batch")), size, \
            sidecar.get("max_batch")
    import openvino as ov

    compiled = ov.Core().compile_model(graph, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                      "INFERENCE_NUM_THREADS": threads})
    request = compiled.create_infer_request()
    return split(lambda batch: request.infer({0: batch}), sidecar.get("max_batch")), size, sidecar.get("max_batch")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engine", choices=["torch", "onnx", "openvino"], required=True)
    parser.add_argument("--model", type=Path, help="the .safetensors model (torch engine)")
    parser.add_argument("--artefact", type=Path, help="the export folder (onnx/openvino engines)")
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=64, help="images to time")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls first")
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    target = args.model if args.engine == "torch" else args.artefact
    if target is None:
        parser.error(f"--engine {args.engine} needs {'--model' if args.engine == 'torch' else '--artefact'}")
    threads = int(os.environ.get("OMP_NUM_THREADS", "2"))
    started = time.perf_counter()
    run, size, max_batch = engine(args.engine, target, threads)
    loaded = time.perf_counter() - started
    images = load_images(args.images, size, args.limit)
    batches = [images[i:i + args.batch] for i in range(0, len(images) - args.batch + 1, args.batch)]
    for i in range(args.warmup):
        run(batches[i % len(batches)])
    times = []
    for batch in batches:
        begin = time.perf_counter()
        run(batch)
        times.append(time.perf_counter() - begin)
    timed = len(batches) * args.batch
    print(json.dumps({"label": args.label, "engine": args.engine, "batch": args.batch, "max_batch": max_batch,
                      "images": timed,
                      "ms_per_image_median": round(1000 * sorted(times)[len(times) // 2] / args.batch, 3),
                      "ms_per_image_mean": round(1000 * sum(times) / timed, 3),
                      "load_seconds": round(loaded, 3), "peak_rss_mb": round(peak_rss_mb(), 1),
                      "torch_imported": "torch" in sys.modules, "adcore_imported": "adcore" in sys.modules,
                      "threads": threads, "input_size": list(size), "target": str(target),
                      "machine": platform.processor() or platform.machine(),
                      "python": platform.python_version()}), flush=True)


if __name__ == "__main__":
    main()
