"""The dependency rules: core knows no plugin, plugins know only core, heavy deps stay where they belong."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PLUGINS = sorted(p.name.replace("-", "_") for p in (REPO / "plugins").iterdir() if p.is_dir())


def imported_modules(folder: Path) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in folder.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(REPO)))
    return found


def test_core_imports_no_plugin():
    imports = imported_modules(REPO / "core" / "src")
    leaked = {name: files for name, files in imports.items() if name in PLUGINS or name == "ad_example"}
    assert not leaked
    assert "faiss" not in imports and "FrEIA" not in imports and "sklearn" not in imports


@pytest.mark.parametrize("plugin", PLUGINS)
def test_plugin_imports_no_other_plugin(plugin: str):
    imports = imported_modules(REPO / "plugins" / plugin.replace("_", "-") / "src")
    others = {name: files for name, files in imports.items() if name in PLUGINS and name != plugin}
    assert not others


@pytest.mark.parametrize("module,owner", [("faiss", "ad_memory"), ("FrEIA", "ad_flow")])
def test_heavy_dependencies_stay_in_their_plugin(module: str, owner: str):
    for plugin in PLUGINS:
        if plugin != owner:
            assert module not in imported_modules(REPO / "plugins" / plugin.replace("_", "-") / "src"), plugin
