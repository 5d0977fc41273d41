"""Progress bars for long loops (tqdm on stderr; ``ADCORE_PROGRESS=0`` silences them)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, TypeVar

__all__ = ["progress", "progress_enabled"]

T = TypeVar("T")


def progress_enabled() -> bool:
    return os.environ.get("ADCORE_PROGRESS", "1").strip().lower() not in ("0", "false", "no", "off")


def progress(iterable: Iterable[T], desc: str = "", total: int | None = None, **kwargs: Any) -> Iterable[T]:
    """Wrap ``iterable`` in a tqdm bar unless progress output is switched off."""
    if not progress_enabled():
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True, **kwargs)
