"""The one Markdown table writer (benchmark reports, ``adcore eval``'s metrics, docs tables)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["format_cell", "markdown_table"]

#: a column: (key in the row, header text, format spec: "s" for text, else a float format like ".3f")
Column = tuple[str, str, str]


def format_cell(value: Any, fmt: str) -> str:
    """``value`` formatted by ``fmt``; ``—`` for a missing or non-finite number."""
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


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column],
                   cell: Callable[[Mapping[str, Any], str], Any] | None = None) -> str:
    """GitHub Markdown: text columns left-aligned, numeric ones right-aligned, ``|`` escaped.

    ``cell(row, key)`` may compute a cell's value (default: ``row.get(key)``).
    """
    lines = ["| " + " | ".join(header for _, header, _ in columns) + " |",
             "|" + "|".join("---" if fmt == "s" else "---:" for _, _, fmt in columns) + "|"]
    for row in rows:
        values = [(cell(row, key) if cell else row.get(key), fmt) for key, _, fmt in columns]
        lines.append("| " + " | ".join(format_cell(v, f).replace("|", "\\|").replace("\n", " ") for v, f in values) + " |")
    return "\n".join(lines)
