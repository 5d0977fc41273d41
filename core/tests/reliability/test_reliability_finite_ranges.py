"""Every numeric parameter of every registered detector has a finite range (issue 22).

Walks each registered detector's ``constraints()``: a parameter whose default is a number must be
constrained, and none of its alternatives may accept Infinity, NaN or absurd magnitudes.
"""

from __future__ import annotations

import inspect
import math
import numbers

import pytest

import adcore
from adcore.factory import detector_entries

ABSURD = [math.inf, -math.inf, math.nan, 1e300, -1e300, 10**30, -(10**30)]


def _detector_classes() -> list[tuple[str, type]]:
    from adcore.base import BaseDetector

    found = []
    for entry in detector_entries():
        target = entry.load()
        if isinstance(target, type) and issubclass(target, BaseDetector):
            found.append((entry.qualified_name, target))
    return found


CLASSES = _detector_classes()


def test_every_first_party_detector_is_walked():
    names = {name.split(":", 1)[1] for name, _ in CLASSES}
    from adcore.registry import FIRST_PARTY_DETECTORS

    assert set(FIRST_PARTY_DETECTORS) <= names  # the plugins are installed in this environment


@pytest.mark.parametrize("name, cls", CLASSES, ids=[name for name, _ in CLASSES])
def test_numeric_parameters_have_finite_ranges(name, cls):
    constraints = cls.constraints()
    signature = inspect.signature(cls.__init__)
    numeric = {p.name: p.default for p in signature.parameters.values()
               if isinstance(p.default, numbers.Real) and not isinstance(p.default, bool)}
    unconstrained = sorted(set(numeric) - set(constraints))
    assert not unconstrained, f"{name}: numeric parameters without constraints: {unconstrained}"
    for param in constraints:  # also those defaulting to None (tile_size, ...)
        for option in constraints[param]:
            if option is None:
                continue
            accepted = [value for value in ABSURD if option.accepts(value)]
            assert not accepted, f"{name}.{param}: {option.describe()} accepts {accepted}"


def test_sigma_infinity_is_refused_at_construction():
    with pytest.raises(adcore.errors.InvalidInputError, match="sigma must be"):
        adcore.get_model("padim", sigma=float("inf"))
