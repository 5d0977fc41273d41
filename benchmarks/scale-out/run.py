"""Scale-out benchmark (docs/scale-out.md): ``adcore predict`` locally and on Ray, 1 and 2 actors,
Ray started by the command or already running, a model file and an exported artefact.

For PaDiM and PatchCore (trained once with ``adcore train`` on the category's good images), score
the category's test images repeated through symbolic links, each run a fresh subprocess, heatmaps
on (the full outputs):

* ``local``: ``adcore predict`` (this machine's torch threads, decoding threads), ``--images``;
* ``ray-1``: ``--executor ray --actors 1 --cpus-per-actor 1``, ``--one-actor-images`` (its steady
  rate is the per-actor throughput; fewer images keep the script short);
* ``ray-2``: ``--executor ray --actors 2 --cpus-per-actor 1``, ``--images``;

each Ray run twice: ``start: local`` (no ``--address``: the command starts a local Ray and stops it)
and ``start: cluster`` (``--address`` of a head started beforehand with ``ray start --head --num-cpus 2
--include-dashboard false --block``, stopped by its process id afterwards; ``head_start_s`` is how
long that took). Then PaDiM exported to ONNX (``adcore export``): ``local`` and ``ray-2`` (both
starts) on ``--artefact-images``, the actors being adcore-runtime's torch-free ones.

Timing: the run is watched (rows in results.jsonl every 0.1 s): ``startup_s`` is the time to the
first row, ``images_per_s`` the steady rate between the first and the last row, ``overhead_s`` the
wall time the steady rate does not explain (``seconds - images / images_per_s``: start-up plus
scheduling plus the tail) and ``overhead_pct`` its share of the run. ``speedup_2_vs_1`` is ray-2's
steady rate over ray-1's (same start). Each Ray run also writes its timeline
(``ADCORE_RAY_TIMINGS``, written at its exit); ``breakdown`` splits the time before the first row and after the last:
``driver_s`` (process start, imports, listing, opening the model: launch to ``ray.init``),
``ray_init_s`` (starting or joining Ray), ``prepare_s`` (output folder, the model into the object
store, dataset plan), ``pool_start_s`` (dataset start to the first actor's constructor: worker
start, imports), ``actor_model_s`` and ``actor_first_batch_s`` (per actor, mean: opening the
model, the first batch), ``first_result_s`` (dataset start to the first result), ``finish_s``
(outputs closed to the contact sheet drawn), ``shutdown_s`` (to Ray stopped, or left) and
``exit_s`` (interpreter exit); ``driver_cpu_stream_s`` and ``driver_cpu_s`` are the driver's own CPU
seconds while the results streamed in and in all (on two cores they are taken from the actors).

Identical scores: every Ray run of a model file is compared with a one-thread local predict of the
first ``--check-images`` inputs (one thread as each one-CPU actor: the same float reductions);
``identical`` counts the rows equal to the last bit, ``max_abs_diff`` the largest score difference
against the multi-threaded local run. An artefact's Ray runs are compared with its local run
(``max_rel_diff`` too: adcore-runtime's numpy resize is torch's to float32 rounding, not the bit).

    bash benchmarks/scale-out/run.sh             # the full run (on an idle machine, takes the lock)
    bash benchmarks/scale-out/run.sh --quick     # smoke: 40 images, tiny training, small input size

Results: one JSON object per run on stdout and in OUT/results.jsonl, a Markdown table in OUT/summary.md.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks" / "predict"))
from throughput import repeated_folder  # noqa: E402 - the predict benchmark's repeated set, the same layout

MODELS = {"padim": [], "patchcore": ["-p", "coreset_ratio=0.01"]}
ARTEFACT_MODEL = "padim"
ACTORS = {"ray-1": ["--actors", "1", "--cpus-per-actor", "1"], "ray-2": ["--actors", "2", "--cpus-per-actor", "1"]}


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "ADCORE_PROGRESS": "0", "OMP_WAIT_POLICY": "PASSIVE", "RAY_USAGE_STATS_ENABLED": "0",
            **extra}


def _adcore(*args: str) -> list[str]:
    return [sys.executable, "-m", "adcore.cli", *args]


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
    subprocess.run(_adcore("train", name, str(source), "--out", str(model), *extra), check=True, env=_env(),
                   stdout=subprocess.DEVNULL)
    return model


def export(model: Path, work: Path) -> Path:
    folder = work / f"{model.stem}-onnx"
    if not (folder / "adcore-export.json").is_file():
        subprocess.run(_adcore("export", str(model), "--format", "onnx", "--out", str(folder)), check=True,
                       env=_env(), stdout=subprocess.DEVNULL)
    return folder


def watch(command: list[str], out: Path, expected: int, env: dict[str, str]) -> dict:
    """Run ``adcore predict`` and time it by its rows (see the module docstring)."""
    if out.exists():
        shutil.rmtree(out)
    timings = out.with_name(out.name + ".timings.json")
    timings.unlink(missing_ok=True)
    launched = time.time()
    started = time.perf_counter()
    process = subprocess.Popen([*command, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, env={**env, "ADCORE_RAY_TIMINGS": str(timings)})
    results = out / "results.jsonl"
    first = last = None
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
    ended = time.time()
    rows = results.read_text().count("\n") if results.exists() else 0
    if process.returncode not in (0, 3) or rows != expected:
        raise SystemExit(f"{' '.join(command)} failed (exit {process.returncode}, {rows}/{expected} rows): {stderr}")
    first = total if first is None else first
    last = total if last is None else last
    rate = (expected - 1) / max(last - first, 1e-9) if expected > 1 else None
    overhead = total - expected / rate if rate else None
    record = {"seconds": round(total, 2), "startup_s": round(first, 2), "images_per_s": rate and round(rate, 3),
              "overhead_s": overhead and round(overhead, 2),
              "overhead_pct": overhead and round(100 * overhead / total, 1)}
    if timings.is_file():
        record["breakdown"] = breakdown(json.loads(timings.read_text()), launched, ended)
    return record


def breakdown(timeline: dict, launched: float, ended: float) -> dict[str, float | None]:
    """The run's timeline (``ADCORE_RAY_TIMINGS``) as the durations the module docstring names."""
    marks, actors = timeline["marks"], timeline["actors"]

    def between(start: str | float, end: str | float) -> float | None:
        a = marks.get(start) if isinstance(start, str) else start
        b = marks.get(end) if isinstance(end, str) else end
        return None if a is None or b is None else round(b - a, 2)

    def mean(values: list[float]) -> float | None:
        return round(sum(values) / len(values), 2) if values else None

    first_actor = min((a["init_start"] for a in actors), default=None)
    return {"driver_s": between(launched, "connect_start"), "ray_init_s": between("connect_start", "connected"),
            "prepare_s": between("connected", "stream_start"),
            "pool_start_s": None if first_actor is None else between("stream_start", first_actor),
            "actor_model_s": mean([a["model_ready"] - a["init_start"] for a in actors]),
            "actor_first_batch_s": mean([a["first_done"] - a["model_ready"] for a in actors]),
            "first_result_s": between("stream_start", "first_result"),
            # the command line stops (or leaves) Ray after the contact sheet is drawn
            "finish_s": between("outputs_closed", "finished"), "shutdown_s": between("finished", "disconnected"),
            "exit_s": between(max(marks.values()), ended), "actors": len(actors),
            # the driver's CPU seconds while the results streamed in (Ray Data's executor, the writing)
            # and in all: on a small machine they are taken from the actors
            "driver_cpu_stream_s": _cpu_between(timeline, "first_result", "last_result"),
            "driver_cpu_s": timeline.get("driver_cpu", {}).get("exit")}


