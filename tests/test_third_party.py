"""A third-party distribution, installed by pip like any outside plugin, shows up and conforms."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import distribution
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_example_plugin_is_a_separate_installed_distribution():
    dist = distribution("ad-example")
    entry_points = [ep for ep in dist.entry_points if ep.group == "adcore"]
    assert [(ep.name, ep.value) for ep in entry_points] == [("ad_example", "ad_example.plugin")]
    assert "adcore" in " ".join(dist.requires or [])


def test_example_plugin_is_found_by_the_factory():
    import adcore
    from adcore.factory import get_entry

    entry = get_entry("example_gaussian")
    assert (entry.distribution, entry.category) == ("ad-example", "example")
    detector = adcore.get_model("ad-example:example_gaussian", input_size=64)
    assert type(detector).__name__ == "GaussianPatchDetector"


def test_wheel_installed_into_a_fresh_folder_is_discovered(tmp_path: Path):
    """pip-install the template into an empty target and list it from there, with it disabled in site-packages."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(REPO / "examples" / "ad-example")], check=True, timeout=300)
    # rename the copy's distribution so it cannot be confused with the one already installed
    info = next(target.glob("ad_example-*.dist-info"))
    metadata = (info / "METADATA").read_text().replace("Name: ad-example", "Name: ad-example-copy")
    (info / "METADATA").write_text(metadata)
    (info / "entry_points.txt").write_text("[adcore]\nad_example_copy = ad_example.plugin\n")
    env = {**os.environ, "PYTHONPATH": str(target), "ADCORE_DISABLE_PLUGINS": "ad-example", "ADCORE_PROGRESS": "0"}
    out = subprocess.run([sys.executable, "-m", "adcore.cli", "list", "--json"], capture_output=True, text=True,
                         env=env, check=True, timeout=300).stdout
    rows = {row["name"]: row for row in json.loads(out)}
    assert rows["example_gaussian"]["distribution"] == "ad-example-copy"


@pytest.mark.parametrize("plugin_dir", sorted(p.name for p in (REPO / "plugins").iterdir() if p.is_dir()))
def test_each_plugin_declares_its_entry_point_and_depends_on_adcore_only_among_ours(plugin_dir: str):
    import tomllib

    project = tomllib.loads((REPO / "plugins" / plugin_dir / "pyproject.toml").read_text())["project"]
    import_name = plugin_dir.replace("-", "_")
    assert project["entry-points"]["adcore"] == {import_name: f"{import_name}.plugin"}
    ours = {p.name for p in (REPO / "plugins").iterdir()}
    deps = [d.split(">")[0].split("=")[0].split("<")[0].strip() for d in project["dependencies"]]
    assert "adcore" in deps and not (set(deps) & ours)
