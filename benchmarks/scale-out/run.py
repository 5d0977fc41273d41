"""Scale-out benchmark (docs/scale-out.md): ``adcore predict`` locally and on Ray, 1 and 2 actors.

For PaDiM and PatchCore (trained once with ``adcore train`` on the category's good images), score N
images (the category's test images repeated through symbolic links) with

* ``local``: ``adcore predict`` (this machine's torch threads, decoding threads);
* ``ray-1``: ``--executor ray --actors 1 --cpus-per-actor 1`` (a local Ray started by the command);
* ``ray-2``: ``--executor ray --actors 2 --cpus-per-actor 1``;

each a fresh subprocess, heatmaps on (the full outputs). The run is watched (rows in results.jsonl
every 0.1 s): ``startup_s`` is the time to the first row (imports, model load, and for Ray its
start, the pool's start and the first batch's scheduling), ``images_per_s`` the steady rate
between the first and the last row, ``overhead_s`` the wall time the steady rate does not explain
(``seconds - images / images_per_s``: start-up plus scheduling plus the tail) and ``overhead_pct``
its share of the run. ``speedup_2_vs_1`` is ray-2's steady rate over ray-1's.

Identical scores: every Ray run's rows are compared with a one-thread local predict of the first
``--check-images`` inputs (one thread as each one-CPU actor: the same float reductions; the same
first images in the same batches); ``identical`` counts the rows equal to the last bit, and
``max_abs_diff`` the largest score difference against the multi-threaded local run too.

    python benchmarks/scale-out/run.py                 # 2,000 images, both models (on an idle machine)
    python benchmarks/scale-out/run.py --quick         # smoke: 40 images, tiny training, small input size

Results: one JSON object per run on stdout and in OUT/results.jsonl, a Markdown table in OUT/summary.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks" / "predict"))
from throughput import repeated_folder  # noqa: E402 - the predict benchmark's repeated set, the same layout

MODELS = {"padim": [], "patchcore": ["-p", "coreset_ratio=0.01"]}


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "ADCORE_PROGRESS": "0", "OMP_WAIT_POLICY": "PASSIVE", **extra}


def train(name: str, data: Path, work: Path, quick: bool) -> Path:
    model = work / f"{name}.safetensors"
    if model.exists():
        return model
    source = data
    extra = list(MODELS[name])
    if quick:  # a few good images at a small size: the smoke test checks the plumbing, not the model
        source = work / "train-quick"
        source.mkdir(parents=True, exist_ok=True)
        for image in sorted((data / "train" / "good").glob("*.png"))[:12]:
            link = source / image.name
            if not link.exists():
                link.symlink_to(image.resolve())
        extra += ["--input-size", "64"]
    subprocess.run([sys.executable, "-m", "adcore.cli", "train", name, str(source), "--out", str(model), *extra],
                   check=True, env=_env(), stdout=subprocess.DEVNULL)
    return model


def watch(command: list[str], out: Path, expected: int, env: dict[str, str]) -> dict:
    """Run ``adcore predict`` and time it by its rows (see the module docstring)."""
    if out.exists():
        shutil.rmtree(out)
    started = time.perf_counter()
    process = subprocess.Popen([*command, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, env=env)
    results = out / "results.jsonl"
    first = last = None
    rows = 0
    while process.poll() is None:
        rows = results.read_text().count("\n") if results.exists() else 0
        now = time.perf_counter() - started
        if rows and first is None:
            first = now
        if rows == expected and last is None:
            last = now
        time.sleep(0.1)
    stderr = process.stderr.read()
    total = time.perf_counter() - started
    rows = results.read_text().count("\n") if results.exists() else 0
    if process.returncode not in (0, 3) or rows != expected:
        raise SystemExit(f"{' '.join(command)} failed (exit {process.returncode}, {rows}/{expected} rows): {stderr}")
    first = total if first is None else first
    last = total if last is None else last
    rate = (expected - 1) / max(last - first, 1e-9) if expected > 1 else None
    overhead = total - expected / rate if rate else None
    return {"seconds": round(total, 2), "startup_s": round(first, 2), "images_per_s": rate and round(rate, 3),
            "overhead_s": overhead and round(overhead, 2), "overhead_pct": overhead and round(100 * overhead / total, 1)}


def scores(out: Path, base: Path) -> dict[str, float | None]:
    """Input name (relative to the scored folder) → score."""
    found = {}
    for line in (out / "results.jsonl").read_text().splitlines():
        row = json.loads(line)
        found[Path(row["path"]).relative_to(base).as_posix()] = row["score"]
    return found


def compare(ours: dict[str, float | None], reference: dict[str, float | None]) -> dict:
    shared = [name for name in reference if name in ours]
    diffs = [abs(ours[n] - reference[n]) for n in shared if ours[n] is not None and reference[n] is not None]
    return {"compared": len(shared), "identical": sum(ours[n] == reference[n] for n in shared),
            "max_abs_diff": max(diffs, default=0.0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "mvtec_bottle" / "bottle",
                        help="an MVTec-layout category (default ../shared/data/mvtec_bottle/bottle)")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--check-images", type=int, default=200, help="inputs of the one-thread identity check")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "scale-out-bench")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "scale-out" / "results")
    parser.add_argument("--quick", action="store_true", help="smoke mode: 40 images, 12 training images at 64 px")
    args = parser.parse_args()
    if args.quick:
        args.images, args.check_images = 40, 16
        args.work, args.out = args.work.with_name(args.work.name + "-quick"), args.out / "quick"
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    from adcore.data import list_images
    from adcore.tables import markdown_table

    test = sorted(p for folder in sorted((args.data / "test").iterdir()) if folder.is_dir() for p in list_images(folder))
    big = repeated_folder(test, args.images, args.work / f"repeated-{args.images}")
    prefix = repeated_folder(test, args.check_images, args.work / f"repeated-{args.check_images}")
    records = []
    for name in args.models:
        model = train(name, args.data, args.work, args.quick)
        base = [sys.executable, "-m", "adcore.cli", "predict", str(model), "--batch-size", str(args.batch_size)]
        check = args.work / f"{name}-check"
        watch([*base, str(prefix)], check, args.check_images, _env(OMP_NUM_THREADS="1"))
        one_thread = scores(check, prefix)
        runs = {"local": [], "ray-1": ["--executor", "ray", "--actors", "1", "--cpus-per-actor", "1"],
                "ray-2": ["--executor", "ray", "--actors", "2", "--cpus-per-actor", "1"]}
        local_scores = None
        for kind, extra in runs.items():
            out = args.work / f"{name}-{kind}"
            record = {"model": name, "run": kind, "images": args.images,
                      **watch([*base, str(big), *extra], out, args.images, _env())}
            found = scores(out, big)
            if kind == "local":
                local_scores = found
            else:
                record["vs_one_thread_local"] = compare(found, one_thread)
                record["vs_local"] = compare(found, local_scores)
            records.append(record)
            print(json.dumps(record), flush=True)
        one, two = (next(r for r in records if r["model"] == name and r["run"] == k) for k in ("ray-1", "ray-2"))
        two["speedup_2_vs_1"] = round(two["images_per_s"] / one["images_per_s"], 2)
    (args.out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    def cell(record: dict, key: str):
        if key == "identical":
            check = record.get("vs_one_thread_local")
            return None if check is None else f"{check['identical']}/{check['compared']}"
        if key == "max_diff":
            return (record.get("vs_local") or {}).get("max_abs_diff")
        return record.get(key)

    table = markdown_table(records, [("model", "model", "s"), ("run", "run", "s"), ("images", "images", ".0f"),
                                     ("seconds", "wall s", ".1f"), ("startup_s", "to first row s", ".1f"),
                                     ("images_per_s", "images/s (steady)", ".2f"), ("overhead_s", "overhead s", ".1f"),
                                     ("overhead_pct", "overhead %", ".1f"), ("speedup_2_vs_1", "2 vs 1 actor", ".2f"),
                                     ("identical", "identical to 1-thread local", "s"),
                                     ("max_diff", "max abs score diff vs local", ".2g")], cell)
    (args.out / "summary.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
