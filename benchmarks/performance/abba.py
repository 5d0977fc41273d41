"""Back-to-back comparison, palindromic (ABBA) order, one fresh process per measurement.

    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE ADCORE_PROGRESS=0 .venv/bin/python benchmarks/performance/abba.py \\
        --out benchmarks/performance/results/RUN [--before b145a6d] [--anomalib-python ANOMALIB_VENV/bin/python] \\
        [--datasets mvtec_bottle:bottle piped/PA_BDP01_TL ...] [--models patchcore spade padim] [--rounds 1] \\
        [--quick] [--dry-run]

Systems: ``adcore`` (this tree), ``before`` (``--before REV``: that git revision's adcore, checked out
into a detached worktree under ``--out``, run with this interpreter), ``anomalib`` (``--anomalib-python``:
anomalib 2.7's reference runner ``../shared/tools/anomalib-reference/run_anomalib.py``, called, not
copied; PatchCore and PaDiM only). For every dataset × detector the systems run in the order
A B C C B A (``--rounds`` times), so a drift of the machine's speed over the run weighs on each
system alike. Each measurement is one process: adcore's through ``adcore benchmark`` (fit on all good
training images, whole test split scored, ms per image at batch 1 and at 8, peak RSS of that process),
anomalib's through the runner. anomalib's PatchCore fit on bottle takes ~32 minutes (greedy coreset
at ~12 picks/s), so on bottle its latency comes from ``anomalib_patchcore_latency.py`` (its model with a
bank of the size its coreset would build, filled by random selection; no accuracy, no fit time) unless
``--anomalib-patchcore-fit`` is given. The latency floor (``latency_floor.py``, the backbone's own
forward) is measured once per round in a fresh process and every latency is also given as a multiple
of it. Writes ``results.jsonl`` (one line per measurement, appended as they finish) and ``summary.md``
(medians per system). ``--quick``: a tiny generated dataset, the detectors' quick parameters, to
check the script (minutes); ``--dry-run`` prints the plan.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["main", "plan"]

HERE = Path(__file__).resolve().parent
TREE = HERE.parents[1]
DATASETS = ["mvtec_bottle:bottle", "piped/PA_BDP01_TL", "piped/PA_BRG01_RL", "piped/PA_FLR01_TL"]
MODELS = ["patchcore", "spade", "padim"]
ANOMALIB_MODELS = {"patchcore", "padim"}
FIGURES = ["fit_s", "ms_bs1", "ms_batched", "peak_rss_mb", "image_auroc", "pixel_auroc", "aupro"]


def plan(systems: list[str], datasets: list[str], models: list[str], rounds: int) -> list[tuple[str, str, str]]:
    """``(system, dataset, model)`` in palindromic order per dataset × model (anomalib only where it has the model)."""
    runs = []
    for dataset in datasets:
        for model in models:
            present = [s for s in systems if s != "anomalib" or model in ANOMALIB_MODELS]
            for _ in range(rounds):
                runs += [(s, dataset, model) for s in present + present[::-1]]
    return runs


def _pythonpath(tree: Path) -> str:
    return os.pathsep.join([str(tree / "core" / "src"), *sorted(str(p) for p in (tree / "plugins").glob("*/src"))])


def _env(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": _pythonpath(tree), "ADCORE_PROGRESS": "0",
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}


def _split(dataset: str, data_root: Path) -> tuple[Path, str]:
    """``ROOT:CATEGORY`` or ``ROOT/CATEGORY`` under ``data_root`` → (root folder, category)."""
    root, category = dataset.split(":") if ":" in dataset else dataset.rsplit("/", 1)
    return data_root / root, category


def _adcore(tree: Path, dataset: str, model: str, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, "-m", "adcore.benchmark", "--model", model, "--dataset", dataset,
               "--data-root", str(args.data_root), "--seed", "0", "--threads", os.environ.get("OMP_NUM_THREADS", "2"),
               "--batch-size", "8", "--calibration-fraction", "0", "--out", str(out), "--fresh", "--no-plots"]
    command += ["--quick"] if args.quick else ["--input-size", "256"]
    subprocess.run(command, env=_env(tree), check=True, cwd=tree, stdout=subprocess.DEVNULL)
    record = json.loads((out / "results.jsonl").read_text().splitlines()[-1])
    if record.get("status") != "ok":
        return {"status": "error", "error": record.get("error")}
    return {"status": "ok", "fit_s": record.get("fit_seconds"), "ms_bs1": record.get("ms_per_image_batch1"),
            "ms_batched": record.get("ms_per_image_batched"), "peak_rss_mb": record.get("peak_rss_mb"),
            "image_auroc": record.get("image_auroc"), "pixel_auroc": record.get("pixel_auroc"), "aupro": record.get("aupro")}


def _anomalib(dataset: str, model: str, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    root, category = _split(dataset, args.data_root)
    out.mkdir(parents=True, exist_ok=True)
    result = out / "anomalib.json"
    cache = ["--cache-dir", str(args.anomalib_cache)] if args.anomalib_cache else []
    threads = os.environ.get("OMP_NUM_THREADS", "2")
    if model == "patchcore" and category == "bottle" and not args.anomalib_patchcore_fit:
        command = [args.anomalib_python, str(HERE / "anomalib_patchcore_latency.py"), "--runner", str(args.runner),
                   "--data", str(root), "--category", category, "--out", str(result), "--threads", threads, *cache]
        subprocess.run(command + (["--quick"] if args.quick else []), check=True, env={**os.environ},
                       stdout=subprocess.DEVNULL)
        found = json.loads(result.read_text())
        return {"status": "ok", "ms_bs1": found.get("batch1_ms_median"), "ms_batched": found.get("batched_ms_per_image_median"),
                "peak_rss_mb": found.get("peak_rss_mb"), "note": "latency only: random-selection bank of its coreset's size"}
    command = [args.anomalib_python, str(args.runner), "--data", str(root), "--category", category, "--model", model,
               "--backbone", "tf_efficientnet_lite0", "--image-size", "64" if args.quick else "256", "--out", str(result),
               "--threads", threads, "--seed", "0", *cache]
    if args.quick:
        command += ["--latency-images", "4", "--latency-batch", "2"]
    subprocess.run(command, check=True, env={**os.environ}, stdout=subprocess.DEVNULL)
    found = json.loads(result.read_text())
    return {"status": found.get("status", "ok"), "fit_s": found.get("fit_wall_s"),
            "ms_bs1": found.get("latency", {}).get("batch1_ms_median"),
            "ms_batched": found.get("latency", {}).get("batched_ms_per_image_median"), "peak_rss_mb": found.get("peak_rss_mb"),
            "image_auroc": found.get("image_auroc"), "pixel_auroc": found.get("pixel_auroc"), "aupro": found.get("pixel_aupro_0.3")}


def _floor(tree: Path, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    command = [sys.executable, str(HERE / "latency_floor.py")] + (["--quick"] if args.quick else [])
    lines = subprocess.run(command, env=_env(tree), check=True, cwd=tree, capture_output=True, text=True).stdout
    return {row["detector"]: row for row in map(json.loads, lines.splitlines())}


def _summary(rows: list[dict[str, Any]], floors: list[dict[str, dict[str, float]]]) -> str:
    sys.path.insert(0, str(TREE / "core" / "src"))
    from adcore.tables import markdown_table

    floor = {name: statistics.median(f[name]["floor_ms_batch1"] for f in floors) for name in floors[0]} if floors else {}
    table = []
    for dataset, model, system in sorted({(r["dataset"], r["model"], r["system"]) for r in rows}):
        runs = [r for r in rows if (r["dataset"], r["model"], r["system"]) == (dataset, model, system) and r["status"] == "ok"]
        line: dict[str, Any] = {"dataset": dataset, "model": model, "system": system, "runs": len(runs)}
        for figure in FIGURES:
            values = [r[figure] for r in runs if r.get(figure) is not None]
            line[figure] = statistics.median(values) if values else None
        base = floor.get(model)  # anomalib runs the same backbone stages as adcore's detector of that name
        line["floor_multiple"] = line["ms_bs1"] / base if line["ms_bs1"] and base else None
        table.append(line)
    columns = [("dataset", "dataset", "s"), ("model", "detector", "s"), ("system", "system", "s"), ("runs", "runs", ".0f"),
               ("fit_s", "fit s", ".1f"), ("ms_bs1", "ms/img bs1", ".0f"), ("ms_batched", "ms/img bs8", ".0f"),
               ("peak_rss_mb", "peak RSS MB", ".0f"), ("image_auroc", "img AUROC", ".3f"), ("pixel_auroc", "px AUROC", ".3f"),
               ("aupro", "AUPRO", ".3f"), ("floor_multiple", "bs1 ÷ floor", ".1f")]
    floors_line = ", ".join(f"{name} {value:.1f} ms" for name, value in floor.items())
    return (f"Medians of each system's runs (ABBA order). Latency floor (backbone forward, batch 1): {floors_line}.\n\n"
            + markdown_table(table, columns) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--before", help="a git revision of this repository to compare against (e.g. b145a6d)")
    parser.add_argument("--anomalib-python", help="the interpreter of a venv with anomalib 2.7")
    parser.add_argument("--runner", type=Path, default=TREE.parent / "shared/tools/anomalib-reference/run_anomalib.py")
    parser.add_argument("--anomalib-cache", type=Path, help="the runner's --cache-dir (converted weights)")
    parser.add_argument("--anomalib-patchcore-fit", action="store_true", help="run anomalib's full PatchCore fit on bottle too")
    parser.add_argument("--data-root", type=Path, default=TREE.parent / "shared/data")
    parser.add_argument("--datasets", nargs="+", default=DATASETS)
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--rounds", type=int, default=1, help="palindromes per pair (1 = two runs per system)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--summary-only", action="store_true", help="rebuild OUT/summary.md from OUT/results.jsonl")
    args = parser.parse_args()
    args.out = args.out.resolve()
    if args.summary_only:
        rows = [json.loads(line) for line in (args.out / "results.jsonl").read_text().splitlines() if line.strip()]
        floors_file = args.out / "floors.json"
        floors = json.loads(floors_file.read_text()) if floors_file.exists() else []
        (args.out / "summary.md").write_text(_summary(rows, floors))
        print((args.out / "summary.md").read_text())
        return
    if args.quick:
        from importlib import import_module

        sys.path.insert(0, str(TREE / "core" / "src"))
        args.data_root = Path(tempfile.mkdtemp(prefix="abba-quick-"))
        import_module("adcore.testing").write_tiny_category(args.data_root / "tiny", "tiny", size=64)
        args.datasets = ["tiny:tiny"]
    systems = ["adcore"] + (["before"] if args.before else []) + (["anomalib"] if args.anomalib_python else [])
    runs = plan(systems, args.datasets, args.models, args.rounds)
    if args.dry_run:
        for number, run in enumerate(runs):
            print(number, *run)
        return
    trees = {"adcore": TREE}
    args.out.mkdir(parents=True, exist_ok=True)
    if args.before:
        before = args.out / f"before-{args.before}"
        if not before.exists():
            subprocess.run(["git", "-C", str(TREE), "worktree", "add", "--detach", str(before), args.before], check=True)
        trees["before"] = before
    floors = [_floor(TREE, args) for _ in range(args.rounds)]
    rows: list[dict[str, Any]] = []
    with (args.out / "results.jsonl").open("a", encoding="utf-8") as log:
        for number, (system, dataset, model) in enumerate(runs):
            where = args.out / "runs" / f"{number:03d}-{system}-{model}-{dataset.replace('/', '_').replace(':', '_')}"
            started = time.time()
            try:
                found = _anomalib(dataset, model, where, args) if system == "anomalib" else _adcore(trees[system], dataset, model, where, args)
            except subprocess.CalledProcessError as exc:
                found = {"status": "error", "error": f"{exc.cmd[:3]}… exited {exc.returncode}"}
            row = {"number": number, "system": system, "dataset": dataset, "model": model,
                   "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started)),
                   "wall_s": round(time.time() - started, 1), "quick": args.quick, **found}
            rows.append(row)
            log.write(json.dumps(row) + "\n")
            log.flush()
            print(json.dumps(row), flush=True)
    (args.out / "floors.json").write_text(json.dumps(floors, indent=2))
    (args.out / "summary.md").write_text(_summary(rows, floors))
    print((args.out / "summary.md").read_text())


if __name__ == "__main__":
    main()
