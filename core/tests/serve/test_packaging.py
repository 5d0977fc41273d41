"""The review page is package data: the built adcore wheel carries it, and the app serves it from there."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(importlib.util.find_spec("hatchling") is None or importlib.util.find_spec("build") is None,
                    reason="building the wheel needs the build and hatchling packages (scripts/setup.sh installs them)")
def test_the_wheel_holds_the_review_page(tmp_path):
    static = CORE / "src" / "adcore" / "serve" / "static"
    page_files = sorted(path.name for path in static.iterdir())
    assert {"index.html", "app.js", "style.css"} <= set(page_files)
    built = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path),
                            str(CORE)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    (wheel,) = tmp_path.glob("adcore-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in page_files:
        source = static / name
        assert f"adcore/serve/static/{name}" in names
        assert zipfile.ZipFile(wheel).read(f"adcore/serve/static/{name}") == source.read_bytes()
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "Provides-Extra: serve" in metadata and "fastapi" in metadata
