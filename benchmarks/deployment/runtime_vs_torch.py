"""Deployed latency and peak memory: adcore-runtime (ONNX Runtime, OpenVINO) against the torch model.

    python benchmarks/deployment/runtime_vs_torch.py            # PaDiM and PatchCore, bottle, 256 px
    python benchmarks/deployment/runtime_vs_torch.py --quick    # smoke: tiny data, 64 px, a few images

For PaDiM and PatchCore (default parameters at ``--input-size``, trained once on the good training
images, or reused from ``--work``), exports ONNX and OpenVINO artefacts with ``adcore export``
(parity checked), then measures each engine in a FRESH process, one after the other:

* ``torch``: ``adcore.load(model).predict(image)``;
* ``runtime-onnx`` / ``runtime-openvino``: ``adcore_runtime.Runtime(artefact, backend=...).predict(image)``
  (the process imports neither torch nor adcore; the record says so).

Each process decodes ``--images`` test images with its own package's decoder (the same definition,
tested equal), then times ``predict`` one image at a time (batch 1, the images at their file size,
so the resize to the input size and of the map back are included, as deployed) after ``--warmup``
calls: ms per image as the median and mean. ``peak_rss_mb`` is the process's peak resident memory
after the timing (``VmHWM``), i.e. what deploying it costs in memory. One JSON line per (detector, engine) goes to
``--results`` and a Markdown table to stdout.

Timings are void on a shared machine: run it alone (``flock`` on the shared lock, as run.sh does).
Expected duration on 2 cores: about 15 minutes, estimated, not measured (two trainings at 256 px
dominate, then four exports with their parity checks and six timing processes of 40 images);
reruns reuse the models and artefacts in ``--work`` (a few minutes). ``--quick`` took 2.7 minutes
on the loaded development machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from latency import peak_rss_mb as _peak_rss_mb  # this folder's latency.py: VmHWM, not ru_maxrss

REPO = Path(__file__).resolve().parents[2]
DETECTORS = ("padim", "patchcore")
ENGINES = ("torch", "runtime-onnx", "runtime-openvino")
SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


# -- one engine, in its own process ---------------------------------------------------------------
def _image_paths(folder: Path, limit: int) -> list[Path]:
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES and not p.name.startswith("."))
    if not paths:
        sys.exit(f"no images under {folder}")
    return paths[:limit]


def measure(engine: str, target: Path, images: Path, limit: int, warmup: int) -> dict:
    """Load ``target`` with ``engine``, score the images one at a time; the measured record."""
    started = time.perf_counter()
    paths = _image_paths(images, limit)
    if engine == "torch":
        import torch

        import adcore
        from adcore.data import load_image

        model = adcore.load(target)
        inputs = [load_image(p)[None] for p in paths]

        def predict(image):
            return model.predict(image)

        threads = torch.get_num_threads()
    else:
        from adcore_runtime import Runtime
        from adcore_runtime.images import load_image

        model = Runtime(target, backend=engine.split("-", 1)[1], batch_size=1)
        inputs = [load_image(p) for p in paths]

        def predict(image):
            return model.predict([image])

        threads = None
    loaded = time.perf_counter() - started
    for image in inputs[:warmup]:
        predict(image)
    times = []
    for image in inputs:
        begin = time.perf_counter()
        predict(image)
        times.append(1000.0 * (time.perf_counter() - begin))
    ordered = sorted(times)
    return {"engine": engine, "images": len(times), "batch": 1,
            "ms_per_image_median": round(ordered[len(ordered) // 2], 3),
            "ms_per_image_mean": round(sum(times) / len(times), 3),
            "load_seconds": round(loaded, 3),
            "peak_rss_mb": round(_peak_rss_mb(), 1),
            "torch_imported": "torch" in sys.modules, "adcore_imported": "adcore" in sys.modules,
            "torch_threads": threads, "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "machine": platform.processor() or platform.machine(), "python": platform.python_version()}


# -- the driver ---------------------------------------------------------------------------------------
def _run(command: list[str], env: dict[str, str]) -> str:
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    if result.returncode != 0:
        sys.exit(f"failed ({result.returncode}): {' '.join(command)}\n{result.stderr[-3000:]}")
    return result.stdout


def _quick_data(work: Path) -> Path:
    from adcore.testing import write_tiny_category

    return write_tiny_category(work / "data", "widget", size=96)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "mvtec_bottle" / "bottle",
                        help="MVTec category folder (default: ../shared/data/mvtec_bottle/bottle)")
    parser.add_argument("--input-size", type=int, default=256)
    parser.add_argument("--images", type=int, default=40, help="test images timed per engine")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--detectors", nargs="+", default=list(DETECTORS), choices=DETECTORS)
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "deployment-runtime",
                        help="models and artefacts (reused when present)")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "deployment" / "runtime_results.jsonl")
    parser.add_argument("--quick", action="store_true", help="smoke mode: tiny generated data, 64 px, 4 images")
    parser.add_argument("--child", nargs=3, metavar=("ENGINE", "TARGET", "IMAGES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        engine, target, images = args.child
        print(json.dumps(measure(engine, Path(target), Path(images), args.images, args.warmup)))
        return

    scratch = None
    if args.quick:
        scratch = tempfile.TemporaryDirectory(prefix="adcore-deploy-quick-")
        args.work, args.input_size, args.images, args.warmup = Path(scratch.name), 64, 4, 1
        args.data = _quick_data(args.work)
        args.results = args.work / "runtime_results.jsonl"
    env = {**os.environ, "ADCORE_PROGRESS": "0", "OMP_WAIT_POLICY": "PASSIVE"}
    env.setdefault("OMP_NUM_THREADS", "2")
    runtime_src = REPO / "runtime" / "src"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH", ""), str(runtime_src)) if p)
    args.work.mkdir(parents=True, exist_ok=True)
    cli = [sys.executable, "-m", "adcore.cli"]
    records = []
    for detector in args.detectors:
        model = args.work / f"{detector}-{args.input_size}.safetensors"
        if not model.exists():
            _run([*cli, "train", detector, str(args.data), "-p", f"input_size={args.input_size}", "--out", str(model)], env)
        artefacts = {}
        for format in ("onnx", "openvino"):
            folder = args.work / f"{detector}-{args.input_size}-{format}"
            if not (folder / "adcore-export.json").exists():
                _run([*cli, "export", str(model), "--format", format, "--out", str(folder)], env)
            artefacts[f"runtime-{format}"] = folder
        for engine in args.engines:
            target = model if engine == "torch" else artefacts[engine]
            output = _run([sys.executable, __file__, "--images", str(args.images), "--warmup", str(args.warmup),
                           "--child", engine, str(target), str(args.data / "test")], env)
            record = {"detector": detector, "input_size": args.input_size, "quick": args.quick,
                      **json.loads(output.strip().splitlines()[-1])}
            records.append(record)
            print(json.dumps(record), file=sys.stderr, flush=True)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with open(args.results, "a", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    from adcore.tables import markdown_table

    torch_rows = {r["detector"]: r for r in records if r["engine"] == "torch"}
    for record in records:
        base = torch_rows.get(record["detector"])
        record["latency_vs_torch"] = round(record["ms_per_image_median"] / base["ms_per_image_median"], 3) if base else None
        record["rss_vs_torch"] = round(record["peak_rss_mb"] / base["peak_rss_mb"], 3) if base else None
    print(markdown_table(records, [("detector", "detector", "s"), ("engine", "engine", "s"),
                                   ("ms_per_image_median", "ms/image (batch 1, median)", ".2f"),
                                   ("latency_vs_torch", "× torch", ".2f"), ("peak_rss_mb", "peak RSS MB", ".0f"),
                                   ("rss_vs_torch", "× torch", ".2f"), ("torch_imported", "torch imported", "s")]))
    print(f"results appended to {args.results}", file=sys.stderr)
    if scratch is not None:
        scratch.cleanup()


if __name__ == "__main__":
    main()
