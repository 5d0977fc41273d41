"""Declarative parameter constraints, checked once by :class:`~adcore.base.BaseDetector`.

A detector declares what each constructor parameter may be (scikit-learn's
``_parameter_constraints`` is the model)::

    class Padim(FeatureDetector):
        parameter_constraints = {
            "num_features": [Integer(1, 10_000)],
            "epsilon": [Real(0.0, 1e3, closed="right")],
            "layers": [Stages(), None],
        }

Each entry lists alternatives; the value must satisfy one of them (``None`` in the list allows
``None``; by convention it comes last, so the message reads "an integer in [1, 10] or None"). The base class merges the constraints of every class in the MRO and validates after
``__init__``, on ``set_params`` and before ``fit``, so a bad value is refused at construction with
the allowed range — never a traceback after the work. Every numeric range is finite: ``Infinity``,
``NaN`` and absurd magnitudes are refused.

Renamed parameters stay accepted for a while through ``parameter_aliases``
(``{"lr": "learning_rate"}``), with a :class:`DeprecationWarning` naming the new name.
"""

from __future__ import annotations

import math
import numbers
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from adcore.errors import InvalidInputError

__all__ = ["Constraint", "Integer", "Real", "Options", "Boolean", "Text", "Stages", "Size", "FilePath", "Check",
           "ConstraintSpec", "validate_parameters"]


class Constraint(ABC):
    """One allowed form of a parameter value."""

    @abstractmethod
    def accepts(self, value: Any) -> bool:
        """Whether ``value`` satisfies this constraint."""

    @abstractmethod
    def describe(self) -> str:
        """What is allowed, in words a user understands (``"an integer in [1, 10000]"``)."""


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))


class Integer(Constraint):
    """An integer in ``[low, high]`` (both finite and inclusive)."""

    def __init__(self, low: int, high: int) -> None:
        if high < low:
            raise InvalidInputError(f"Integer({low}, {high}): empty range")
        self.low, self.high = int(low), int(high)

    def accepts(self, value: Any) -> bool:
        return _is_int(value) and self.low <= int(value) <= self.high

    def describe(self) -> str:
        return f"an integer in [{self.low}, {self.high}]"


class Real(Constraint):
    """A finite number between ``low`` and ``high``; ``closed`` says which ends belong to the range."""

    def __init__(self, low: float, high: float, closed: Literal["both", "left", "right", "neither"] = "both") -> None:
        if not (math.isfinite(low) and math.isfinite(high)) or high < low:
            raise InvalidInputError(f"Real({low}, {high}): bounds must be finite and ordered")
        self.low, self.high, self.closed = float(low), float(high), closed

    def accepts(self, value: Any) -> bool:
        if not _is_real(value):
            return False
        number = float(value)
        above = number >= self.low if self.closed in ("both", "left") else number > self.low
        below = number <= self.high if self.closed in ("both", "right") else number < self.high
        return above and below

    def describe(self) -> str:
        left = "[" if self.closed in ("both", "left") else "("
        right = "]" if self.closed in ("both", "right") else ")"
        return f"a finite number in {left}{self.low:g}, {self.high:g}{right}"


class Options(Constraint):
    """One of a fixed set of values (compared with ``==``; booleans never match numbers)."""

    def __init__(self, *values: Any) -> None:
        self.values = tuple(values)

    def accepts(self, value: Any) -> bool:
        return any(type(value) is type(option) and value == option for option in self.values)

    def describe(self) -> str:
        return "one of " + ", ".join(repr(v) for v in self.values)


class Boolean(Constraint):
    """``True`` or ``False`` (not 0/1)."""

    def accepts(self, value: Any) -> bool:
        return isinstance(value, bool)

    def describe(self) -> str:
        return "True or False"


class Text(Constraint):
    """A non-empty string of at most ``max_length`` characters."""

    def __init__(self, max_length: int = 200) -> None:
        self.max_length = max_length

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and 0 < len(value) <= self.max_length and value.strip() == value

    def describe(self) -> str:
        return f"a non-empty name (at most {self.max_length} characters, no surrounding spaces)"


class Stages(Constraint):
    """Backbone stages: a non-empty sequence of distinct stage names or indices, ``count`` of them if given."""

    def __init__(self, count: int | None = None, max_count: int = 16) -> None:
        self.count, self.max_count = count, max_count

    def accepts(self, value: Any) -> bool:
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
            return False
        if not all((isinstance(v, str) and v) or (_is_int(v) and 0 <= v < 64) for v in value):
            return False
        if len(set(value)) != len(value) or len(value) > self.max_count:
            return False
        return self.count is None or len(value) == self.count

    def describe(self) -> str:
        amount = f"{self.count} distinct" if self.count else "a non-empty sequence of distinct"
        return f"{amount} backbone stage names or indices, e.g. ('blocks.2', 'blocks.4') or ('layer2', 'layer3')"


class Size(Constraint):
    """An image side in pixels, or ``(height, width)``, each in ``[low, high]``."""

    def __init__(self, low: int = 16, high: int = 4096) -> None:
        self.low, self.high = low, high

    def accepts(self, value: Any) -> bool:
        if _is_int(value):
            return self.low <= int(value) <= self.high
        return isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2 \
            and all(_is_int(v) and self.low <= int(v) <= self.high for v in value)

    def describe(self) -> str:
        return f"between {self.low} and {self.high} pixels per side, as an int or (height, width)"


class FilePath(Constraint):
    """A path to a file (``str`` or ``os.PathLike``); whether it exists is checked where it is read."""

    def accepts(self, value: Any) -> bool:
        return (isinstance(value, str) and bool(value)) or isinstance(value, os.PathLike)

    def describe(self) -> str:
        return "a file path"


class Check(Constraint):
    """Any predicate, with the words that describe it."""

    def __init__(self, predicate: Callable[[Any], bool], description: str) -> None:
        self.predicate, self.description = predicate, description

    def accepts(self, value: Any) -> bool:
        try:
            return bool(self.predicate(value))
        except (TypeError, ValueError):
            return False

    def describe(self) -> str:
        return self.description


#: what a ``parameter_constraints`` entry holds: the allowed alternatives (``None`` allows ``None``)
ConstraintSpec = Sequence["Constraint | None"]


def validate_parameters(owner: str, params: Mapping[str, Any], constraints: Mapping[str, ConstraintSpec]) -> None:
    """Raise :class:`InvalidInputError` for the first parameter that satisfies none of its constraints."""
    for name, allowed in constraints.items():
        if name not in params:
            continue
        value = params[name]
        if any(value is None if option is None else option.accepts(value) for option in allowed):
            continue
        words = [("None" if option is None else option.describe()) for option in allowed]
        raise InvalidInputError(f"{owner}: {name} must be {' or '.join(words)}; got {value!r}")
