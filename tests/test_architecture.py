"""The dependency rules, as tests (docs/architecture.md explains them).

Between packages: core knows no plugin, plugins know only core, heavy dependencies stay where they
belong. Inside core the tiers point one way (contracts -> detector kit -> plugin host ->
application): a module imports only from its own or a lower tier, also lazily inside a function;
only ``factory`` (and ``plugins`` itself) talk to the plugin host. Every exception is an
``AdcoreError``, and no module grows past 500 lines.
"""

from __future__ import annotations

import ast
import builtins
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORE = REPO / "core" / "src"
PLUGINS = sorted(p.name.replace("-", "_") for p in (REPO / "plugins").iterdir() if p.is_dir())
PLUGIN_SOURCES = sorted((REPO / "plugins").glob("*/src"))

CONTRACTS, KIT, HOST, APPLICATION = 0, 1, 2, 3
TIER_NAMES = {CONTRACTS: "contracts", KIT: "detector kit", HOST: "plugin host", APPLICATION: "application"}

#: Every module of core, by tier. A name also covers its submodules (``adcore.commands`` covers
#: ``adcore.commands.train``); ``adcore`` itself, the package's front door, is the top of the
#: application tier, so no lower module may import it. Keep docs/architecture.md in step.
TIERS = {
    "adcore.errors": CONTRACTS, "adcore.prediction": CONTRACTS, "adcore.hookspecs": CONTRACTS,
    "adcore.registry": CONTRACTS, "adcore._version": CONTRACTS, "adcore.lazy": CONTRACTS,
    "adcore.inputs": KIT, "adcore.ops": KIT, "adcore.seeding": KIT, "adcore.progress": KIT, "adcore.training": KIT,
    "adcore.backbones": KIT, "adcore.base": KIT, "adcore.params": KIT, "adcore.persistence": KIT,
    "adcore.files": KIT, "adcore.memory": KIT, "adcore.process": KIT, "adcore.values": KIT, "adcore.tables": KIT, "adcore.lookups": KIT, "adcore.weights": KIT,
    "adcore.feature_detector": KIT, "adcore.tiling": KIT, "adcore.metrics": KIT,
    "adcore.scoring": KIT, "adcore.devices": KIT, "adcore.calibration": KIT,
    "adcore.plugins": HOST, "adcore.factory": HOST, "adcore.builtin": HOST,
    "adcore": APPLICATION, "adcore.__main__": APPLICATION, "adcore.data": APPLICATION, "adcore.decoding": APPLICATION, "adcore.datasets": APPLICATION,
    "adcore.evaluation": APPLICATION, "adcore.cli": APPLICATION,
    "adcore.commands": APPLICATION, "adcore.benchmark": APPLICATION, "adcore.line": APPLICATION, "adcore.viz": APPLICATION,
    "adcore.plots": APPLICATION, "adcore.testing": APPLICATION, "adcore.export": APPLICATION,
    "adcore.serve": APPLICATION,
    "adcore.scale": APPLICATION,
    "adcore.device_checks": APPLICATION,
    "adcore.deployed": APPLICATION,
}
#: the modules that may import the plugin host
HOST_TALKERS = {"adcore.plugins", "adcore.factory"}
MAX_LINES = 500

#: (rule, module) pairs that files other branches are rewriting break today; the lead removes an
#: entry at merge (strict=False: a pair that already passes is reported as XPASS, not as a failure).
PENDING = {
}


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


# -- the tiers inside core ---------------------------------------------------------------------------------
def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


CORE_FILES = {module_name(path, CORE): path for path in sorted((CORE / "adcore").rglob("*.py"))}


def tier_of(name: str) -> int | None:
    """The tier of module ``name``: its own entry, else its nearest listed parent package (not ``adcore``)."""
    if name in TIERS:
        return TIERS[name]
    parts = name.split(".")
    for end in range(len(parts) - 1, 1, -1):
        parent = ".".join(parts[:end])
        if parent in TIERS:
            return TIERS[parent]
    return None