def _cpu_between(timeline: dict, start: str, end: str) -> float | None:
    cpu = timeline.get("driver_cpu", {})
    return round(cpu[end] - cpu[start], 2) if start in cpu and end in cpu else None


def scores(out: Path, base: Path) -> dict[str, dict]:
    """Input name (relative to the scored folder) → its row."""
    found = {}
    for line in (out / "results.jsonl").read_text().splitlines():
        row = json.loads(line)
        found[Path(row["path"]).relative_to(base).as_posix()] = row
    return found


def compare(ours: dict[str, dict], reference: dict[str, dict]) -> dict:
    shared = [name for name in reference if name in ours]
    pairs = [(ours[n]["score"], reference[n]["score"]) for n in shared
             if ours[n]["score"] is not None and reference[n]["score"] is not None]
    return {"compared": len(shared), "identical": sum(ours[n]["score"] == reference[n]["score"] for n in shared),
            "same_verdicts": sum(ours[n]["anomalous"] == reference[n]["anomalous"] for n in shared),
            "max_abs_diff": max((abs(a - b) for a, b in pairs), default=0.0),
            "max_rel_diff": max((abs(a - b) / max(abs(b), 1e-12) for a, b in pairs), default=0.0)}


class Head:
    """``ray start --head ... --block`` as a child process: started and stopped by its process id
    (never ``ray stop``, which stops every Ray on the machine, other people's included)."""

    def __init__(self, cpus: int) -> None:
        with socket.socket() as probe:  # a free port: another Ray on the machine keeps its own
            probe.bind(("", 0))
            port = probe.getsockname()[1]
        ray = Path(sys.executable).with_name("ray")
        # Ray's token authentication with a token of this head's own: ~/.ray/auth_token is shared by
        # everyone on the machine, and another Ray may have written it since
        self.env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
        started = time.perf_counter()
        self.process = subprocess.Popen([str(ray), "start", "--head", "--num-cpus", str(cpus), "--include-dashboard",
                                         "false", "--disable-usage-stats", "--port", str(port), "--block"],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env=_env(**self.env))
        seen, node_ip = [], None
        for line in self.process.stdout:
            seen.append(line)
            if "Local node IP:" in line:
                node_ip = line.split("Local node IP:")[1].strip()
            if "Ray runtime started" in line:
                break
        else:
            raise SystemExit(f"ray start --head failed (exit {self.process.wait()}): {''.join(seen[-20:])}")
        self.start_s = round(time.perf_counter() - started, 2)
        self.address = f"{node_ip or '127.0.0.1'}:{port}"
        # what it prints from now on is drained, so a full pipe never blocks it
        threading.Thread(target=self.process.stdout.read, daemon=True).start()

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)  # --block: it stops the processes it started
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        # `ray start` recorded this head as the machine's current cluster, and a plain ray.init()
        # (anyone's) would try to join it; `ray stop` clears that, so do we, if it still names ours
        current = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray" / "ray_current_cluster"
        if current.is_file() and current.read_text().strip() == self.address:
            current.unlink()


