"""``adcore predict`` as a line runs it: subprocesses killed and stopped mid-run, then resumed."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

IMAGES = 24


@pytest.fixture(scope="module")
def line(tmp_path_factory) -> tuple[Path, Path]:
    """A calibrated example_gaussian model file (input size 32) and a folder of 24 parts in two cameras."""
    from PIL import Image

    import adcore
    from adcore.testing import make_normal_images, paste_defects

    root = tmp_path_factory.mktemp("line")
    good = make_normal_images(IMAGES + 16, (40, 40), seed=3)
    bad, _ = paste_defects(make_normal_images(4, (40, 40), seed=4), seed=5)
    detector = adcore.get_model("example_gaussian", input_size=32).fit(good[:12])
    detector.calibrate(good[12:16])
    model = detector.save(root / "model.safetensors")
    parts = list(good[16:16 + IMAGES - 4]) + list(bad)
    for index, image in enumerate(parts):
        camera = "cam1" if index % 2 == 0 else "cam2"
        path = root / "images" / camera / f"img{index // 2:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)
    return model, root / "images"


def _slow_site(tmp_path: Path) -> Path:
    """A sitecustomize that makes each written row take 0.15 s, so a test can stop a run midway."""
    site = tmp_path / "slow_site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(textwrap.dedent("""
        import time
        import adcore.line.sink as sink
        _result = sink.Sink._result
        def slow(self, work):
            time.sleep(0.15)
            return _result(self, work)
        sink.Sink._result = slow
    """))
    return site


def _env(site: Path | None = None) -> dict[str, str]:
    env = {**os.environ, "ADCORE_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    if site is not None:
        env["PYTHONPATH"] = f"{site}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return env


def _predict(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "adcore.cli", "predict", *args], capture_output=True, text=True,
                          env=env or _env(), timeout=600)


def _start_and_stop(model: Path, images: Path, out: Path, site: Path, sent: int) -> tuple[int, str]:
    process = subprocess.Popen([sys.executable, "-m", "adcore.cli", "predict", str(model), str(images), "--out",
                                str(out), "--batch-size", "2", "--workers", "2"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env(site))
    results = out / "results.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if results.exists() and results.read_text().count("\n") >= 4:
            break
        if process.poll() is not None:
            pytest.fail(f"the run ended before it could be stopped: {process.stderr.read()}")
        time.sleep(0.02)
    process.send_signal(sent)
    _, stderr = process.communicate(timeout=120)
    return process.returncode, stderr


def _rows(out: Path) -> tuple[list[str], list[list[str]]]:
    lines = (out / "results.jsonl").read_text().splitlines()
    rows = list(csv.reader((out / "scores.csv").open(newline="")))
    return lines, rows


def test_a_killed_run_resumed_gives_the_output_of_one_full_run(line, tmp_path: Path):
    model, images = line
    full = _predict(str(model), str(images), "--out", str(tmp_path / "full"))
    assert full.returncode == 0, full.stderr
    returncode, _ = _start_and_stop(model, images, tmp_path / "resumed", _slow_site(tmp_path), signal.SIGKILL)
    assert returncode == -signal.SIGKILL
    partial, _ = _rows(tmp_path / "resumed")
    assert 4 <= len(partial) < IMAGES
    refused = _predict(str(model), str(images), "--out", str(tmp_path / "resumed"))
    assert refused.returncode == 1 and "--resume" in refused.stderr
    resumed = _predict(str(model), str(images), "--out", str(tmp_path / "resumed"), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "already scored" in resumed.stderr
    assert _rows(tmp_path / "resumed") == _rows(tmp_path / "full")
    heatmaps = sorted(p.relative_to(tmp_path / "full").as_posix() for p in (tmp_path / "full").rglob("*.png"))
    assert heatmaps == sorted(p.relative_to(tmp_path / "resumed").as_posix()
                              for p in (tmp_path / "resumed").rglob("*.png"))
    assert "heatmaps/cam1/img000.png.png" in heatmaps and "heatmaps/cam2/img000.png.png" in heatmaps
    other = _predict(str(model), str(images / "cam1"), "--out", str(tmp_path / "resumed"), "--resume")
    assert other.returncode == 1 and "another run's outputs" in other.stderr  # never mixed


def test_sigterm_leaves_valid_outputs_for_every_finished_image(line, tmp_path: Path):
    model, images = line
    out = tmp_path / "stopped"
    returncode, stderr = _start_and_stop(model, images, out, _slow_site(tmp_path), signal.SIGTERM)
    assert returncode == 143, stderr
    assert "SIGTERM" in stderr and "--resume" in stderr
    lines, rows = _rows(out)
    results = [json.loads(line) for line in lines]  # every line complete and valid
    assert 4 <= len(results) < IMAGES
    assert rows[0][0] == "path" and [r[0] for r in rows[1:]] == [r["path"] for r in results]
    for result in results:  # a row is written only once its heatmap is
        name = Path(result["path"]).relative_to(images).as_posix()
        assert (out / "heatmaps" / f"{name}.png").is_file()
    finished = _predict(str(model), str(images), "--out", str(out), "--resume", "--no-heatmaps")
    assert finished.returncode == 1 and "heatmaps" in finished.stderr  # options must match to resume
    finished = _predict(str(model), str(images), "--out", str(out), "--resume")
    assert finished.returncode == 0, finished.stderr
    assert len(_rows(out)[0]) == IMAGES


def test_bad_files_are_skipped_with_their_reason_and_the_exit_code_says_so(line, tmp_path: Path):
    import shutil

    model, images = line
    folder = tmp_path / "images"
    shutil.copytree(images, folder)
    (folder / "cam1" / "zero.png").write_bytes(b"")
    (folder / "cam2" / "cut.png").write_bytes((folder / "cam2" / "img000.png").read_bytes()[:50])
    result = _predict(str(model), str(folder), "--out", str(tmp_path / "out"), "--no-heatmaps")
    assert result.returncode == 3, result.stderr
    assert "zero.png" in result.stderr and "empty (0 bytes)" in result.stderr and "cut.png" in result.stderr
    rows = list(csv.DictReader((tmp_path / "out" / "scores.csv").open(newline="")))
    assert len(rows) == IMAGES + 2 and sum(1 for r in rows if r["error"]) == 2
    assert all(r["score"] for r in rows if not r["error"])
    strict = _predict(str(model), str(folder), "--out", str(tmp_path / "strict"), "--no-heatmaps", "--strict")
    assert strict.returncode == 1 and "--strict" in strict.stderr
    assert _predict(str(model), str(folder), "--out", str(tmp_path / "out" / "results.jsonl")).returncode == 1
