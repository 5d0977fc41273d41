"""What one ``adcore benchmark`` invocation runs: datasets, detectors, parameters, seeds, options.

A *plan* is the cross product of detectors (names, ``all``, a category, a glob, or — only with
``--allow-import`` — an importable ``module:Class`` that is a detector class) with parameters, and
datasets (MVTec-layout roots and categories, or generic folders), once per seed of ``--seeds``.
A pair's identity (:attr:`RunSpec.key`) is its detector, its final parameters (the seed among
them), the dataset's name/category/train cap, the batch size and the measurement options that
change what is recorded; the time limit is not part of it.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import inspect
import json
import os
import re
import sys
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from adcore.benchmark.options import OPTION_KEYS, options_for, parse_param, parse_seeds, parse_time_limit
from adcore.datasets import DatasetSpec, parse_datasets
from adcore.errors import ConfigurationError

__all__ = [
    "RESULTS_FILE",
    "RUNS_DIR",
    "RECORD_FORMAT",
    "DEFAULT_TIME_LIMIT",
    "DatasetSpec",
    "RunSpec",
    "BenchmarkPlan",
    "parse_datasets",
    "portable_path",
    "portable_dataset",
    "resolve_models",
    "load_config",
    "build_plan",
    "load_detector_class",
]

RESULTS_FILE = "results.jsonl"
RUNS_DIR = "runs"
RECORD_FORMAT = 1
DEFAULT_TIME_LIMIT = 1800.0


@dataclass(frozen=True)
class RunSpec:
    """One (detector, dataset) pair with its final parameters."""

    detector: str
    dataset: DatasetSpec
    params: dict[str, Any]
    batch_size: int = 8
    time_limit: float = DEFAULT_TIME_LIMIT
    #: measurement options (``curve``, ``image_size``, ``calibration_fraction``, ``variants``,
    #: ``record_attributes``, ``preimport``, ``cpu_latency``); only those not at their defaults
    options: dict[str, Any] = field(default_factory=dict)
    #: whether ``detector`` may be an importable ``module:Class`` (``--allow-import``)
    allow_import: bool = False

    @property
    def key(self) -> str:
        identity = {"format": RECORD_FORMAT, "detector": self.detector, "params": self.params,
                    "dataset": self.dataset.identity(), "batch_size": self.batch_size}
        if self.options:  # only then: a plan without options keeps the keys of the records already stored
            identity["options"] = self.options
        return hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]

    @property
    def slug(self) -> str:
        safe = lambda s: re.sub(r"[^A-Za-z0-9_.-]+", "-", s).strip("-")  # noqa: E731
        return f"{safe(self.detector)}__{safe(self.dataset.name)}__{self.key[:8]}"


@dataclass
class BenchmarkPlan:
    """Everything one invocation runs and reports."""

    runs: list[RunSpec]
    datasets: list[DatasetSpec]
    detectors: list[str]
    out: Path
    threads: int | None = None
    jobs: int = 1
    published: dict[str, Any] = field(default_factory=dict)
    title: str = "adcore benchmark"
    notes: list[str] = field(default_factory=list)
    report: Path | None = None
    figures: Path | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    plugin_failures: list[dict[str, str]] = field(default_factory=list)
    #: a file to ``flock`` around each run (shared with other measurements so timings stay honest)
    lock: Path | None = None

    @property
    def results_path(self) -> Path:
        return self.out / RESULTS_FILE


def portable_path(path: str | Path | None) -> str | None:
    """``path`` as a record should keep it: relative to the working directory when it lies beside it.

    Records and settings are committed with the benchmark pages, and a machine's absolute paths
    say nothing to a reader on another machine; ``../shared/data`` from the repository does. A path
    further away than the working directory's parent stays absolute (a relative form would climb
    to the file-system root).
    """
    if path is None:
        return None
    resolved = Path(os.path.abspath(os.path.expanduser(str(path))))
    here = Path.cwd()
    for anchor in (here, here.parent):
        if resolved == anchor or anchor in resolved.parents:
            return os.path.relpath(resolved, here)
    return str(resolved)


def portable_dataset(dataset: DatasetSpec) -> dict[str, Any]:
    """``dataset`` as a record keeps it: its fields, every folder through :func:`portable_path`."""
    fields = asdict(dataset)
    for name in ("root", "train", "good", "masks"):
        if fields.get(name):
            fields[name] = portable_path(fields[name])
    fields["defects"] = [portable_path(folder) for folder in fields.get("defects") or ()]
    return fields


def _resolve_path(path: str | Path, base: Path | None) -> Path:
    path = Path(os.path.expanduser(str(path)))
    return path if path.is_absolute() or base is None else base / path


def resolve_models(tokens: list[str], exclude: list[str] | None = None, *, allow_import: bool = False) -> list[str]:
    """Detector tokens → detector names, in order, without duplicates.

    A token is ``all``, a category (``memory_based``), a glob (``*ae``), a name (``patchcore`` or
    ``ad-memory:patchcore``) or, with ``allow_import`` (``--allow-import``), an importable
    ``package.module:ClassName`` that is not registered (to benchmark a detector before it is
    packaged). Without it such a token is refused: importing a module runs its code.
    """
    from adcore import factory

    entries = factory.detector_entries()
    categories = {entry.category for entry in entries}
    counts = Counter(entry.name for entry in entries)

    def plan_name(entry: Any) -> str:
        # a name several distributions register stays "distribution:name": the plain one is ambiguous
        return entry.qualified_name if counts[entry.name] > 1 else entry.name

    names: list[str] = []
    for token in tokens:
        for part in (p.strip() for p in str(token).split(",")):
            if not part:
                continue
            if part == "all":
                found = [plan_name(e) for e in sorted(entries, key=_category_order)]
            elif part in categories and factory.find_entry(part) is None:
                found = [plan_name(e) for e in factory.detector_entries("*", part)]
            elif any(ch in part for ch in "*?["):
                found = [plan_name(e) for e in factory.detector_entries(part)]
                if not found:
                    raise ConfigurationError(f"--model {part!r} matches no registered detector "
                                             f"({', '.join(sorted(e.name for e in entries))})")
            elif factory.find_entry(part) is not None:
                # "ad-stat:padim" is kept as given (#22): the run must build that distribution's detector
                found = [part if ":" in part else plan_name(factory.find_entry(part))]
            elif _looks_like_target(part):
                if not allow_import:
                    raise ConfigurationError(
                        f"detector {part!r} is not registered; it looks like an importable module:Class, which "
                        "`adcore benchmark` imports only when you pass --allow-import (importing runs that "
                        "module's code: pass it only for code you trust)")
                found = [part]
            else:
                factory.get_entry(part)  # raises ModelNotFoundError naming close matches and what to install
                found = []
            names.extend(n for n in found if n not in names)
    excluded = set()
    for pattern in exclude or []:
        excluded.update(n for n in names if fnmatch.fnmatchcase(n, pattern))
    return [n for n in names if n not in excluded]


def _category_order(entry: Any) -> tuple[int, str]:
    """First-party paradigms in their usual order (cheap, training-free ones first), then the others."""
    from adcore.registry import CATEGORIES

    rank = CATEGORIES.index(entry.category) if entry.category in CATEGORIES else len(CATEGORIES)
    return rank, entry.name


def _looks_like_target(text: str) -> bool:
    module, sep, attr = text.partition(":")
    return bool(sep) and all(p.isidentifier() for p in module.split(".")) and all(p.isidentifier() for p in attr.split("."))


def _card(detector: str) -> dict[str, Any]:
    from adcore.factory import find_entry

    entry = find_entry(detector)
    return dict(entry.card) if entry is not None else {}


def load_config(path: str | Path) -> tuple[dict[str, Any], Path]:
    """Read a JSON or TOML benchmark configuration; returns it and the folder its relative paths start from.

    Relative paths in a configuration are resolved from the repository that holds it (the nearest
    folder above it with a ``.git``), or from the configuration's own folder outside a repository,
    so a committed configuration works from any working directory.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigurationError(f"benchmark configuration {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            config = tomllib.loads(text)
        else:
            config = json.loads(text)
    except Exception as exc:  # noqa: BLE001 - any parse error becomes one message naming the file
        raise ConfigurationError(f"cannot parse benchmark configuration {path}: {exc}") from exc
    if not isinstance(config, dict):
        raise ConfigurationError(f"benchmark configuration {path} must hold an object/table at the top level")
    base = path.resolve().parent
    for folder in [base, *base.parents]:
        if (folder / ".git").exists():
            base = folder
            break
    return config, base


def build_plan(args: argparse.Namespace) -> BenchmarkPlan:
    """Merge the configuration file (if any) with command-line options into a plan."""
    config: dict[str, Any] = {}
    base: Path | None = None
    if getattr(args, "config", None):
        config, base = load_config(args.config)
    known = {"title", "notes", "data_root", "out", "report", "figures", "published", "models", "exclude", "params",
             "datasets", "input_size", "seed", "device", "precision", "time_limit", "batch_size", "threads", "jobs", "quick", "max_train",
             "command", "lock", *OPTION_KEYS, "seeds"}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ConfigurationError(f"benchmark configuration: unknown key(s) {unknown}; known: {sorted(known)}")

    def cli_path(value: Any) -> Path | None:
        return None if value is None else Path(value)

    data_root = cli_path(args.data_root) or (_resolve_path(config["data_root"], base) if "data_root" in config else None)
    out = cli_path(args.out) or (_resolve_path(config["out"], base) if "out" in config else Path("results/benchmark"))
    report = cli_path(args.report) or (_resolve_path(config["report"], base) if "report" in config else None)
    figures = cli_path(args.figures) or (_resolve_path(config["figures"], base) if "figures" in config else None)
    published_path = cli_path(getattr(args, "published", None)) or (
        _resolve_path(config["published"], base) if "published" in config else None)
    published: dict[str, Any] = {}
    if published_path is not None:
        published = json.loads(Path(published_path).read_text(encoding="utf-8"))
        published = published.get("detectors", published)

    model_tokens = args.model or config.get("models") or ["all"]
    model_tokens = [model_tokens] if isinstance(model_tokens, str) else model_tokens
    allow_import = bool(getattr(args, "allow_import", False))  # never from a config: a file must not grant it
    detectors = resolve_models(list(model_tokens), list(args.exclude or config.get("exclude", [])),
                               allow_import=allow_import)
    if not detectors:
        raise ConfigurationError("no detector to benchmark: install a plugin (adcore list shows what is registered) or fix --model")

    dataset_items = args.dataset or config.get("datasets") or []
    if not dataset_items:
        raise ConfigurationError("no dataset: pass --dataset ROOT:CATEGORY (or a category folder) or 'datasets' in --config")
    max_train = args.max_train if args.max_train is not None else config.get("max_train")
    datasets = parse_datasets(list(dataset_items), data_root, max_train=max_train)

    quick = bool(args.quick or config.get("quick", False))
    input_size = args.input_size if args.input_size is not None else config.get("input_size")
    seed = args.seed if args.seed is not None else config.get("seed")
    # where every detector runs and at which precision (params, so a cuda and a cpu run are two rows)
    device = getattr(args, "device", None) or config.get("device")
    precision = getattr(args, "precision", None) or config.get("precision")
    seeds = parse_seeds(getattr(args, "seeds", None) or config.get("seeds"))
    config_params = config.get("params", {}) or {}
    cli_params = [parse_param(text) for text in args.param or []]
    for name, _, _ in cli_params:
        if name is not None and name not in detectors:
            raise ConfigurationError(f"--param for {name!r}, which is not in this benchmark's detectors ({', '.join(detectors)})")
    limits = {"*": DEFAULT_TIME_LIMIT}
    config_limit = config.get("time_limit")
    if isinstance(config_limit, dict):
        limits.update({("*" if k == "default" else k): float(v) for k, v in config_limit.items()})
    elif config_limit is not None:
        limits["*"] = float(config_limit)
    limits.update(parse_time_limit(args.time_limit))
    batch_size = int(args.batch_size or config.get("batch_size", 8))

    def params_for(name: str, dataset: str | None) -> dict[str, Any]:
        # precedence, low to high: card quick_params, top-level input_size/seed, config "*", config NAME,
        # config "*@DATASET", config "NAME@DATASET" (a budget for one data set), --param KEY=, --param NAME.KEY=
        params: dict[str, Any] = {}
        if quick:
            params.update(_card(name).get("quick_params", {}) or {})
        if input_size is not None:
            params["input_size"] = input_size  # with --quick: the card's smoke budget at the size asked for
        if seed is not None:
            params["seed"] = seed
        if device is not None:
            params["device"] = device
        if precision is not None:
            params["precision"] = str(precision)
        scopes = ["*", name] + ([f"*@{dataset}", f"{name}@{dataset}"] if dataset is not None else [])
        for scope in scopes:
            params.update(config_params.get(scope, {}) or {})
        for target in (None, name):
            params.update({key: value for scope, key, value in cli_params if scope == target})
        return params

    per_detector = {name: params_for(name, None) for name in detectors}
    options = {name: options_for(name, args, config) for name in detectors}
    runs = []
    for dataset in datasets:
        for name in detectors:
            limit = limits.get(f"{name}@{dataset.name}", limits.get(f"*@{dataset.name}", limits.get(name, limits["*"])))
            params = params_for(name, dataset.name)
            for run_seed in seeds or [None]:  # --seeds: one run per seed, the seed set last (it wins)
                run_params = params if run_seed is None else {**params, "seed": run_seed}
                runs.append(RunSpec(name, dataset, run_params, batch_size, limit, options[name], allow_import))
    # (only for the configuration's own data sets: --dataset choosing a few of them leaves the others' budgets unused)
    for key in (list(config_params) + [k for k in limits if "@" in k]) if not args.dataset else []:
        if "@" in key and key.split("@", 1)[1] not in {d.name for d in datasets}:
            warnings.warn(f"benchmark configuration: {key!r} names a data set that is not in this benchmark", stacklevel=2)

    notes = config.get("notes", [])
    settings = {"quick": quick, "input_size": input_size, "seed": seed, "device": device, "precision": precision,
                "batch_size": batch_size,
                "time_limits": limits, "params": per_detector,
                "dataset_params": {k: v for k, v in config_params.items() if "@" in k}, "data_root": portable_path(data_root),
                "max_train": max_train, "command": config.get("command") or _command_line()}
    if seeds:
        settings["seeds"] = seeds
    if any(options.values()):
        settings["options"] = {name: value for name, value in options.items() if value}
    return BenchmarkPlan(runs=runs, datasets=datasets, detectors=detectors, out=out,
                         threads=args.threads if args.threads is not None else config.get("threads"),
                         jobs=int(args.jobs or config.get("jobs", 1)), published=published,
                         title=config.get("title", "adcore benchmark"), notes=[notes] if isinstance(notes, str) else list(notes),
                         report=report, figures=figures, settings=settings,
                         plugin_failures=[f.as_dict() for f in _plugin_failures()],
                         lock=cli_path(args.lock) or (Path(config["lock"]) if config.get("lock") else None))


def _command_line() -> str:
    argv = [a for a in sys.argv if a not in ("--report-only", "--dry-run")]
    program = Path(argv[0]).name if argv else "adcore"
    head = "adcore" if program == "adcore" else "python -m adcore.benchmark" if program in ("benchmark.py", "__main__.py", "-m") else program
    return " ".join([head, *argv[1:]])




def load_detector_class(target: str) -> type:
    """Import ``module:Class`` and return it only if it is a detector class (a class with ``fit`` and
    ``predict``); anything else (a function such as ``os:system``, a module, an instance) is refused
    before it is ever called."""
    if not _looks_like_target(target):
        raise ConfigurationError(f"detector {target!r}: expected an importable package.module:ClassName")
    import importlib

    module_name, _, attr = target.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(f"detector {target!r} could not be imported: {type(exc).__name__}: {exc}") from exc
    if not inspect.isclass(obj) or not all(callable(getattr(obj, name, None)) for name in ("fit", "predict")):
        kind = "a class without fit/predict" if inspect.isclass(obj) else f"a {type(obj).__name__}, not a class"
        raise ConfigurationError(f"detector {target!r} is {kind}; `adcore benchmark` only builds detector classes "
                                 "(subclasses of adcore.base.BaseDetector or classes with fit and predict)")
    return obj


def _plugin_failures() -> list[Any]:
    from adcore.factory import plugin_failures

    return plugin_failures()
