"""``adcore benchmark``: every detector × every dataset, one isolated run each, resumable, with tables and plots.

A *plan* is the cross product of detectors (names, ``all``, a category, a glob, or an importable
``module:Class``) with parameters, and datasets (MVTec-layout roots and categories, or generic
folders). Each (detector, dataset) pair runs ``fit → calibrate on the good training images →
evaluate`` (:func:`adcore.evaluation.evaluate_detector`) in its **own subprocess**
(``python -m adcore.benchmark --worker SPEC``), so that

- peak RSS is that run's own, not the accumulated maximum of everything before it;
- a crash (segfault, out-of-memory kill) or a run over its ``--time-limit`` kills only that run
  (the whole process group is killed), is recorded with its status, and the rest continue;
- an exception is recorded with its type, message, stage (fit / calibrate / predict / latency),
  the traceback's tail and the plugin's name and version.

Every finished run is added to ``OUT/results.jsonl`` at once (the file is rewritten to a temporary
file and atomically renamed, so a kill at any moment leaves either the old or the new file, never
a torn one; a damaged line written by anything else is skipped with a warning). Re-running the same
command skips pairs already recorded (``--retry-failed`` re-runs the failed and timed-out ones,
``--fresh`` all of them). A pair's identity is its detector, its final parameters, the dataset's
name/category/train cap and the batch size; the time limit is not part of it.

Outputs, rebuilt after every invocation from the JSONL (``--report-only`` rebuilds without
running anything): ``results.md``/``.csv``/``.json`` (one row per pair, including pairs that
failed, timed out or have not run), figures (per-dataset AUROC bars, an AUROC matrix,
accuracy-versus-latency, ROC curves, score histograms with the calibrated threshold and a grid of
anomaly-map overlays on the same test images for every detector) and, with ``--report``, a
Markdown page with the settings, the machine, the versions, a per-detector summary with the
published MVTec AD numbers beside it, the full table, the failures and the figures.

Each run also stores ``OUT/runs/<slug>.npz``: per-image scores, labels and defect types, the
threshold, and small (128 px) images, masks and maps of a fixed choice of test images (the first
image of each defect type, round-robin, plus the first good image), which is what the plots read.

Command line (also ``adcore benchmark``)::

    python -m adcore.benchmark --model patchcore padim --param patchcore.coreset_ratio=0.05 \\
        --dataset /data/mvtec:bottle /data/piped --time-limit 600 --out results/benchmark
    python -m adcore.benchmark --config benchmarks/config.json          # what docs/benchmarks.md shows
"""

from __future__ import annotations

import argparse
import collections
import csv
import fcntl
import fnmatch
import hashlib
import io
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = [
    "DatasetSpec",
    "RunSpec",
    "BenchmarkPlan",
    "ResultStore",
    "RunOutcome",
    "parse_param",
    "parse_time_limit",
    "parse_datasets",
    "resolve_models",
    "load_config",
    "build_plan",
    "run_benchmark",
    "collect_rows",
    "write_tables",
    "write_report",
    "machine_info",
    "add_cli",
    "main",
]

RESULTS_FILE = "results.jsonl"
RUNS_DIR = "runs"
RECORD_FORMAT = 1
#: test images kept per run for the heatmap grid, and the side of the stored thumbnails
SAMPLE_IMAGES = 4
SAMPLE_SIDE = 128
#: statuses a run can end with (``missing`` is a planned pair with no record yet)
STATUSES = ("ok", "error", "timeout", "crashed", "missing")
DEFAULT_TIME_LIMIT = 1800.0

# columns of the results table: (key in a row, Markdown header, format)
TABLE_COLUMNS: list[tuple[str, str, str]] = [
    ("dataset", "dataset", "s"),
    ("detector", "detector", "s"),
    ("status", "status", "s"),
    ("image_auroc", "img AUROC", ".3f"),
    ("pixel_auroc", "px AUROC", ".3f"),
    ("aupro", "AUPRO", ".3f"),
    ("image_f1_max", "F1-max", ".3f"),
    ("fit_seconds", "fit s", ".1f"),
    ("ms_per_image_batch1", "ms/img bs1", ".1f"),
    ("ms_per_image_batched", "ms/img batched", ".1f"),
    ("peak_rss_mb", "peak RSS MB", ".0f"),
    ("backbone", "backbone", "s"),
    ("input_size", "size", "s"),
    ("seed", "seed", "s"),
    ("plugin", "plugin", "s"),
]
CSV_COLUMNS = [
    "dataset", "detector", "status", "image_auroc", "pixel_auroc", "aupro", "image_f1_max", "threshold",
    "threshold_f1", "fit_seconds", "ms_per_image_batch1", "ms_per_image_batched", "batch_size", "peak_rss_mb",
    "wall_seconds", "train_images", "calibration_images", "test_images", "backbone", "input_size", "seed", "plugin", "plugin_version",
    "adcore_version", "params", "time_limit", "error_type", "error_message", "error_stage", "finished_at", "key",
]


# ---------------------------------------------------------------------------------------------
# What to run: datasets, detectors, parameters
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetSpec:
    """One dataset of the plan.

    ``kind="mvtec"``: ``root``/``category`` in the MVTec AD layout (``category=None`` when ``root``
    is the category folder itself). ``kind="folder"``: ``train`` (good training images), ``good``
    (good test images), ``defects`` (folders of defective test images) and optional ``masks``
    (``<stem>_mask.png`` or ``<stem>.png``). ``max_train`` caps the training images (evenly spaced,
    deterministic) to bound the cost on large sets; the test set is always complete.
    """

    name: str
    kind: str = "mvtec"
    root: str = ""
    category: str | None = None
    train: str | None = None
    good: str | None = None
    defects: tuple[str, ...] = ()
    masks: str | None = None
    max_train: int | None = None

    def identity(self) -> dict[str, Any]:
        """What makes two runs comparable (not the absolute path: ``--data-root`` may move)."""
        return {"name": self.name, "kind": self.kind, "category": self.category, "max_train": self.max_train}

    def describe(self) -> str:
        if self.kind == "mvtec":
            where = str(Path(self.root) / self.category) if self.category else self.root
        else:
            where = f"train={self.train} good={self.good} defects={list(self.defects)}"
        cap = f" (train capped at {self.max_train})" if self.max_train else ""
        return f"{self.name}: {where}{cap}"

    def load(self, image_size: int | tuple[int, int] | None) -> tuple[Any, Any]:
        """``(train, test)`` datasets at ``image_size`` (a capped train set is an evenly spaced subset)."""
        from adcore.data import FolderDataset, MVTecDataset

        if self.kind == "mvtec":
            train = MVTecDataset(self.root, self.category, "train", image_size=image_size)
            test = MVTecDataset(self.root, self.category, "test", image_size=image_size)
        elif self.kind == "folder":
            if not self.train or not self.good:
                raise ValueError(f"dataset {self.name!r}: a folder dataset needs train= and good= folders")
            train = FolderDataset(self.train, image_size=image_size)
            test = FolderDataset(self.good, self.defects, self.masks, image_size=image_size)
        else:
            raise ValueError(f"dataset {self.name!r}: unknown kind {self.kind!r} (use 'mvtec' or 'folder')")
        if self.max_train and len(train) > self.max_train:
            from torch.utils.data import Subset

            step = len(train) / self.max_train
            train = Subset(train, [int(i * step) for i in range(self.max_train)])
        return train, test