def ray_runs(name: str, model: Path, folders: dict[int, Path], sizes: dict[str, int], start: str,
             head: Head | None, references: dict[str, dict], records: list[dict], artefact: bool,
             batch: int) -> None:
    """ray-1 and ray-2 of one model (file or artefact) for one start, compared with ``references``."""
    for kind, extra in ACTORS.items():
        if kind not in sizes:
            continue
        images = sizes[kind]
        out = folders[images].parent / f"{name}-{kind}-{start}"
        command = _adcore("predict", str(model), str(folders[images]), "--batch-size", str(batch),
                          "--executor", "ray", *extra, *(["--address", head.address] if head else []))
        record = {"model": name, "artefact": artefact, "run": kind, "start": start, "images": images,
                  **watch(command, out, images, _env(**(head.env if head else {})))}
        found = scores(out, folders[images])
        for label, reference in references.items():
            record[label] = compare(found, reference)
        records.append(record)
        print(json.dumps(record), flush=True)
    one, two = (next((r for r in records if r["model"] == name and r["artefact"] == artefact and r["start"] == start
                      and r["run"] == k), None) for k in ("ray-1", "ray-2"))
    if one and two:
        two["speedup_2_vs_1"] = round(two["images_per_s"] / one["images_per_s"], 2)


def local_run(name: str, model: Path, folder: Path, images: int, records: list[dict], artefact: bool, batch: int,
              **env: str) -> dict[str, dict]:
    out = folder.parent / f"{name}-local{'-1thread' if env else ''}"
    command = _adcore("predict", str(model), str(folder), "--batch-size", str(batch))
    record = watch(command, out, images, _env(**env))
    if not env:
        records.append({"model": name, "artefact": artefact, "run": "local", "start": None, "images": images, **record})
        print(json.dumps(records[-1]), flush=True)
    return scores(out, folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "mvtec_bottle" / "bottle",
                        help="an MVTec-layout category (default ../shared/data/mvtec_bottle/bottle)")
    parser.add_argument("--images", type=int, default=2000, help="inputs of the local and the 2-actor runs")
    parser.add_argument("--one-actor-images", type=int, default=500, help="inputs of the 1-actor runs")
    parser.add_argument("--artefact-images", type=int, default=800, help="inputs of the ONNX artefact's runs")
    parser.add_argument("--check-images", type=int, default=200, help="inputs of the one-thread identity check")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "scale-out-bench")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "scale-out" / "results")
    parser.add_argument("--quick", action="store_true", help="smoke mode: few images, 12 training images at 64 px")
    args = parser.parse_args()
    if args.quick:
        args.images, args.one_actor_images, args.artefact_images, args.check_images = 40, 24, 24, 16
        args.work, args.out = args.work.with_name(args.work.name + "-quick"), args.out / "quick"
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    from adcore.data import list_images

    test = sorted(p for folder in sorted((args.data / "test").iterdir()) if folder.is_dir() for p in list_images(folder))
    sizes = {"ray-1": args.one_actor_images, "ray-2": args.images}
    artefact_sizes = {"ray-2": args.artefact_images}
    folders = {n: repeated_folder(test, n, args.work / f"repeated-{n}")
               for n in {args.images, args.one_actor_images, args.artefact_images, args.check_images}}
    records: list[dict] = []
    models = {name: train(name, args.data, args.work, args.quick) for name in args.models}
    references: dict[str, dict[str, dict]] = {}
    for name, model in models.items():  # Ray started by each command
        one_thread = local_run(name, model, folders[args.check_images], args.check_images, records, False,
                               args.batch_size, OMP_NUM_THREADS="1")
        local = local_run(name, model, folders[args.images], args.images, records, False, args.batch_size)
        references[name] = {"vs_one_thread_local": one_thread, "vs_local": local}
        ray_runs(name, model, folders, sizes, "local", None, references[name], records, False, args.batch_size)
    artefact = None
    if ARTEFACT_MODEL in models:
        artefact = export(models[ARTEFACT_MODEL], args.work)
        name = f"{ARTEFACT_MODEL}-onnx"
        references[name] = {"vs_local": local_run(name, artefact, folders[args.artefact_images], args.artefact_images,
                                                  records, True, args.batch_size)}
        ray_runs(name, artefact, folders, artefact_sizes, "local", None, references[name], records, True,
                 args.batch_size)
    head = Head(cpus=2)  # then the same runs joining a running cluster
    try:
        for name, model in models.items():
            ray_runs(name, model, folders, sizes, "cluster", head, references[name], records, False,
                     args.batch_size)
        if artefact is not None:
            name = f"{ARTEFACT_MODEL}-onnx"
            ray_runs(name, artefact, folders, artefact_sizes, "cluster", head, references[name], records, True,
                     args.batch_size)
    finally:
        head.stop()
    for record in records:
        if record["start"] == "cluster":
            record["head_start_s"] = head.start_s
    (args.out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (args.out / "summary.md").write_text(summary(records) + "\n")
    print(summary(records))


def summary(records: list[dict]) -> str:
    from adcore.tables import markdown_table

    def cell(record: dict, key: str):
        if key == "identical":
            check = record.get("vs_one_thread_local") or record.get("vs_local")
            return None if check is None or record["run"] == "local" else f"{check['identical']}/{check['compared']}"
        if key in ("max_diff", "max_rel"):
            return (record.get("vs_local") or {}).get("max_abs_diff" if key == "max_diff" else "max_rel_diff")
        if key in ("ray_init_s", "pool_start_s", "actor_model_s", "shutdown_s"):
            return (record.get("breakdown") or {}).get(key)
        return record.get(key)

    return markdown_table(records, [
        ("model", "model", "s"), ("run", "run", "s"), ("start", "Ray", "s"), ("images", "images", ".0f"),
        ("seconds", "wall s", ".1f"), ("startup_s", "to first row s", ".1f"),
        ("images_per_s", "images/s (steady)", ".2f"), ("overhead_s", "overhead s", ".1f"),
        ("overhead_pct", "overhead %", ".1f"), ("speedup_2_vs_1", "2 vs 1 actor", ".2f"),
        ("ray_init_s", "ray.init s", ".1f"), ("pool_start_s", "pool start s", ".1f"),
        ("actor_model_s", "actor model s", ".1f"), ("shutdown_s", "shutdown s", ".1f"),
        ("identical", "identical (1-thread local; ONNX: local)", "s"),
        ("max_diff", "max abs score diff vs local", ".2g"), ("max_rel", "max rel diff", ".2g")], cell)



if __name__ == "__main__":
    main()
