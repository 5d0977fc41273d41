"""Turn the GPU script's benchmark folders into one Markdown page: CUDA against CPU per detector.

    python benchmarks/gpu/summarize.py RESULTS_DIR   # reads RESULTS_DIR/{cuda,cpu,papers}/results.jsonl

Writes RESULTS_DIR/summary.md (and prints it): per detector on the sweep's data set, fit seconds
and batched ms per image on each device, the speed-ups, image AUROC on each; then the
paper-budget runs. Only the latest record of each run counts (``ResultStore.latest``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from adcore.benchmark.store import ResultStore
from adcore.tables import markdown_table


def _latest(folder: Path) -> list[dict[str, Any]]:
    path = folder / "results.jsonl"
    return list(ResultStore(path).latest().values()) if path.is_file() else []


def _ratio(slow: Any, fast: Any) -> float | None:
    return slow / fast if isinstance(slow, (int, float)) and isinstance(fast, (int, float)) and fast > 0 else None


def summarize(results: Path) -> str:
    by_device: dict[str, dict[str, dict[str, Any]]] = {"cuda": {}, "cpu": {}}
    for device in by_device:
        for record in _latest(results / device):
            by_device[device][record["detector"]] = record
    rows = []
    for name in sorted(set(by_device["cuda"]) | set(by_device["cpu"])):
        gpu, cpu = by_device["cuda"].get(name, {}), by_device["cpu"].get(name, {})
        rows.append({"detector": name, "gpu": gpu.get("device_name") or gpu.get("status"),
                     "fit_cpu": cpu.get("fit_seconds"), "fit_gpu": gpu.get("fit_seconds"),
                     "fit_x": _ratio(cpu.get("fit_seconds"), gpu.get("fit_seconds")),
                     "ms_cpu": cpu.get("ms_per_image_batched"), "ms_gpu": gpu.get("ms_per_image_batched"),
                     "ms_x": _ratio(cpu.get("ms_per_image_batched"), gpu.get("ms_per_image_batched")),
                     "auroc_cpu": cpu.get("image_auroc"), "auroc_gpu": gpu.get("image_auroc"),
                     "status": f"{cpu.get('status', 'missing')} / {gpu.get('status', 'missing')}"})
    columns = [("detector", "detector", "s"), ("gpu", "GPU", "s"), ("fit_cpu", "fit s CPU", ".1f"),
               ("fit_gpu", "fit s GPU", ".1f"), ("fit_x", "fit ×", ".1f"), ("ms_cpu", "ms/img CPU", ".1f"),
               ("ms_gpu", "ms/img GPU", ".2f"), ("ms_x", "latency ×", ".1f"), ("auroc_cpu", "img AUROC CPU", ".3f"),
               ("auroc_gpu", "img AUROC GPU", ".3f"), ("status", "status CPU / GPU", "s")]
    parts = ["# GPU against CPU (benchmarks/gpu/run.sh)", "", markdown_table(rows, columns)]
    papers = _latest(results / "papers")
    if papers:
        paper_rows = [{**r, "params": ", ".join(f"{k}={v}" for k, v in sorted((r.get("params") or {}).items())
                                                if k not in ("device", "input_size"))} for r in papers]
        parts += ["", "## At the papers' budgets (CUDA)", "", markdown_table(paper_rows, [
            ("detector", "detector", "s"), ("status", "status", "s"), ("image_auroc", "img AUROC", ".3f"),
            ("pixel_auroc", "px AUROC", ".3f"), ("fit_seconds", "fit s", ".1f"),
            ("ms_per_image_batched", "ms/img", ".2f"), ("device_name", "device", "s"), ("params", "budget", "s")])]
    return "\n".join(parts) + "\n"


def main(argv: list[str]) -> int:
    results = Path(argv[1] if len(argv) > 1 else "benchmarks/gpu/results")
    text = summarize(results)
    from adcore.files import atomic_write_text

    atomic_write_text(results / "summary.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