@dataclass(frozen=True)
class RunSpec:
    """One (detector, dataset) pair with its final parameters."""

    detector: str
    dataset: DatasetSpec
    params: dict[str, Any]
    batch_size: int = 8
    time_limit: float = DEFAULT_TIME_LIMIT

    @property
    def key(self) -> str:
        identity = {"format": RECORD_FORMAT, "detector": self.detector, "params": self.params,
                    "dataset": self.dataset.identity(), "batch_size": self.batch_size}
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


def parse_value(text: str) -> Any:
    """``"0.05"`` → 0.05, ``"true"`` → True, ``"[1,2]"`` → [1, 2]; anything else stays a string."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_param(text: str) -> tuple[str | None, str, Any]:
    """``"patchcore.coreset_ratio=0.05"`` → ``("patchcore", "coreset_ratio", 0.05)``.

    Without a detector prefix (``"input_size=128"`` or ``"*.epochs=2"``) the parameter applies to
    every detector in the plan (``None`` as the first element).
    """
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise ValueError(f"--param {text!r}: expected DETECTOR.KEY=VALUE (e.g. patchcore.coreset_ratio=0.05) or KEY=VALUE")
    name = name.strip()
    detector, dot, key = name.rpartition(".")
    if not dot:
        detector, key = "*", name
    if not key.isidentifier():
        raise ValueError(f"--param {text!r}: {key!r} is not a parameter name")
    return (None if detector in ("*", "") else detector), key, parse_value(value)


def parse_time_limit(values: list[str] | None) -> dict[str, float]:
    """``["600", "patchcore=900"]`` → ``{"*": 600.0, "patchcore": 900.0}``."""
    limits: dict[str, float] = {}
    for text in values or []:
        name, sep, seconds = str(text).rpartition("=")
        try:
            value = float(seconds)
        except ValueError:
            raise ValueError(f"--time-limit {text!r}: expected SECONDS or DETECTOR=SECONDS") from None
        if value <= 0:
            raise ValueError(f"--time-limit {text!r}: seconds must be > 0")
        limits[name if sep else "*"] = value
    return limits


def _resolve_path(path: str | Path, base: Path | None) -> Path:
    path = Path(os.path.expanduser(str(path)))
    return path if path.is_absolute() or base is None else base / path


def _unique_name(name: str, taken: set[str]) -> str:
    candidate, counter = name, 2
    while candidate in taken:
        candidate, counter = f"{name}-{counter}", counter + 1
    taken.add(candidate)
    return candidate


def parse_datasets(items: list[Any], data_root: Path | None = None, *, max_train: int | None = None) -> list[DatasetSpec]:
    """Dataset specifications (strings or config dicts) → :class:`DatasetSpec` list.

    Strings: ``ROOT:CATEGORY`` (MVTec layout), ``CATEGORY_DIR`` (a folder with ``train/`` and
    ``test/``), ``PARENT`` (every sub-folder with ``train/`` and ``test/``, sorted), or
    ``folder:train=DIR,good=DIR,defect=DIR,defect=DIR,masks=DIR[,name=NAME]``. A ``NAME=`` prefix
    names the dataset. Relative paths are taken from ``data_root`` (the current folder when None).
    Dicts take the same fields as :class:`DatasetSpec` plus ``path`` (any of the string forms).
    """
    specs: list[DatasetSpec] = []
    taken: set[str] = set()
    for item in items:
        options: dict[str, Any] = {}
        if isinstance(item, dict):
            options = dict(item)
            text = options.pop("path", None)
            if text is None and options.get("kind", "mvtec") == "folder":
                found = _folder_spec(options, data_root, max_train)
                specs.append(replace(found, name=_unique_name(found.name, taken)))
                continue
            if text is None:
                raise ValueError(f"dataset {item!r}: give 'path' (ROOT:CATEGORY or a folder) or kind='folder' with folders")
        else:
            text = str(item)
        name_override = options.get("name")
        if re.match(r"^[A-Za-z0-9_.-]+=", text) and not text.startswith("folder:"):
            name_override, text = text.split("=", 1)
        cap = options.get("max_train", max_train)
        if text.startswith("folder:"):
            fields: dict[str, Any] = {"defects": []}
            for part in text[len("folder:"):].split(","):
                key, sep, value = part.partition("=")
                if not sep:
                    raise ValueError(f"dataset {text!r}: expected key=value parts (train=, good=, defect=, masks=, name=)")
                key = key.strip()
                if key == "defect":
                    fields["defects"].append(value)
                elif key in ("train", "good", "masks", "name"):
                    fields[key] = value
                else:
                    raise ValueError(f"dataset {text!r}: unknown key {key!r} (use train, good, defect, masks, name)")
            if name_override:
                fields["name"] = name_override
            found = _folder_spec({**fields, "max_train": cap}, data_root, max_train)
            specs.append(replace(found, name=_unique_name(found.name, taken)))
            continue
        root_text, sep, category = text.rpartition(":")
        if sep and root_text and "/" not in category and _resolve_path(root_text, data_root).joinpath(category).is_dir():
            root = _resolve_path(root_text, data_root)
            specs.append(DatasetSpec(_unique_name(name_override or category, taken), "mvtec", str(root), category,
                                     max_train=cap))
            continue
        path = _resolve_path(text, data_root)
        if (path / "train").is_dir():
            specs.append(DatasetSpec(_unique_name(name_override or path.name, taken), "mvtec", str(path), None,
                                     max_train=cap))
            continue
        children = sorted(p for p in path.iterdir() if (p / "train").is_dir()) if path.is_dir() else []
        if not children:
            hint = "it does not exist" if not path.exists() else "it has no train/ folder and no sub-folder with one"
            raise ValueError(f"dataset {text!r} (resolved to {path}): {hint}; give ROOT:CATEGORY, a category folder "
                             "with train/ and test/, a parent of such folders, or folder:train=...,good=...,defect=...")
        for child in children:
            name = f"{name_override}/{child.name}" if name_override else child.name
            specs.append(DatasetSpec(_unique_name(name, taken), "mvtec", str(path), child.name, max_train=cap))
    return specs


def _folder_spec(fields: dict[str, Any], data_root: Path | None, max_train: int | None) -> DatasetSpec:
    def resolve(value: Any) -> str | None:
        return None if value in (None, "") else str(_resolve_path(value, data_root))

    defects = fields.get("defects", fields.get("defect", []))
    defects = [defects] if isinstance(defects, str) else list(defects)
    good = resolve(fields.get("good"))
    name = fields.get("name") or (Path(good).parent.name if good else "folder")
    return DatasetSpec(str(name), "folder", "", None, resolve(fields.get("train")), good,
                       tuple(resolve(d) or "" for d in defects), resolve(fields.get("masks")),
                       fields.get("max_train", max_train))


def resolve_models(tokens: list[str], exclude: list[str] | None = None) -> list[str]:
    """Detector tokens → detector names, in order, without duplicates.

    A token is ``all``, a category (``memory_based``), a glob (``*ae``), a name (``patchcore`` or
    ``ad-memory:patchcore``) or an importable ``package.module:ClassName`` that is not registered
    (useful to benchmark a detector before it is packaged).
    """
    from adcore.plugins import get_host

    registry = get_host().detectors
    categories = {entry.category for entry in registry}
    names: list[str] = []
    for token in tokens:
        for part in (p.strip() for p in str(token).split(",")):
            if not part:
                continue
            if part == "all":
                found = [e.name for e in sorted(registry, key=_category_order)]
            elif part in categories and part not in registry:
                found = [e.name for e in registry.select("*", part)]
            elif any(ch in part for ch in "*?["):
                found = [e.name for e in registry.select(part)]
                if not found:
                    raise ValueError(f"--model {part!r} matches no registered detector ({', '.join(registry.names())})")
            elif part in registry:
                found = [registry.get(part).name]
            elif _looks_like_target(part):
                found = [part]
            else:
                registry.get(part)  # raises ModelNotFoundError naming close matches and what to install
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
    from adcore.plugins import get_host

    registry = get_host().detectors
    return dict(registry.get(detector).card) if detector in registry else {}


def load_config(path: str | Path) -> tuple[dict[str, Any], Path]:
    """Read a JSON or TOML benchmark configuration; returns it and the folder its relative paths start from.

    Relative paths in a configuration are resolved from the repository that holds it (the nearest
    folder above it with a ``.git``), or from the configuration's own folder outside a repository,
    so a committed configuration works from any working directory.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"benchmark configuration {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            config = tomllib.loads(text)
        else:
            config = json.loads(text)
    except Exception as exc:  # noqa: BLE001 - any parse error becomes one message naming the file
        raise ValueError(f"cannot parse benchmark configuration {path}: {exc}") from exc
    if not isinstance(config, dict):
        raise ValueError(f"benchmark configuration {path} must hold an object/table at the top level")
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
             "datasets", "input_size", "seed", "time_limit", "batch_size", "threads", "jobs", "quick", "max_train",
             "command", "lock"}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"benchmark configuration: unknown key(s) {unknown}; known: {sorted(known)}")

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
    detectors = resolve_models(list(model_tokens), list(args.exclude or config.get("exclude", [])))
    if not detectors:
        raise ValueError("no detector to benchmark: install a plugin (adcore list shows what is registered) or fix --model")

    dataset_items = args.dataset or config.get("datasets") or []
    if not dataset_items:
        raise ValueError("no dataset: pass --dataset ROOT:CATEGORY (or a category folder) or 'datasets' in --config")
    max_train = args.max_train if args.max_train is not None else config.get("max_train")
    datasets = parse_datasets(list(dataset_items), data_root, max_train=max_train)

    quick = bool(args.quick or config.get("quick", False))
    input_size = args.input_size if args.input_size is not None else config.get("input_size")
    seed = args.seed if args.seed is not None else config.get("seed")
    config_params = config.get("params", {}) or {}
    cli_params = [parse_param(text) for text in args.param or []]
    for name, _, _ in cli_params:
        if name is not None and name not in detectors:
            raise ValueError(f"--param for {name!r}, which is not in this benchmark's detectors ({', '.join(detectors)})")
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
        scopes = ["*", name] + ([f"*@{dataset}", f"{name}@{dataset}"] if dataset is not None else [])
        for scope in scopes:
            params.update(config_params.get(scope, {}) or {})
        for target in (None, name):
            params.update({key: value for scope, key, value in cli_params if scope == target})
        return params

    per_detector = {name: params_for(name, None) for name in detectors}
    runs = []
    for dataset in datasets:
        for name in detectors:
            limit = limits.get(f"{name}@{dataset.name}", limits.get(f"*@{dataset.name}", limits.get(name, limits["*"])))
            runs.append(RunSpec(name, dataset, params_for(name, dataset.name), batch_size, limit))
    for key in list(config_params) + [k for k in limits if "@" in k]:
        if "@" in key and key.split("@", 1)[1] not in {d.name for d in datasets}:
            warnings.warn(f"benchmark configuration: {key!r} names a data set that is not in this benchmark", stacklevel=2)

    from adcore.plugins import get_host

    notes = config.get("notes", [])
    settings = {"quick": quick, "input_size": input_size, "seed": seed, "batch_size": batch_size,
                "time_limits": limits, "params": per_detector,
                "dataset_params": {k: v for k, v in config_params.items() if "@" in k}, "data_root": str(data_root) if data_root else None,
                "max_train": max_train, "command": config.get("command") or _command_line()}
    return BenchmarkPlan(runs=runs, datasets=datasets, detectors=detectors, out=out,
                         threads=args.threads if args.threads is not None else config.get("threads"),
                         jobs=int(args.jobs or config.get("jobs", 1)), published=published,
                         title=config.get("title", "adcore benchmark"), notes=[notes] if isinstance(notes, str) else list(notes),
                         report=report, figures=figures, settings=settings,
                         plugin_failures=[f.as_dict() for f in get_host().failures],
                         lock=cli_path(args.lock) or (Path(config["lock"]) if config.get("lock") else None))


