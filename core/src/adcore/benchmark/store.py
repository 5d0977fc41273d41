"""``results.jsonl``, the benchmark's one store of records, and the fields every record starts with.

Every finished run is added at once: the whole file is rewritten to a temporary file and renamed
(:func:`adcore.files.atomic_write_text`), under a ``flock`` so two benchmark processes on one folder
lose nothing; a kill at any moment leaves the old or the new file, never a torn one. A damaged line
written by anything else is skipped with a warning (that run is redone).
"""

from __future__ import annotations

import fcntl
import json
import math
import threading
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from adcore.benchmark.plan import RECORD_FORMAT, RunSpec, portable_dataset
from adcore.files import atomic_write_text

__all__ = ["ResultStore", "base_record", "plugin_versions", "external_plugin", "json_default", "clean_float", "now"]


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
            lines.append(json.dumps(record, sort_keys=True, default=json_default))
            atomic_write_text(self.path, "\n".join(lines) + "\n")


def json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    return str(value)


def clean_float(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def plugin_versions() -> dict[str, str]:
    from adcore.factory import plugin_versions as versions

    return versions()


def base_record(run: RunSpec) -> dict[str, Any]:
    from adcore.factory import find_entry

    entry = find_entry(run.detector)
    params = run.params
    plugin, version = (entry.distribution, entry.version) if entry else external_plugin(run.detector)
    return {
        "format": RECORD_FORMAT, "key": run.key, "detector": run.detector, "dataset": run.dataset.name,
        "dataset_spec": portable_dataset(run.dataset), "params": params, "batch_size": run.batch_size,
        "time_limit": run.time_limit, "seed": params.get("seed", 0),
        "input_size": params.get("input_size", (entry.card.get("input_size") if entry else None)),
        "backbone": params.get("backbone", entry.card.get("default_backbone") if entry else None),
        "plugin": plugin, "plugin_version": version,
        "versions": plugin_versions(),
        **({"options": run.options} if run.options else {}),
    }


def external_plugin(name: str) -> tuple[str | None, str | None]:
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
