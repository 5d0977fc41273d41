"""The one ``key=value`` grammar of the command line and of benchmark configs.

``-p coreset_ratio=0.05`` in ``train``, ``eval`` and ``benchmark`` (and a ``params`` entry in a
benchmark config) all read their value with :func:`parse_value`, so ``None`` means the same thing
everywhere: JSON first (``0.05``, ``[1, 2]``, ``"text"``, ``null``), then the words ``true``/``false``/
``none`` in any case, and anything else stays the string as written (``backbone=resnet18``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from adcore.errors import ConfigurationError

__all__ = ["parse_value", "parse_assignment", "parse_assignments"]

_WORDS = {"true": True, "false": False, "none": None, "null": None}


def parse_value(text: str) -> Any:
    """``"0.05"`` → 0.05, ``"True"`` → True, ``"None"`` → None, ``"[1,2]"`` → [1, 2]; else the string."""
    stripped = text.strip()
    if stripped.lower() in _WORDS:
        return _WORDS[stripped.lower()]
    try:
        return json.loads(stripped)
    except ValueError:
        return text


def parse_assignment(text: str, *, option: str = "--param") -> tuple[str, Any]:
    """``"coreset_ratio=0.05"`` → ``("coreset_ratio", 0.05)``; the key may carry dots (``patchcore.epochs``)."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigurationError(f"{option} expects KEY=VALUE (JSON values allowed), got {text!r}; "
                                 "e.g. -p coreset_ratio=0.05")
    if not all(part.isidentifier() or part == "*" for part in key.split(".")):
        raise ConfigurationError(f"{option} {text!r}: {key!r} is not a parameter name")
    return key, parse_value(value)


def parse_assignments(pairs: Iterable[str] | None, *, option: str = "--param") -> dict[str, Any]:
    """Several ``KEY=VALUE`` strings → a dict; a key given twice with two values is an error."""
    params: dict[str, Any] = {}
    for pair in pairs or ():
        key, value = parse_assignment(pair, option=option)
        if key in params and params[key] != value:
            raise ConfigurationError(f"{option} {key} is given twice ({params[key]!r} and {value!r}); give it once")
        params[key] = value
    return params