def imports_of(name: str, path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` for every adcore module that ``name`` imports, at any depth of the file
    (inside functions and ``TYPE_CHECKING`` blocks too). ``from adcore import x`` is the module
    ``adcore.x`` when that exists, else the front door ``adcore``."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                known = submodule in CORE_FILES or submodule in TIERS
                found.append((node.lineno, submodule if known else source))
    return [(line, target) for line, target in found if target == "adcore" or target.startswith("adcore.")]


def pending(rule: str, name: str) -> list:
    for (pending_rule, owner), reason in PENDING.items():
        if pending_rule == rule and (name == owner or name.startswith(owner + ".")):
            return [pytest.mark.xfail(strict=False, reason=reason)]
    return []


def core_params(rule: str) -> list:
    return [pytest.param(name, path, id=name, marks=pending(rule, name)) for name, path in CORE_FILES.items()]


def test_every_core_module_has_a_tier():
    unplaced = sorted(name for name in CORE_FILES if tier_of(name) is None)
    assert not unplaced, (f"modules {unplaced} have no tier: add them to TIERS in tests/test_architecture.py "
                          "and to docs/architecture.md")


def test_the_tier_table_names_the_redesign_modules():
    # modules that do not exist yet are classified already, so they land in the right tier
    assert tier_of("adcore.commands.train") == tier_of("adcore.benchmark.runner") == APPLICATION
    assert tier_of("adcore.datasets") == APPLICATION and tier_of("adcore.params") == KIT
    assert tier_of("adcore.persistence") == KIT and tier_of("adcore.factory") == HOST
    assert tier_of("adcore.errors") == CONTRACTS and tier_of("adcore.somewhere_new") is None


def test_the_import_scan_sees_lazy_relative_and_front_door_imports(tmp_path):
    source = tmp_path / "probe.py"
    source.write_text("import adcore.files\nfrom adcore import hookspecs, __version__\n"
                      "def later():\n    from adcore.plugins import get_host\n    from . import metrics\n")
    found = {target for _, target in imports_of("adcore.probe", source)}
    assert found == {"adcore.files", "adcore.hookspecs", "adcore", "adcore.plugins", "adcore.metrics"}


@pytest.mark.parametrize("name,path", core_params("tiers"))
def test_imports_point_down_the_tiers(name: str, path: Path):
    own = tier_of(name)
    assert own is not None, f"{name} has no tier"
    upward = [f"line {line}: {target} ({TIER_NAMES[tier_of(target)]})" for line, target in imports_of(name, path)
              if tier_of(target) is not None and tier_of(target) > own]
    assert not upward, f"{name} ({TIER_NAMES[own]}) imports from a higher tier: {upward}"


@pytest.mark.parametrize("name,path", core_params("host"))
def test_only_the_factory_talks_to_the_plugin_host(name: str, path: Path):
    if name in HOST_TALKERS:
        return
    calls = [f"line {line}" for line, target in imports_of(name, path) if target == "adcore.plugins"]
    assert not calls, f"{name} imports adcore.plugins ({calls}); go through adcore.factory"


@pytest.mark.parametrize("source", PLUGIN_SOURCES, ids=lambda p: p.parent.name)
def test_plugins_do_not_talk_to_the_plugin_host(source: Path):
    hits = [f"{path.relative_to(REPO)}:{line}" for path in sorted(source.rglob("*.py"))
            for line, target in imports_of(module_name(path, source), path) if target == "adcore.plugins"]
    assert not hits


def test_no_module_is_over_500_lines():
    files = sorted(CORE.rglob("*.py")) + [path for source in PLUGIN_SOURCES for path in sorted(source.rglob("*.py"))]
    long = {str(path.relative_to(REPO)): count for path in files
            if (count := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these modules (at most {MAX_LINES} lines each): {long}"


# -- every exception an AdcoreError --------------------------------------------------------------------------
BUILTIN_EXCEPTIONS = {name for name, value in vars(builtins).items()
                      if isinstance(value, type) and issubclass(value, BaseException)}
BUILTIN_WARNINGS = {name for name in BUILTIN_EXCEPTIONS if issubclass(getattr(builtins, name), Warning)}
BUILTIN_ERRORS = {name for name in BUILTIN_EXCEPTIONS if issubclass(getattr(builtins, name), Exception)} - BUILTIN_WARNINGS
#: raising these is not raising an error: NotImplementedError marks an abstract hook, the others
#: are control flow (leaving the program, Ctrl-C, the iterator protocol)
ALLOWED_RAISES = {"NotImplementedError", "SystemExit", "KeyboardInterrupt", "GeneratorExit", "StopIteration",
                  "StopAsyncIteration"}
ALL_SOURCES = [(module_name(path, CORE), path) for path in sorted(CORE.rglob("*.py"))] + [
    (module_name(path, source), path) for source in PLUGIN_SOURCES for path in sorted(source.rglob("*.py"))]


def _base_name(node: ast.expr) -> str:
    return node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else ""


def _classes() -> dict[str, list[set[str]]]:
    """Class name -> the base names of each class of that name, over core and every plugin."""
    classes: dict[str, list[set[str]]] = {}
    for _, path in ALL_SOURCES:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef):
                classes.setdefault(node.name, []).append({_base_name(base) for base in node.bases})
    return classes


CLASSES = _classes()


def derives_from(bases: set[str], targets: set[str], seen: frozenset[str] = frozenset()) -> bool:
    """Whether a class with these base names derives from one of ``targets``. A base is followed
    through the project's classes of that name (any of them: one imported name is one of them)."""
    for base in bases - seen:
        if base in targets:
            return True
        if any(derives_from(more, targets, seen | bases) for more in CLASSES.get(base, ())):
            return True
    return False


def source_params(rule: str) -> list:
    return [pytest.param(name, path, id=str(path.relative_to(REPO)), marks=pending(rule, name))
            for name, path in ALL_SOURCES]


@pytest.mark.parametrize("name,path", source_params("exceptions"))
def test_every_exception_class_derives_from_adcore_error(name: str, path: Path):
    wrong = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.ClassDef) or node.name == "AdcoreError":
            continue
        bases = {_base_name(base) for base in node.bases}
        # warning categories are not errors; everything else deriving from Exception is
        is_error = derives_from(bases, BUILTIN_ERRORS) and not derives_from(bases, BUILTIN_WARNINGS)
        if is_error and not derives_from(bases, {"AdcoreError"}):
            wrong.append(f"{node.name} (line {node.lineno})")
    assert not wrong, f"{path.relative_to(REPO)}: {wrong} must derive from adcore.errors.AdcoreError (keep the stdlib base)"


def builtin_raises(tree: ast.AST) -> list[str]:
    """``raise ValueError(...)``-style raises of a builtin exception (re-raises and allowed names aside)."""
    found = []
    getattr_bodies = {id(inner) for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)
                      and node.name == "__getattr__" for inner in ast.walk(node)}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Raise) or node.exc is None:
            continue  # a bare `raise` re-raises
        callee = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
        name = callee.id if isinstance(callee, ast.Name) else ""
        if name not in BUILTIN_EXCEPTIONS or name in ALLOWED_RAISES:
            continue  # `raise exc` of a caught exception, or adcore's own classes
        if name == "AttributeError" and id(node) in getattr_bodies:
            continue  # the module/class __getattr__ protocol requires AttributeError
        found.append(f"line {node.lineno}: {name}")
    return found


def test_the_raise_scan_flags_builtin_errors_only():
    tree = ast.parse("def f(x):\n    try:\n        g()\n    except OSError as exc:\n        raise\n"
                     "    raise ValueError('a')\n    raise KeyError\n    raise InvalidInputError('b')\n"
                     "    raise NotImplementedError\n    raise SystemExit(2)\n    raise exc from None\n"
                     "def __getattr__(name):\n    raise AttributeError(name)\n")
    assert builtin_raises(tree) == ["line 6: ValueError", "line 7: KeyError"]


@pytest.mark.parametrize("name,path", source_params("raises"))
def test_no_bare_builtin_exception_is_raised(name: str, path: Path):
    found = builtin_raises(ast.parse(path.read_text(), str(path)))
    assert not found, (f"{path.relative_to(REPO)} raises builtin exceptions {found}: raise a class from adcore.errors "
                       "(each keeps its stdlib base, e.g. InvalidInputError is a ValueError)")


def test_the_exception_scan_follows_bases_and_skips_warnings():
    assert derives_from({"ModelFileError"}, {"AdcoreError"}) and derives_from({"ModelFileError"}, BUILTIN_ERRORS)
    assert derives_from({"RuntimeError"}, BUILTIN_ERRORS) and not derives_from({"RuntimeError"}, {"AdcoreError"})
    assert derives_from({"UserWarning"}, BUILTIN_WARNINGS) and not derives_from({"UserWarning"}, BUILTIN_ERRORS)
    assert not derives_from({"KeyboardInterrupt"}, BUILTIN_ERRORS)


# -- the lean runtime (runtime/, the adcore-runtime distribution) --------------------------------------------
RUNTIME_SOURCE = REPO / "runtime" / "src"


def test_the_runtime_needs_no_torch_and_no_adcore():
    imports = imported_modules(RUNTIME_SOURCE)
    assert "adcore_runtime" in imports  # the scan sees the package
    heavy = {name: files for name, files in imports.items()
             if name in {"torch", "torchvision", "timm", "adcore", "scipy", "sklearn", "matplotlib", *PLUGINS}}
    assert not heavy, f"adcore-runtime must install without torch: {heavy}"


def test_the_runtime_keeps_the_house_rules():
    files = sorted(RUNTIME_SOURCE.rglob("*.py"))
    long = {str(p.relative_to(REPO)): n for p in files if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these modules (at most {MAX_LINES} lines each): {long}"
    raises = {str(p.relative_to(REPO)): found for p in files if (found := builtin_raises(ast.parse(p.read_text())))}
    assert not raises, f"raise an adcore_runtime.errors class instead: {raises}"
