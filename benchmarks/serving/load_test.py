"""Load test of `adcore serve` on loopback (docs/serving.md): correctness under concurrency, then speed.

For one model (--model FILE, or a PaDiM trained here on the category's good training images):

1. references, in-process: every test image scored by the `adcore predict` pipeline
   (``adcore.line.run_predictions``, heatmaps off): the score each served answer must equal; the
   **floor**, ``detector.predict`` on pre-loaded tensors in batches of --max-batch (no decoding, no
   HTTP); and the in-process **per-image** time (batch 1, decoding included, as a client would pay);
2. a real server (``python -m adcore serve``) on a free loopback port;
3. **one client, batch 1**: --requests sequential requests of one image each;
4. **concurrent**: --clients threads × --requests requests, a deterministic mix of good, defective
   and corrupt images (every --corrupt-every-th request is a corrupt one: truncated PNGs and bytes
   that are no image);
5. checks: no 5xx, every corrupt request a 400, every other a 200 whose score equals the reference
   (rel 1e-5), the server's resident memory flat (at most max(32 MiB, 5 %) between 10 % and 100 % of
   the concurrent run); a failed check exits 1.

It prints one JSON object per measurement and a Markdown table, and writes both under --out.
Timing targets (issue 19): one-client p50 within 1.5× the in-process per-image time, concurrent
throughput at least 1.5× the one-client throughput. Timings are void on a busy machine: run it via
benchmarks/serving/run.sh (which holds the shared measurement lock). --quick is a smoke run (a few
requests, a model trained on 8 images at 128 px).

    python benchmarks/serving/load_test.py --data ../shared/data/mvtec_bottle/bottle --out benchmarks/serving/results
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# as the adcore CLI does (and so the server process): OpenMP threads sleep instead of spinning while idle
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def train_model(data: Path, out: Path, *, images: int, input_size: int) -> Path:
    """A PaDiM fitted on the first ``images`` good training images and calibrated on the next few."""
    import adcore
    from adcore.data import list_images, load_image

    files = list_images(data / "train" / "good")
    calibration = max(4, images // 4)
    if len(files) < images + calibration:
        raise SystemExit(f"{data}/train/good has {len(files)} images; need {images + calibration}")
    import torch

    def batch(paths):
        return torch.stack([torch.nn.functional.interpolate(load_image(p)[None], size=(input_size, input_size),
                                                            mode="bilinear", antialias=True)[0] for p in paths])

    detector = adcore.get_model("padim", input_size=input_size).fit(batch(files[:images]))
    detector.calibrate(batch(files[images:images + calibration]))
    return detector.save(out)


def test_images(data: Path) -> list[Path]:
    from adcore.data import list_images

    return sorted(p for folder in sorted((data / "test").iterdir()) if folder.is_dir() for p in list_images(folder))


def references(model: Path, files: list[Path], work: Path, batch: int) -> tuple[dict[str, float], dict]:
    """The `adcore predict` scores of ``files`` (by path) and the in-process timings."""
    import torch

    import adcore
    from adcore.data import load_image
    from adcore.line import PredictOptions, collect_inputs, run_predictions
    from adcore.line.decoding import resize_for_detector

    detector = adcore.load(model)
    run_predictions(detector, model, collect_inputs([str(f) for f in files]),
                    PredictOptions(out=work / "reference", heatmaps=False, batch_size=batch), echo=None,
                    warn=lambda text: None)
    scores = {}
    for line in (work / "reference" / "results.jsonl").read_text().splitlines():
        row = json.loads(line)
        scores[row["path"]] = row["score"]
    tensors = [resize_for_detector(load_image(p), detector.load_size) for p in files]
    batches = [torch.stack(tensors[i:i + batch]) for i in range(0, len(tensors), batch)]
    detector.predict(batches[0])
    start = time.perf_counter()
    for chunk in batches:
        detector.predict(chunk)
    floor_s = (time.perf_counter() - start) / len(files)
    start = time.perf_counter()
    for path in files:  # what one client's image costs in-process: decode, resize, predict alone
        detector.predict(resize_for_detector(load_image(path), detector.load_size)[None])
    single_s = (time.perf_counter() - start) / len(files)
    return scores, {"kind": "in-process", "images": len(files), "floor_ms_per_image": floor_s * 1000,
                    "floor_images_per_s": 1 / floor_s, "batch": batch, "per_image_ms": single_s * 1000}


def corrupt_payloads(files: list[Path]) -> list[bytes]:
    rng = random.Random(0)
    payloads = [f.read_bytes()[: max(16, f.stat().st_size // 3)] for f in files[:4]]  # truncated PNGs
    payloads += [bytes(rng.getrandbits(8) for _ in range(2048)), b"", b"GIF89a not really"]
    return payloads


class Server:
    def __init__(self, model: Path, work: Path, max_batch: int, wait_ms: float, name: str = "m") -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = open(work / "server.log", "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "adcore", "serve", f"{name}={model}", "--port", str(self.port), "--max-batch",
             str(max_batch), "--batch-wait-ms", str(wait_ms)], stdout=self.log, stderr=subprocess.STDOUT,
            env={**os.environ, "ADCORE_PROGRESS": "0"})
        import httpx

        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"the server exited (code {self.process.returncode}); see {work / 'server.log'}")
            try:
                if httpx.get(f"{self.base}/v1/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise SystemExit("the server was not ready within 300 s")

    def rss(self) -> float | None:
        return _rss_mib(self.process.pid)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(60)
        self.log.close()


def run_clients(server: Server, plan: list[list[tuple[str, bytes, float | None]]]) -> dict:
    """Each inner list is one client's requests: (label, bytes, expected score or None for corrupt)."""
    import httpx

    total = sum(len(requests) for requests in plan)
    outcomes: list[tuple[float, int, str, float | None, float | None]] = []
    lock = threading.Lock()
    rss_samples: list[tuple[int, float | None]] = []

    def client(requests) -> None:
        with httpx.Client(base_url=server.base, timeout=120) as http:
            for label, payload, expected in requests:
                started = time.perf_counter()
                response = http.post("/v1/models/m/predict", files=[("images", (label, payload, "image/png"))])
                elapsed = time.perf_counter() - started
                score = response.json()["results"][0]["score"] if response.status_code == 200 else None
                with lock:
                    outcomes.append((elapsed, response.status_code, label, expected, score))

    done = threading.Event()

    def sampler() -> None:
        while not done.is_set():
            with lock:
                count = len(outcomes)
            rss_samples.append((count, server.rss()))
            done.wait(0.25)

    watcher = threading.Thread(target=sampler, daemon=True)
    watcher.start()
    threads = [threading.Thread(target=client, args=(requests,)) for requests in plan]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    done.set()
    watcher.join()
    rss_samples.append((total, server.rss()))
    latencies = [o[0] for o in outcomes]
    errors = {"5xx": sum(1 for o in outcomes if o[1] >= 500),
              "corrupt_not_400": sum(1 for o in outcomes if o[3] is None and o[1] != 400),
              "good_not_200": sum(1 for o in outcomes if o[3] is not None and o[1] != 200),
              "score_mismatch": sum(1 for o in outcomes if o[3] is not None and o[4] is not None
                                    and abs(o[4] - o[3]) > 1e-5 * max(abs(o[3]), 1e-6))}

    def rss_at(fraction: float) -> float | None:
        return next((m for c, m in rss_samples if c >= fraction * total and m is not None), None)

    return {"clients": len(plan), "requests": total, "seconds": seconds, "requests_per_s": total / seconds,
            "p50_ms": _percentile(latencies, 50) * 1000, "p99_ms": _percentile(latencies, 99) * 1000,
            "errors": errors, "rss_mib": {"10%": rss_at(0.1), "50%": rss_at(0.5), "100%": rss_at(1.0)}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "mvtec_bottle" / "bottle",
                        help="an MVTec-layout category folder (bottle, or a PIPED set)")
    parser.add_argument("--model", type=Path, help="a model file (default: PaDiM trained here)")
    parser.add_argument("--train-images", type=int, default=64, help="good images the default PaDiM is fitted on")
    parser.add_argument("--input-size", type=int, default=256)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=250, help="requests per client")
    parser.add_argument("--corrupt-every", type=int, default=10, help="every N-th request is a corrupt image")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--out", type=Path, help="folder for load-test.jsonl and load-test.md")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 clients × 6 requests, a tiny model")
    args = parser.parse_args()
    if args.quick:
        args.clients, args.requests, args.train_images, args.input_size = 2, 6, 8, 128

    with tempfile.TemporaryDirectory(prefix="adcore-load-") as tmp:
        work = Path(tmp)
        began = time.perf_counter()
        model = args.model or train_model(args.data, work / "padim.safetensors", images=args.train_images,
                                          input_size=args.input_size)
        files = test_images(args.data)
        if args.quick:
            files = files[::max(1, len(files) // 8)][:8]
        scores, inprocess = references(model, files, work, args.max_batch)
        rows = [inprocess]
        print(json.dumps(inprocess), flush=True)
        good = [(f.name, f.read_bytes(), scores[str(f)]) for f in files]
        corrupt = [(f"corrupt-{i}.png", payload, None) for i, payload in enumerate(corrupt_payloads(files))]
        server = Server(model, work, args.max_batch, args.batch_wait_ms)
        try:
            single = run_clients(server, [[good[i % len(good)] for i in range(args.requests)]])
            rows.append({"kind": "one client, batch 1", **single})
            print(json.dumps(rows[-1]), flush=True)
            rng = random.Random(1)
            plan = [[corrupt[rng.randrange(len(corrupt))] if (c * args.requests + i) % args.corrupt_every == 0
                     else good[rng.randrange(len(good))] for i in range(args.requests)] for c in range(args.clients)]
            concurrent = run_clients(server, plan)
            rows.append({"kind": f"{args.clients} clients", **concurrent})
            print(json.dumps(rows[-1]), flush=True)
        finally:
            server.stop()
        logged = sum(1 for line in (work / "server.log").read_text().splitlines()
                     if line.startswith('{"method": "POST"'))
        wall = time.perf_counter() - began

    rss = concurrent["rss_mib"]
    growth = None if rss["10%"] is None or rss["100%"] is None else rss["100%"] - rss["10%"]
    checks = {**{f"concurrent {k}": v == 0 for k, v in concurrent["errors"].items()},
              **{f"one client {k}": v == 0 for k, v in single["errors"].items()},
              "memory flat": growth is not None and growth <= max(32.0, 0.05 * rss["10%"]),
              "one access-log line per request": logged == single["requests"] + concurrent["requests"]}
    targets = {"p50 one client <= 1.5x in-process per image": single["p50_ms"] <= 1.5 * inprocess["per_image_ms"],
               "concurrent >= 1.5x one-client throughput": concurrent["requests_per_s"] >= 1.5 * single["requests_per_s"]}
    summary = {"kind": "summary", "data": str(args.data), "quick": args.quick, "wall_s": wall, "checks": checks,
               "targets": targets, "rss_growth_mib": growth, "access_log_lines": logged}
    print(json.dumps(summary), flush=True)
    from adcore.tables import markdown_table

    table = markdown_table(
        [{"run": "in-process floor (batched predict)", "rps": inprocess["floor_images_per_s"],
          "p50": inprocess["floor_ms_per_image"]},
         {"run": "in-process per image (decode + predict, batch 1)", "rps": 1000 / inprocess["per_image_ms"],
          "p50": inprocess["per_image_ms"]},
         {"run": "served, one client, batch 1", "rps": single["requests_per_s"], "p50": single["p50_ms"],
          "p99": single["p99_ms"]},
         {"run": f"served, {args.clients} clients", "rps": concurrent["requests_per_s"], "p50": concurrent["p50_ms"],
          "p99": concurrent["p99_ms"], "rss": growth}],
        [("run", "run", "s"), ("rps", "images or requests / s", ".1f"), ("p50", "p50 ms", ".1f"),
         ("p99", "p99 ms", ".1f"), ("rss", "server RSS growth MiB", ".1f")])
    print(table)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "load-test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [*rows, summary]))
        (args.out / "load-test.md").write_text(table + "\n")
    failed = [name for name, ok in checks.items() if not ok]
    if failed:
        print(f"load test FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
