"""Packaging: the built wheel installs into a fresh virtual environment WITHOUT torch and predicts.

Issue 16: one test installs the built ``adcore-runtime`` wheel into a fresh venv and predicts with
it. numpy, Pillow and ONNX Runtime come from the package registry; the test is skipped, saying
why, when the registry cannot be reached. Every step has its own time limit (about a minute in all
with a warm pip cache). It prints the environment's installed size (docs/deployment.md quotes it).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

RUNTIME = Path(__file__).resolve().parents[1]
_OFFLINE_SIGNS = ("NewConnectionError", "Max retries exceeded", "Temporary failure in name resolution",
                  "No matching distribution found", "Could not find a version that satisfies", "Network is unreachable")


def _run(command: list, *, timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=timeout, env=env)


def _du_mb(path: Path) -> float:
    """Installed size as ``du -sk`` counts it (disk blocks), in MB; summed file sizes where du is missing."""
    try:
        return int(_run(["du", "-sk", path], timeout=60).stdout.split()[0]) * 1024 / 1e6
    except (OSError, ValueError, IndexError):
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) / 1e6


@pytest.mark.packaging
def test_wheel_installs_without_torch_and_predicts(tmp_path: Path, make_artefact, capsys):
    from PIL import Image

    artefact = make_artefact(tmp_path / "export")
    image = np.full((40, 60, 3), 128, dtype=np.uint8)
    image[10:20, 20:30] = 255
    Image.fromarray(image).save(tmp_path / "part.png")

    # 1. the wheel, built from runtime/ (no isolation when hatchling is here: no download for the build)
    dist = tmp_path / "dist"
    isolation = [] if importlib.util.find_spec("hatchling") is None else ["--no-isolation"]
    built = _run([sys.executable, "-m", "build", "--wheel", *isolation, "--outdir", dist, RUNTIME], timeout=180)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    wheels = sorted(dist.glob("adcore_runtime-*.whl"))
    assert len(wheels) == 1, wheels

    # 2. a fresh venv, and an environment that does not leak this checkout's sources into it
    venv = tmp_path / "venv"
    created = _run([sys.executable, "-m", "venv", venv], timeout=120)
    assert created.returncode == 0, created.stderr[-2000:]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    python = venv / "bin" / "python"
    installed = _run([python, "-m", "pip", "install", "--disable-pip-version-check", "-q", wheels[0]],
                     timeout=420, env=env)
    if installed.returncode != 0 and any(sign in installed.stderr for sign in _OFFLINE_SIGNS):
        pytest.skip(f"the package registry is unreachable, so numpy/pillow/onnxruntime cannot be installed into the "
                    f"fresh venv: {installed.stderr.strip().splitlines()[-1]}")
    assert installed.returncode == 0, installed.stdout[-2000:] + installed.stderr[-3000:]

    # 3. no torch, no timm came along
    listed = _run([python, "-m", "pip", "list", "--format=freeze", "--disable-pip-version-check"], timeout=60, env=env)
    names = {line.split("==")[0].lower() for line in listed.stdout.splitlines()}
    assert "adcore-runtime" in names and "onnxruntime" in names
    assert not names & {"torch", "timm", "torchvision", "adcore"}, sorted(names)

    # 4. the console script predicts, writing Contract B's files
    out = tmp_path / "out"
    predicted = _run([venv / "bin" / "adcore-runtime", "predict", artefact, tmp_path / "part.png", "--out", out],
                     timeout=120, env=env)
    assert predicted.returncode == 0, predicted.stdout[-2000:] + predicted.stderr[-2000:]
    lines = (out / "scores.csv").read_text().splitlines()
    assert lines[0] == "path,score,normalized_score,threshold,anomalous,regions,error" and len(lines) == 2
    assert lines[1].split(",")[4] == "true"
    assert (out / "heatmaps" / "part.png.png").is_file()
    torch_free = _run([python, "-c", "import sys, adcore_runtime; print('torch' in sys.modules)"], timeout=60, env=env)
    assert torch_free.stdout.strip() == "False"

    total = _du_mb(venv)
    site = next((venv / "lib").glob("python*/site-packages"))
    largest = sorted(((_du_mb(entry), entry.name) for entry in site.iterdir() if entry.is_dir()), reverse=True)[:4]
    with capsys.disabled():
        print(f"\n[adcore-runtime] fresh venv installed size (du): {total:.0f} MB in all, {_du_mb(site):.0f} MB of "
              f"site-packages; largest: {', '.join(f'{name} {size:.0f} MB' for size, name in largest)}; "
              f"packages: {', '.join(sorted(names))}")
    assert total < 300, f"the runtime environment is {total:.0f} MB, above issue 16's 300 MB target"
