"""The value grammar of a benchmark plan: ``--param``, ``--time-limit``, ``--seeds`` and the
measurement options (``curve``, ``image_size``, ``calibration_fraction``, ``variants``,
``record_attributes``, ``preimport``, ``cpu_latency``, ``workers``) a run can carry besides its parameters."""

from __future__ import annotations

import argparse
from typing import Any

from adcore.errors import ConfigurationError
from adcore.values import parse_value

__all__ = ["OPTION_KEYS", "DEFAULT_CALIBRATION_FRACTION", "parse_param", "parse_time_limit", "parse_seeds", "options_for"]

#: the share of good training images held out to calibrate the threshold (as ``adcore eval`` does)
DEFAULT_CALIBRATION_FRACTION = 0.2


def parse_param(text: str) -> tuple[str | None, str, Any]:
    """``"patchcore.coreset_ratio=0.05"`` → ``("patchcore", "coreset_ratio", 0.05)``.

    Without a detector prefix (``"input_size=128"`` or ``"*.epochs=2"``) the parameter applies to
    every detector in the plan (``None`` as the first element).
    """
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise ConfigurationError(f"--param {text!r}: expected DETECTOR.KEY=VALUE (e.g. patchcore.coreset_ratio=0.05) or KEY=VALUE")
    name = name.strip()
    detector, dot, key = name.rpartition(".")
    if not dot:
        detector, key = "*", name
    if not key.isidentifier():
        raise ConfigurationError(f"--param {text!r}: {key!r} is not a parameter name")
    return (None if detector in ("*", "") else detector), key, parse_value(value)


def parse_time_limit(values: list[str] | None) -> dict[str, float]:
    """``["600", "patchcore=900"]`` → ``{"*": 600.0, "patchcore": 900.0}``."""
    limits: dict[str, float] = {}
    for text in values or []:
        name, sep, seconds = str(text).rpartition("=")
        try:
            value = float(seconds)
        except ValueError:
            raise ConfigurationError(f"--time-limit {text!r}: expected SECONDS or DETECTOR=SECONDS") from None
        if value <= 0:
            raise ConfigurationError(f"--time-limit {text!r}: seconds must be > 0")
        limits[name if sep else "*"] = value
    return limits


def parse_seeds(value: Any) -> list[int] | None:
    """``"0,1,2"`` (or ``[0, 1, 2]``, or several such strings) → ``[0, 1, 2]``; None or empty → None."""
    if value in (None, "", []):
        return None
    items = value if isinstance(value, (list, tuple)) else [value]
    seeds: list[int] = []
    for item in items:
        for part in (str(item).split(",") if isinstance(item, str) else [item]):
            try:
                number = int(str(part).strip())
            except ValueError:
                raise ConfigurationError(f"--seeds {value!r}: {part!r} is not a whole number; give e.g. --seeds 0,1,2") from None
            if number in seeds:
                raise ConfigurationError(f"--seeds {value!r}: seed {number} is given twice")
            seeds.append(number)
    return seeds


#: configuration keys (and ``--`` options) that choose what a run measures besides the metrics
OPTION_KEYS = ("curve", "image_size", "calibration_fraction", "variants", "record_attributes", "preimport",
               "cpu_latency", "workers")


def options_for(name: str, args: argparse.Namespace, config: dict[str, Any]) -> dict[str, Any]:
    """A detector's measurement options (command line over configuration), only those not at their defaults."""
    def pick(key: str) -> Any:
        value = getattr(args, key, None)
        unset = value is None or value is False or (isinstance(value, list) and not value)  # 0 is a value
        return config.get(key) if unset else value

    options: dict[str, Any] = {}
    curve = pick("curve")
    if curve:
        if not isinstance(curve, int) or isinstance(curve, bool) or curve < 1:
            raise ConfigurationError(f"curve {curve!r}: give a whole number of epochs between test-set evaluations (e.g. 5)")
        options["curve"] = curve
    image_size = pick("image_size")
    if image_size is not None:
        options["image_size"] = image_size
    fraction = pick("calibration_fraction")
    if fraction is not None and float(fraction) != DEFAULT_CALIBRATION_FRACTION:
        if not 0.0 <= float(fraction) < 1.0:
            raise ConfigurationError(f"calibration_fraction {fraction!r}: give a share in [0, 1) "
                                     "(0: fit on every training image and set no threshold)")
        options["calibration_fraction"] = float(fraction)
    variants = config.get("variants") or {}
    if not isinstance(variants, dict):
        raise ConfigurationError("variants: expected {DETECTOR or '*': [{PARAM: VALUE, ...}, ...]}")
    chosen = variants.get(name, variants.get("*"))
    if chosen:
        if not isinstance(chosen, list) or not all(isinstance(v, dict) and v for v in chosen):
            raise ConfigurationError(f"variants for {name!r}: expected a list of parameter objects, got {chosen!r}")
        options["variants"] = chosen
    for key in ("record_attributes", "preimport"):
        values = pick(key)
        if values:
            options[key] = [values] if isinstance(values, str) else list(values)
    if pick("cpu_latency"):
        options["cpu_latency"] = True
    workers = pick("workers")
    if workers:  # 0, the default, decodes in the worker process itself
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
            raise ConfigurationError(f"workers {workers!r}: give a whole number of decoding processes (e.g. 4)")
        options["workers"] = workers
    return options