def _command_line() -> str:
    argv = [a for a in sys.argv if a not in ("--report-only", "--dry-run")]
    program = Path(argv[0]).name if argv else "adcore"
    head = "adcore" if program == "adcore" else "python -m adcore.benchmark" if program in ("benchmark.py", "-m") else program
    return " ".join([head, *argv[1:]])


# ---------------------------------------------------------------------------------------------
# The results file
# ---------------------------------------------------------------------------------------------
class ResultStore:
    """``results.jsonl``: one JSON record per finished run, newest last; every write atomic."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def records(self) -> list[dict[str, Any]]:
        """Every readable record; damaged lines (e.g. from an editor or a torn copy) are skipped with a warning."""
        if not self.path.is_file():
            return []
        records, damaged = [], 0
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                damaged += 1
                continue
            if isinstance(record, dict) and "key" in record:
                records.append(record)
            else:
                damaged += 1
        if damaged:
            warnings.warn(f"{self.path}: skipped {damaged} damaged line(s); those runs will be redone", stacklevel=2)
        return records

    def latest(self) -> dict[str, dict[str, Any]]:
        """Run key → its newest record."""
        return {record["key"]: record for record in self.records()}

    def append(self, record: dict[str, Any]) -> None:
        """Add ``record``: write every readable record plus this one to a temporary file, fsync, rename."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # two benchmark processes on the same folder do not lose records
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                lines = [json.dumps(r, sort_keys=True) for r in self.records()]
            lines.append(json.dumps(record, sort_keys=True, default=_json_default))
            _atomic_write(self.path, "\n".join(lines) + "\n")


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    return str(value)


def _atomic_write(path: Path, text: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(text.encode("utf-8") if isinstance(text, str) else text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _clean_float(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ---------------------------------------------------------------------------------------------
# Running: one subprocess per pair
# ---------------------------------------------------------------------------------------------
@dataclass
class RunOutcome:
    """What :func:`run_benchmark` did."""

    launched: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    statuses: dict[str, str] = field(default_factory=dict)
    interrupted: bool = False


class _Running:
    """One worker process, its stderr pump and its deadline."""

    def __init__(self, run: RunSpec, process: subprocess.Popen, spec_path: Path, result_path: Path, echo: bool) -> None:
        self.run, self.process, self.spec_path, self.result_path = run, process, spec_path, result_path
        self.lock: Any = None
        self.started = time.monotonic()
        self.started_at = _now()
        self.tail: collections.deque[bytes] = collections.deque(maxlen=64)
        self.pump = threading.Thread(target=self._pump, args=(echo,), daemon=True)
        self.pump.start()

    def _pump(self, echo: bool) -> None:
        stream = self.process.stdout
        assert stream is not None
        sink = getattr(sys.stderr, "buffer", None)
        while True:
            chunk = stream.read1(4096) if hasattr(stream, "read1") else stream.read(4096)
            if not chunk:
                break
            self.tail.append(chunk)
            if echo and sink is not None:
                try:
                    sink.write(chunk)
                    sink.flush()
                except (OSError, ValueError):
                    pass

    def tail_text(self, lines: int = 20) -> str:
        text = b"".join(self.tail).decode("utf-8", errors="replace")
        parts = [p.rstrip() for p in re.split(r"[\r\n]+", text) if p.strip()]
        return "\n".join(parts[-lines:])

    def kill(self) -> None:
        """Kill the worker's whole process group (it may have started children of its own)."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _plugin_versions() -> dict[str, str]:
    import adcore
    from adcore.plugins import get_host

    versions = {"adcore": adcore.__version__}
    for info in get_host().plugins:
        versions.setdefault(info.distribution, info.version)
    return versions


def _base_record(run: RunSpec) -> dict[str, Any]:
    from adcore.plugins import get_host

    registry = get_host().detectors
    entry = registry.get(run.detector) if run.detector in registry else None
    params = run.params
    plugin, version = (entry.distribution, entry.version) if entry else _external_plugin(run.detector)
    return {
        "format": RECORD_FORMAT, "key": run.key, "detector": run.detector, "dataset": run.dataset.name,
        "dataset_spec": asdict(run.dataset), "params": params, "batch_size": run.batch_size,
        "time_limit": run.time_limit, "seed": params.get("seed", 0),
        "input_size": params.get("input_size", (entry.card.get("input_size") if entry else None)),
        "backbone": params.get("backbone", entry.card.get("default_backbone") if entry else None),
        "plugin": plugin, "plugin_version": version,
        "versions": _plugin_versions(),
    }


def _launch(run: RunSpec, plan: BenchmarkPlan, env: dict[str, str] | None, echo: bool) -> _Running:
    runs_dir = plan.out / RUNS_DIR
    runs_dir.mkdir(parents=True, exist_ok=True)
    spec_path = runs_dir / f"{run.slug}.spec.json"
    result_path = runs_dir / f"{run.slug}.result.json"
    result_path.unlink(missing_ok=True)
    spec = {"run": {"detector": run.detector, "dataset": asdict(run.dataset), "params": run.params,
                    "batch_size": run.batch_size, "time_limit": run.time_limit},
            "record": _base_record(run), "threads": plan.threads,
            "result_path": str(result_path.resolve()), "artifacts_path": str((runs_dir / f"{run.slug}.npz").resolve())}
    _atomic_write(spec_path, json.dumps(spec, indent=1, default=_json_default))
    child_env = dict(os.environ if env is None else env)
    if plan.threads:
        child_env.setdefault("OMP_NUM_THREADS", str(plan.threads))
    process = subprocess.Popen([sys.executable, "-m", "adcore.benchmark", "--worker", str(spec_path.resolve())],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               env=child_env, start_new_session=True)
    return _Running(run, process, spec_path, result_path, echo)


def _finish(running: _Running, timed_out: bool) -> dict[str, Any]:
    """The record of a finished, crashed or killed worker."""
    running.pump.join(timeout=5)
    wall = time.monotonic() - running.started
    record: dict[str, Any] | None = None
    if not timed_out and running.result_path.is_file():
        try:
            record = json.loads(running.result_path.read_text(encoding="utf-8"))
        except ValueError:
            record = None
    if record is None:
        record = _base_record(running.run)
        stage_path = running.result_path.with_suffix(".stage")
        stage = stage_path.read_text().strip() if stage_path.is_file() else "startup"
        stage_path.unlink(missing_ok=True)
        if timed_out:
            record.update(status="timeout", error={
                "type": "TimeLimitExceeded", "stage": stage,
                "message": f"killed after {wall:.0f} s: over its time limit of {running.run.time_limit:g} s",
                "output_tail": running.tail_text()})
        else:
            code = running.process.returncode
            reason = f"killed by signal {-code} ({signal.Signals(-code).name})" if code is not None and code < 0 else \
                f"exited with status {code}"
            hint = " (SIGKILL without a time-out is usually the kernel's out-of-memory killer)" if code == -9 else ""
            record.update(status="crashed", error={"type": "WorkerCrashed", "stage": stage,
                                                   "message": f"the worker process {reason} without a result{hint}",
                                                   "output_tail": running.tail_text()})
    record.update(wall_seconds=round(wall, 2), started_at=running.started_at, finished_at=_now(),
                  time_limit=running.run.time_limit)
    running.spec_path.unlink(missing_ok=True)
    running.result_path.unlink(missing_ok=True)
    running.result_path.with_suffix(".stage").unlink(missing_ok=True)
    return record


def run_benchmark(plan: BenchmarkPlan, *, fresh: bool = False, retry_failed: bool = False,
                  env: dict[str, str] | None = None, echo: bool = True, poll_seconds: float = 0.2) -> RunOutcome:
    """Run every pending pair of ``plan`` (``jobs`` at a time), appending each record as it finishes.

    Pending = no record yet (all of them with ``fresh``; also failed/timed-out/crashed ones with
    ``retry_failed``). Ctrl-C kills the running workers; records already written stay.
    """
    from adcore.progress import progress_enabled

    store = ResultStore(plan.results_path)
    done = {} if fresh else store.latest()
    outcome = RunOutcome()
    pending: list[RunSpec] = []
    for run in plan.runs:
        previous = done.get(run.key)
        if previous is not None and not (retry_failed and previous.get("status") != "ok"):
            outcome.skipped.append(run.key)
            outcome.statuses[run.key] = previous.get("status", "ok")
        else:
            pending.append(run)
    total = len(plan.runs)
    bar = None
    if echo and progress_enabled():
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=total - len(pending), desc="benchmark", unit="run", position=0,
                   dynamic_ncols=True, leave=True)
    say = (bar.write if bar is not None else lambda text: print(text, file=sys.stderr)) if echo else (lambda text: None)
    if outcome.skipped:
        say(f"adcore benchmark: {len(outcome.skipped)} of {total} run(s) already recorded in {plan.results_path} "
            "(skipped; --fresh redoes them, --retry-failed redoes the failed ones)")
    queue = list(pending)
    running: list[_Running] = []
    number = total - len(pending)
    previous_handler = None
    if threading.current_thread() is threading.main_thread():
        # `kill PID` (SIGTERM) of the benchmark must not leave a worker running on its own: treat it as Ctrl-C
        def on_term(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt

        previous_handler = signal.signal(signal.SIGTERM, on_term)
    try:
        while queue or running:
            while queue and len(running) < (1 if plan.lock else max(1, plan.jobs)):
                run = queue.pop(0)
                number += 1
                lock = _acquire(plan.lock, say) if plan.lock else None
                say(f"▶ [{number}/{total}] {run.detector} × {run.dataset.name} (limit {run.time_limit:g} s)")
                try:
                    item = _launch(run, plan, env, echo)
                except BaseException:
                    if lock is not None:
                        lock.close()
                    raise
                item.lock = lock
                running.append(item)
                outcome.launched.append(run.key)
            time.sleep(poll_seconds)
            for item in list(running):
                elapsed = time.monotonic() - item.started
                timed_out = item.process.poll() is None and elapsed > item.run.time_limit
                if timed_out:
                    item.kill()
                if item.process.poll() is None:
                    continue
                running.remove(item)
                if item.lock is not None:
                    item.lock.close()  # closing the file releases the flock
                record = _finish(item, timed_out)
                store.append(record)
                outcome.statuses[record["key"]] = record["status"]
                say(_summary_line(record))
                if bar is not None:
                    bar.update(1)
    except KeyboardInterrupt:
        outcome.interrupted = True
        for item in running:
            item.kill()
            item.spec_path.unlink(missing_ok=True)
            if item.lock is not None:
                item.lock.close()
        say("adcore benchmark: interrupted; finished runs are kept in "
            f"{plan.results_path}, run the same command again to resume")
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
        if bar is not None:
            bar.close()
    return outcome


def _acquire(path: Path, say: Any) -> Any:
    """Open and ``flock`` ``path`` exclusively, saying so when someone else holds it."""
    handle = open(path, "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        say(f"  waiting for the measurement lock {path} (another measurement is running)")
        fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


def _summary_line(record: dict[str, Any]) -> str:
    head = f"  {record['detector']} × {record['dataset']}: {record['status']}"
    if record["status"] == "ok":
        parts = [f"{label} {_fmt(record.get(key), fmt)}" for key, label, fmt in
                 [("image_auroc", "img AUROC", ".3f"), ("pixel_auroc", "px AUROC", ".3f"), ("fit_seconds", "fit s", ".1f"),
                  ("ms_per_image_batch1", "ms/img", ".1f"), ("peak_rss_mb", "RSS MB", ".0f")]]
        return f"{head} ({', '.join(parts)}) in {record.get('wall_seconds', 0):.0f} s"
    error = record.get("error") or {}
    return f"{head}: {error.get('type', '?')}: {str(error.get('message', ''))[:300]}"


# ---------------------------------------------------------------------------------------------
# The worker (runs in its own process)
# ---------------------------------------------------------------------------------------------
def _stage_from_traceback(tb: Any, tracked: str = "evaluate") -> str:
    names = [frame.name for frame in traceback.extract_tb(tb)]
    files = [Path(frame.filename).name for frame in traceback.extract_tb(tb)]
    for marker, stage in (("measure_latency", "latency"), ("collect_predictions", "predict"), ("calibrate", "calibrate"),
                          ("fit", "fit")):
        if marker in names:
            return stage
    if "metrics.py" in files:
        return "metrics"
    return tracked or "evaluate"


def _build_detector(name: str, params: dict[str, Any]) -> Any:
    from adcore.factory import get_model
    from adcore.plugins import get_host

    if name in get_host().detectors:
        return get_model(name, **params)
    from adcore.registry import DetectorEntry

    return DetectorEntry(name, name, "external").load()(**params)


def _external_plugin(name: str) -> tuple[str | None, str | None]:
    """Distribution and version that provide an unregistered ``module:Class`` target."""
    from importlib import metadata

    top = name.split(":", 1)[0].split(".")[0]
    distributions = metadata.packages_distributions().get(top, [])
    if not distributions:
        return f"{top} (not an installed distribution)", None
    try:
        return distributions[0], metadata.version(distributions[0])
    except metadata.PackageNotFoundError:
        return distributions[0], None


def _sample_indices(test_set: Any) -> list[int]:
    """The same few test images for every detector: first of each defect type (round-robin), then one good."""
    samples = getattr(test_set, "samples", None)
    labels = [int(s[1]) for s in samples] if samples is not None else [int(test_set[i]["label"]) for i in range(len(test_set))]
    types = [str(s[3]) for s in samples] if samples is not None else ["defect" if v else "good" for v in labels]
    by_type: dict[str, list[int]] = {}
    for index, (label, kind) in enumerate(zip(labels, types, strict=True)):
        if label:
            by_type.setdefault(kind, []).append(index)
    chosen: list[int] = []
    depth = 0
    while len(chosen) < SAMPLE_IMAGES - 1 and any(depth < len(v) for v in by_type.values()):
        for kind in sorted(by_type):
            if depth < len(by_type[kind]) and len(chosen) < SAMPLE_IMAGES - 1:
                chosen.append(by_type[kind][depth])
        depth += 1
    good = [i for i, label in enumerate(labels) if not label]
    if good:
        chosen.append(good[0])
    return chosen


def _save_artifacts(path: Path, test_set: Any, outputs: dict[str, Any], threshold: float | None) -> None:
    import numpy as np
    import torch
    import torch.nn.functional as F

    indices = _sample_indices(test_set)
    side = SAMPLE_SIDE
    images, masks, maps = [], [], []
    for index in indices:
        item = test_set[index]
        images.append(F.interpolate(item["image"][None], size=(side, side), mode="bilinear", antialias=True,
                                    align_corners=False)[0])
        masks.append(F.interpolate(item["mask"][None, None].float(), size=(side, side), mode="nearest")[0, 0])
        maps.append(F.interpolate(outputs["maps"][index][None, None].float(), size=(side, side), mode="bilinear",
                                  align_corners=False)[0, 0])
    samples = getattr(test_set, "samples", None)
    defect_types = [str(s[3]) for s in samples] if samples is not None else ["" for _ in range(len(test_set))]
    stack = lambda items, shape: torch.stack(items).numpy() if items else np.zeros(shape)  # noqa: E731
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        scores=outputs["scores"].float().numpy(), labels=outputs["labels"].numpy().astype(np.int8),
        defect_types=np.array(defect_types), paths=np.array([str(p) for p in outputs["paths"]]),
        threshold=np.array(np.nan if threshold is None else threshold, dtype=np.float64),
        sample_index=np.array(indices, dtype=np.int64),
        sample_images=(stack(images, (0, 3, side, side)).transpose(0, 2, 3, 1) * 255).round().clip(0, 255).astype(np.uint8),
        sample_masks=stack(masks, (0, side, side)) > 0.5,
        sample_maps=stack(maps, (0, side, side)).astype(np.float32),
    )
    _atomic_write(path, buffer.getvalue())


def _track_stages(detector: Any, stage_path: Path) -> None:
    """Write the current stage (fit → calibrate → evaluate) to ``stage_path`` so a killed run can say where it was."""

    def mark(stage: str) -> None:
        try:
            stage_path.write_text(stage)
        except OSError:
            pass

    for name, after in (("fit", None), ("calibrate", "evaluate")):
        original = getattr(detector, name, None)
        if original is None:
            continue

        def wrapped(*args: Any, _original: Any = original, _name: str = name, _after: str | None = after,
                    **kwargs: Any) -> Any:
            mark(_name)
            result = _original(*args, **kwargs)
            if _after:
                mark(_after)
            return result

        try:
            setattr(detector, name, wrapped)
        except AttributeError:
            return


def _worker(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    record: dict[str, Any] = dict(spec["record"])
    run = spec["run"]
    stage = "setup"
    stage_path = Path(spec["result_path"]).with_suffix(".stage")
    stage_path.write_text("startup")
    started = time.perf_counter()
    try:
        import torch

        if spec.get("threads"):
            torch.set_num_threads(int(spec["threads"]))
        record["torch_threads"] = torch.get_num_threads()
        record["torch_version"] = torch.__version__
        stage = "build"
        detector = _build_detector(run["detector"], run["params"])
        effective = detector.get_params() if hasattr(detector, "get_params") else dict(run["params"])
        record["effective_params"] = json.loads(json.dumps(effective, default=_json_default))
        record["seed"] = effective.get("seed", record.get("seed"))
        record["backbone"] = effective.get("backbone", record.get("backbone"))
        from adcore.inputs import to_size

        size = to_size(effective.get("input_size", record.get("input_size") or 256))
        record["input_size"] = size[0] if size[0] == size[1] else list(size)
        stage = "data"
        stage_path.write_text(stage)
        dataset = DatasetSpec(**{**run["dataset"], "defects": tuple(run["dataset"].get("defects", ()))})
        train, test = dataset.load(size)
        stage = "evaluate"
        _track_stages(detector, stage_path)
        from adcore.evaluation import evaluate_detector

        result, outputs = evaluate_detector(detector, train, test, batch_size=int(run["batch_size"]))
        record.update({key: _clean_float(value) for key, value in result.as_dict().items()})
        record["calibration_images"] = len(train) - result.train_images  # held out of train by evaluate_detector
        stage = "artifacts"
        _save_artifacts(Path(spec["artifacts_path"]), test, outputs, result.threshold)
        record["artifacts"] = str(Path(RUNS_DIR) / Path(spec["artifacts_path"]).name)
        record["status"] = "ok"
    except Exception as exc:  # noqa: BLE001 - every failure of a detector is data for the table
        if stage == "evaluate":
            stage = _stage_from_traceback(exc.__traceback__, stage_path.read_text().strip())
        record["status"] = "error"
        record["error"] = {"type": type(exc).__name__, "message": str(exc)[:2000], "stage": stage,
                           "traceback": "".join(traceback.format_exception(exc))[-4000:]}
    from adcore.evaluation import peak_rss_mb

    record["peak_rss_mb"] = round(peak_rss_mb(), 1)
    record["worker_seconds"] = round(time.perf_counter() - started, 2)
    _atomic_write(Path(spec["result_path"]), json.dumps(record, default=_json_default))
    return 0


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------
def collect_rows(plan: BenchmarkPlan) -> list[dict[str, Any]]:
    """One row per planned pair (dataset-major, in plan order): its newest record, or ``missing``."""
    latest = ResultStore(plan.results_path).latest()
    rows = []
    for run in plan.runs:
        record = latest.get(run.key)
        if record is None:
            record = {**_base_record(run), "status": "missing"}
        rows.append(record)
    return rows


def _fmt(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if fmt == "s":
        if isinstance(value, (list, tuple)):
            return "×".join(str(v) for v in value)
        return str(value)
    try:
        return format(float(value), fmt)
    except (TypeError, ValueError):
        return str(value)


def _csv_row(row: dict[str, Any]) -> dict[str, Any]:
    error = row.get("error") or {}
    flat = {key: row.get(key) for key in CSV_COLUMNS}
    flat.update(error_type=error.get("type"), error_message=(error.get("message") or "").replace("\n", " ")[:500] or None,
                error_stage=error.get("stage"), adcore_version=(row.get("versions") or {}).get("adcore"),
                params=json.dumps(row.get("params", {}), sort_keys=True))
    if isinstance(flat.get("input_size"), (list, tuple)):
        flat["input_size"] = "x".join(str(v) for v in flat["input_size"])
    return flat


def markdown_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]] | None = None) -> str:
    """The results table in GitHub Markdown (``—`` where a value is undefined or the run did not finish)."""
    columns = columns or TABLE_COLUMNS
    lines = ["| " + " | ".join(header for _, header, _ in columns) + " |",
             "|" + "|".join("---" if fmt == "s" else "---:" for _, _, fmt in columns) + "|"]
    for row in rows:
        cells = []
        for key, _, fmt in columns:
            value = row.get(key)
            if key == "plugin" and value:
                value = f"{value} {row.get('plugin_version') or ''}".strip()
            cells.append(_fmt(value, fmt).replace("|", "\\|"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summarise(rows: list[dict[str, Any]], detectors: list[str], published: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-detector means over the datasets where the run finished, beside the published MVTec AD numbers."""
    summary = []
    for name in detectors:
        mine = [r for r in rows if r["detector"] == name]
        ok = [r for r in mine if r.get("status") == "ok"]

        def mean(key: str, ok: list[dict[str, Any]] = ok) -> float | None:
            values = [r[key] for r in ok if isinstance(r.get(key), (int, float))]
            return sum(values) / len(values) if values else None

        def median(key: str, ok: list[dict[str, Any]] = ok) -> float | None:
            values = sorted(r[key] for r in ok if isinstance(r.get(key), (int, float)))
            return values[len(values) // 2] if values else None

        paper = published.get(name, {}) if isinstance(published, dict) else {}
        summary.append({
            "detector": name, "finished": f"{len(ok)}/{len(mine)}",
            "image_auroc": mean("image_auroc"), "pixel_auroc": mean("pixel_auroc"), "aupro": mean("aupro"),
            "fit_seconds": mean("fit_seconds"), "ms_per_image_batch1": median("ms_per_image_batch1"),
            "peak_rss_mb": max((r["peak_rss_mb"] for r in ok if r.get("peak_rss_mb")), default=None),
            "published_image_auroc": paper.get("image_auroc"), "published_pixel_auroc": paper.get("pixel_auroc"),
            "published_setting": paper.get("setting") or paper.get("backbone"),
        })
    return summary


SUMMARY_COLUMNS = [
    ("detector", "detector", "s"), ("finished", "runs ok", "s"), ("image_auroc", "mean img AUROC", ".3f"),
    ("pixel_auroc", "mean px AUROC", ".3f"), ("aupro", "mean AUPRO", ".3f"), ("fit_seconds", "mean fit s", ".1f"),
    ("ms_per_image_batch1", "median ms/img bs1", ".1f"), ("peak_rss_mb", "max RSS MB", ".0f"),
    ("published_image_auroc", "paper MVTec img AUROC", ".3f"), ("published_pixel_auroc", "paper MVTec px AUROC", ".3f"),
    ("published_setting", "paper setting", "s"),
]


def machine_info() -> dict[str, Any]:
    """The machine the runs are on (CPU model, cores, memory, OS, Python, torch)."""
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cpu_count": os.cpu_count(), "hostname": platform.node()}
    try:
        info["usable_cores"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_gb"] = round(int(line.split()[1]) / 1024 / 1024, 1)
                break
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        pass
    return info


def write_tables(plan: BenchmarkPlan, rows: list[dict[str, Any]] | None = None) -> dict[str, Path]:
    """``results.md``, ``results.csv`` and ``results.json`` in ``plan.out``."""
    rows = collect_rows(plan) if rows is None else rows
    plan.out.mkdir(parents=True, exist_ok=True)
    paths = {"md": plan.out / "results.md", "csv": plan.out / "results.csv", "json": plan.out / "results.json"}
    versions = _plugin_versions()
    header = [f"# {plan.title}: results", "",
              f"Generated {_now()} by `{plan.settings.get('command', '')}`.", "",
              "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".", "",
              markdown_table(rows), ""]
    _atomic_write(paths["md"], "\n".join(header))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(_csv_row(row))
    _atomic_write(paths["csv"], buffer.getvalue())
    document = {"title": plan.title, "generated_at": _now(), "machine": machine_info(), "versions": versions,
                "settings": plan.settings, "datasets": [asdict(d) for d in plan.datasets], "detectors": plan.detectors,
                "plugin_failures": plan.plugin_failures,
                "summary": summarise(rows, plan.detectors, plan.published), "runs": rows}
    _atomic_write(paths["json"], json.dumps(document, indent=1, default=_json_default))
    return paths


def write_report(plan: BenchmarkPlan, rows: list[dict[str, Any]], figures: list[Path], path: Path) -> Path:
    """A Markdown page: settings, machine, versions, summary with published numbers, full table, failures, figures."""
    path.parent.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    versions = _plugin_versions()
    counts = collections.Counter(r.get("status") for r in rows)
    lines = [f"# {plan.title}", ""]
    for note in plan.notes:
        lines += [note, ""]
    lines += ["## How it was run", "", "```bash", plan.settings.get("command", ""), "```", "",
              f"- Machine: {machine.get('cpu', 'unknown CPU')}, {machine.get('usable_cores', machine.get('cpu_count'))} "
              f"usable cores, {machine.get('memory_gb', '?')} GB RAM; {machine.get('platform')}; Python "
              f"{machine.get('python')}, torch {machine.get('torch', '?')}.",
              "- Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
              f"- Every run: fit on the good training images less a held-out fifth → threshold calibrated on that "
              f"held-out fifth (1 % false-positive target; no test data) → test-set metrics; its own subprocess; "
              f"time limits "
              f"{_limits_text(plan.settings.get('time_limits', {}))}; batch size {plan.settings.get('batch_size')}; "
              f"input size {plan.settings.get('input_size') or 'each detector default'}; seed "
              f"{plan.settings.get('seed') if plan.settings.get('seed') is not None else 'each detector default (0)'}.",
              f"- Runs: {len(rows)} planned; " + ", ".join(f"{counts[s]} {s}" for s in STATUSES if counts[s]) + "."]
    started = sorted(r["started_at"] for r in rows if r.get("started_at"))
    finished = sorted(r["finished_at"] for r in rows if r.get("finished_at"))
    if started and finished:
        lines.append(f"- Run window: first run started {started[0]}, last run finished {finished[-1]} (UTC).")
    lines.append("")
    params = plan.settings.get("params", {})
    if params:
        lines += ["Parameters per detector (everything else at the detector's defaults):", ""]
        lines += [f"- `{name}`: `{json.dumps(p, sort_keys=True)}`" for name, p in params.items()]
        lines.append("")
    overrides = plan.settings.get("dataset_params", {})
    if overrides:
        lines += ["Budgets for single data sets (`DETECTOR@DATASET`, `*` = every detector), applied on top:", ""]
        lines += [f"- `{key}`: `{json.dumps(p, sort_keys=True)}`" for key, p in overrides.items()]
        lines.append("")
    lines += ["Datasets:", ""] + [f"- {_dataset_line(d, rows)}" for d in plan.datasets] + [""]
    if plan.plugin_failures:
        lines += ["Plugins that failed to load (their detectors are absent):", ""]
        lines += [f"- {f['distribution']} {f['version']} at stage {f['stage']}: {f['error']}" for f in plan.plugin_failures]
        lines.append("")
    lines += ["## Summary per detector", "",
              "Means over the datasets where the run finished (`runs ok`). The `paper` columns are the "
              "method's own published MVTec AD averages over its 15 categories, with the paper's larger backbone "
              "and resolution: context for the order of magnitude, not the same test.", "",
              markdown_table(summarise(rows, plan.detectors, plan.published), SUMMARY_COLUMNS), ""]
    sources = [(name, entry) for name, entry in (plan.published or {}).items() if name in plan.detectors
               and isinstance(entry, dict) and entry.get("source")]
    if sources:
        lines += ["Published numbers from:", ""]
        lines += [f"- `{name}`: {entry['source']}" + (f" ({entry['note']})" if entry.get("note") else "")
                  for name, entry in sources]
        lines.append("")
    lines += ["## Image AUROC per data set", "", _pivot(rows, plan, "image_auroc"), "",
              "Pixel AUROC:", "", _pivot(rows, plan, "pixel_auroc"), ""]
    lines += ["## All runs", "", markdown_table(rows), ""]
    failed = [r for r in rows if r.get("status") not in ("ok",)]
    if failed:
        lines += ["## Runs that did not finish", "", "| dataset | detector | status | stage | error |", "|---|---|---|---|---|"]
        for r in failed:
            error = r.get("error") or {}
            message = (error.get("message") or ("not run yet" if r.get("status") == "missing" else "")).replace("\n", " ")
            if r.get("plugin"):
                message += f" [{r['plugin']} {r.get('plugin_version') or ''}]".rstrip()
            cells = [r["dataset"], r["detector"], r["status"], error.get("stage", "—"),
                     f"{error.get('type') + ': ' if error.get('type') else ''}{message[:300]}"]
            lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
        lines.append("")
    if figures:
        from adcore.plots import figure_caption

        lines += ["## Figures", ""]
        slugs = {d.name: re.sub(r"[^A-Za-z0-9_.-]+", "-", d.name).strip("-") for d in plan.datasets}
        general = [f for f in figures if not any(f.stem.endswith(f"_{slug}") for slug in slugs.values())]
        groups = [("Overview", general)] + [(name, [f for f in figures if f.stem.endswith(f"_{slug}")])
                                            for name, slug in slugs.items()]
        for heading, members in groups:
            if not members:
                continue
            lines += [f"### {heading}", ""]
            for figure in members:
                relative = os.path.relpath(figure, path.parent)
                lines += [f"![{figure.stem}]({relative})", "", f"*{figure_caption(figure.stem)}*", ""]
    lines += [USAGE_MARKDOWN]
    _atomic_write(path, "\n".join(lines))
    return path


USAGE_MARKDOWN = """## Running `adcore benchmark` yourself

```bash
adcore benchmark --model patchcore padim --param patchcore.coreset_ratio=0.05 \\
    --dataset /data/mvtec:bottle /data/mvtec:cable --time-limit 900 --out results/mine
adcore benchmark --model all --quick --dataset /data/mvtec --input-size 128     # smoke run, every category
adcore benchmark --config benchmarks/config.json --report-only                  # redraw tables and figures
```

- Detectors: names, `all`, a category (`memory_based`), a glob (`*_ae`) or an importable `package.module:Class`.
  Parameters: `--param DETECTOR.KEY=VALUE` (JSON values) or `KEY=VALUE` for all; in a JSON/TOML `--config`,
  `params` maps `DETECTOR`, `*`, `DETECTOR@DATASET` or `*@DATASET` to parameters.
- Data sets: `ROOT:CATEGORY`, a category folder, a parent of category folders (every category), or
  `folder:train=DIR,good=DIR,defect=DIR,masks=DIR` for generic folders; `--data-root` anchors relative paths.
- Every pair runs in its own process (`--time-limit SECONDS` or `DETECTOR=SECONDS`, start-up included); a
  failure or time-out is recorded and the rest continue. Each finished run is added to `OUT/results.jsonl`
  at once; running the same command again skips recorded pairs (`--retry-failed`, `--fresh`).
- Outputs: `OUT/results.md|csv|json`, `OUT/figures/*.png` (or `--figures`), `--report PAGE.md`, and per run
  `OUT/runs/*.npz` (scores, labels, threshold, sample maps) from which the figures are drawn.
- `--lock FILE` takes a file lock around each run so other measurements on a shared machine interleave
  between runs instead of during one; `--jobs N` runs N pairs at once (timings are then not comparable).
"""


def _pivot(rows: list[dict[str, Any]], plan: BenchmarkPlan, key: str) -> str:
    """Detectors × data sets of one metric (unfinished runs by their status)."""
    lookup = {(r["detector"], r["dataset"]): r for r in rows}
    names = [d.name for d in plan.datasets]
    lines = ["| detector | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for detector in plan.detectors:
        cells = []
        for name in names:
            row = lookup.get((detector, name), {})
            cells.append(_fmt(row.get(key), ".3f") if row.get("status") == "ok" else (row.get("status") or "—"))
        lines.append(f"| {detector} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _limits_text(limits: dict[str, float]) -> str:
    if not limits:
        return "none"
    default = limits.get("*")
    others = [f"{k} {v:g} s" for k, v in limits.items() if k != "*"]
    return (f"{default:g} s per run" if default else "") + (f" ({', '.join(others)})" if others else "")


def _dataset_line(dataset: DatasetSpec, rows: list[dict[str, Any]]) -> str:
    text = dataset.describe().replace(str(Path.cwd()) + os.sep, "")
    done = next((r for r in rows if r.get("dataset") == dataset.name and r.get("status") == "ok"), None)
    if done is not None:
        fit, held, test = done.get("train_images"), done.get("calibration_images"), done.get("test_images")
        text += f" — {fit} training images fitted, {held} held out for the threshold, {test} test images"
    return text


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="JSON or TOML file with models, params, datasets, time limits, output paths "
                                         "(command-line options override it)")
    parser.add_argument("--model", "-m", nargs="+", action="extend", metavar="NAME",
                        help="detectors: names, 'all', a category, a glob, or module:Class (default: all)")
    parser.add_argument("--exclude", nargs="+", action="extend", metavar="GLOB", help="detectors to leave out")
    parser.add_argument("--param", "-p", action="append", metavar="DETECTOR.KEY=VALUE",
                        help="a constructor parameter (value parsed as JSON); KEY=VALUE applies to every detector")
    parser.add_argument("--dataset", "-d", nargs="+", action="extend", metavar="SPEC",
                        help="ROOT:CATEGORY, a category folder, a parent of category folders, or "
                             "folder:train=DIR,good=DIR,defect=DIR[,masks=DIR]")
    parser.add_argument("--data-root", help="folder that relative dataset paths start from")
    parser.add_argument("--out", "-o", help="output folder for results.jsonl, tables, runs/ and figures "
                                            "(default results/benchmark)")
    parser.add_argument("--report", help="also write a Markdown report page here (figures linked relative to it)")
    parser.add_argument("--figures", help="folder for the PNG figures (default OUT/figures)")
    parser.add_argument("--published", help="JSON of published numbers per detector for the summary's comparison column")
    parser.add_argument("--quick", action="store_true", help="each detector's card quick_params (a small smoke budget); "
                                                             "--input-size overrides their size")
    parser.add_argument("--input-size", type=int, help="input size for every detector (default: config, else each default)")
    parser.add_argument("--seed", type=int, help="seed for every detector")
    parser.add_argument("--batch-size", type=int, help="batch size for fit, evaluation and batched latency (default 8)")
    parser.add_argument("--max-train", type=int, help="cap training images per dataset (evenly spaced); test sets stay full")
    parser.add_argument("--time-limit", nargs="+", action="extend", metavar="SECONDS|DETECTOR=SECONDS",
                        help=f"wall-clock budget per run, including start-up (default {DEFAULT_TIME_LIMIT:g} s)")
    parser.add_argument("--lock", help="flock this file around each run (e.g. /tmp/adcore-bench.lock) so other "
                                       "measurements on the machine interleave between runs, never during one")
    parser.add_argument("--threads", type=int, help="torch threads in each run (default: torch's own choice)")
    parser.add_argument("--jobs", "-j", type=int, help="runs at once (default 1: timings are only honest one at a time)")
    parser.add_argument("--fresh", action="store_true", help="redo every pair, even those already recorded")
    parser.add_argument("--retry-failed", action="store_true", help="redo pairs recorded as error, timeout or crashed")
    parser.add_argument("--report-only", action="store_true", help="run nothing; rebuild tables, figures and report")
    parser.add_argument("--dry-run", action="store_true", help="print the plan (and what is already recorded) and exit")
    parser.add_argument("--no-plots", action="store_true", help="skip the figures")
    parser.add_argument("--fail-on-error", action="store_true", help="exit 1 when any run failed, timed out or crashed")


def add_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``benchmark`` sub-command to an ``argparse`` sub-parsers object; sets ``func``."""
    parser = subparsers.add_parser(
        "benchmark", help="measure detectors × datasets: tables (md/csv/json) and plots",
        description="Fit, calibrate and evaluate every detector on every dataset, each in its own process; resumable. "
                    "See docs/benchmarks.md.")
    _add_arguments(parser)
    parser.set_defaults(func=run_cli)
    return parser


def run_cli(args: argparse.Namespace) -> int:
    """The ``adcore benchmark`` handler: returns the exit code."""
    try:
        plan = build_plan(args)
    except (ValueError, KeyError, OSError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"adcore benchmark: {message}", file=sys.stderr)
        return 2
    if args.dry_run:
        latest = ResultStore(plan.results_path).latest()
        for run in plan.runs:
            status = latest.get(run.key, {}).get("status", "pending")
            print(f"{run.dataset.name:24s} {run.detector:20s} {status:8s} limit {run.time_limit:g}s "
                  f"{json.dumps(run.params, sort_keys=True)}")
        return 0
    outcome = RunOutcome()
    if not args.report_only:
        outcome = run_benchmark(plan, fresh=args.fresh, retry_failed=args.retry_failed)
    rows = collect_rows(plan)
    paths = write_tables(plan, rows)
    figures: list[Path] = []
    if not args.no_plots:
        from adcore.plots import make_figures

        figures = make_figures(rows, plan.out, plan.figures or plan.out / "figures", datasets=[d.name for d in plan.datasets],
                               detectors=plan.detectors)
    if plan.report is not None:
        paths["report"] = write_report(plan, rows, figures, plan.report)
    counts = collections.Counter(r.get("status") for r in rows)
    print("adcore benchmark: " + ", ".join(f"{counts[s]} {s}" for s in STATUSES if counts[s]) +
          "; wrote " + ", ".join(str(p) for p in paths.values()) + (f" and {len(figures)} figure(s)" if figures else ""),
          file=sys.stderr)
    if outcome.interrupted:
        return 130
    if args.fail_on_error and any(r.get("status") != "ok" for r in rows):
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m adcore.benchmark [options]`` (and ``--worker SPEC`` inside each run's process)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        if len(argv) != 2:
            print("usage: python -m adcore.benchmark --worker SPEC.json", file=sys.stderr)
            return 2
        return _worker(argv[1])
    parser = argparse.ArgumentParser(prog="adcore benchmark", description="Benchmark detectors × datasets.")
    _add_arguments(parser)
    return run_cli(parser.parse_args(argv))


add_arguments = _add_arguments  # the public name `adcore.commands.benchmark` imports

if __name__ == "__main__":
    sys.exit(main())
