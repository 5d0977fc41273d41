"""The models a server holds: opened once in the background, each with its micro-batcher.

:func:`_open_model` is the one place a model is opened (:func:`adcore.deployed.open_model`: a
``.safetensors`` model file or an exported artefact). A server answers ``/v1/health`` with 503
until every model is open and warmed up (one blank image scored, so the first request does not pay
the one-off costs), and refuses predictions for a model that is not ready with 503.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adcore.serve.batching import MicroBatcher
from adcore.serve.errors import ApiError

__all__ = ["ModelSlot", "ModelSet", "describe_model"]

log = logging.getLogger("adcore.serve")


def _open_model(path: Path) -> Any:
    """Open one model file or exported artefact (the only call that does; see the module docstring)."""
    from adcore.deployed import open_model

    return open_model(path)


def _registered_name(model: Any) -> str:
    name = getattr(model, "name", None)
    if isinstance(name, str) and name:
        return name
    from adcore.lookups import origin_of

    return origin_of(type(model)).name


def describe_model(name: str, model: Any) -> dict[str, Any]:
    """What ``GET /v1/models`` says about one open model."""
    load_size = model.load_size
    threshold, scale = getattr(model, "threshold_", None), getattr(model, "score_scale_", None)
    return {"name": name, "detector": _registered_name(model),
            "input_size": None if load_size is None else list(load_size), "tiled": bool(model.tiled),
            "threshold": threshold, "score_scale": scale,
            "pixel_threshold": getattr(model, "pixel_threshold_", None),
            "calibrated": threshold is not None and scale is not None}


@dataclass
class ModelSlot:
    """One served model: ``state`` is ``loading``, ``ready`` or ``failed`` (then ``error`` says why)."""

    name: str
    path: Path
    state: str = "loading"
    model: Any = None
    batcher: MicroBatcher | None = None
    error: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


class ModelSet:
    """The models by name; :meth:`start_loading` opens them in a background thread."""

    def __init__(self, paths: dict[str, Path], *, max_batch: int = 8, wait_s: float = 0.005,
                 opener: Callable[[Path], Any] = _open_model) -> None:
        self.slots = {name: ModelSlot(name, Path(path)) for name, path in paths.items()}
        self.max_batch, self.wait_s, self._opener = max_batch, wait_s, opener
        self.loaded = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def ready(self) -> bool:
        return all(slot.state == "ready" for slot in self.slots.values())

    @property
    def failed(self) -> list[ModelSlot]:
        return [slot for slot in self.slots.values() if slot.state == "failed"]

    def start_loading(self, on_done: Callable[[ModelSet], None] | None = None) -> None:
        def work() -> None:
            try:
                self.load_all()
            finally:
                if on_done is not None:
                    on_done(self)

        self._thread = threading.Thread(target=work, name="adcore-serve-loader", daemon=True)
        self._thread.start()

    def load_all(self) -> None:
        """Open and warm up every model still loading (a failure is recorded and logged, not raised)."""
        try:
            for slot in self.slots.values():
                if slot.state == "loading":
                    self._load(slot)
        finally:
            self.loaded.set()

    def _load(self, slot: ModelSlot) -> None:
        try:
            model = self._opener(slot.path)
            if not getattr(model, "is_fitted", True):
                raise ApiError(503, "model not fitted", f"{slot.path} holds a detector that was never fitted")
            _warm_up(model)
            slot.info = describe_model(slot.name, model)
        except Exception as exc:  # noqa: BLE001 - reported by /v1/health and the log, the server stops
            slot.state, slot.error = "failed", f"{type(exc).__name__}: {exc}"
            log.error("model %s (%s) could not be opened: %s", slot.name, slot.path, slot.error)
            return
        slot.model = model
        slot.batcher = MicroBatcher(model, max_batch=self.max_batch, wait_s=self.wait_s, name=slot.name)
        slot.state = "ready"
        size = "full resolution, tiled" if slot.info["input_size"] is None else "×".join(map(str, slot.info["input_size"]))
        log.info("model %s ready (%s, %s, %s)", slot.name, slot.info["detector"], size,
                 "calibrated" if slot.info["calibrated"] else "NOT calibrated: no verdicts")

    def get(self, name: str) -> ModelSlot:
        """The ready slot ``name``: 404 listing the models when there is none, 503 while it loads."""
        slot = self.slots.get(name)
        if slot is None:
            raise ApiError(404, "unknown model", {"message": f"no model is named {name!r}; use one of the models "
                                                  "listed here (GET /v1/models describes them)",
                                                  "models": sorted(self.slots)})
        if slot.state != "ready":
            detail = slot.error if slot.state == "failed" else "the model is still loading; retry when " \
                "GET /v1/health answers 200"
            raise ApiError(503, f"model {slot.state}", detail)
        return slot

    def health(self) -> dict[str, Any]:
        return {"status": "ready" if self.ready else ("failed" if self.failed else "loading"),
                "models": {name: slot.state if slot.error is None else f"{slot.state}: {slot.error}"
                           for name, slot in self.slots.items()}}

    def close(self) -> None:
        """Let every worker finish what is queued, then stop it."""
        if self._thread is not None:
            self._thread.join()
        for slot in self.slots.values():
            if slot.batcher is not None:
                slot.batcher.close()


def _warm_up(model: Any) -> None:
    """Score one blank image at the model's input size (a tiling model: one tile), and draw its regions
    and heatmap once (their first call imports scipy and matplotlib: a second the first request would pay)."""
    import numpy as np
    import torch

    from adcore.line.heatmaps import overlay
    from adcore.line.regions import find_regions

    from adcore.errors import InvalidInputError

    size = model.load_size
    if size is None and isinstance(getattr(model, "tile_size", None), int):
        size = (model.tile_size, model.tile_size)
    if size is not None:
        try:
            model.predict(torch.full((1, 3, *size), 0.5))
        except InvalidInputError as exc:  # a detector with its own size rules: the first request warms it
            log.info("no warm-up for %s: %s", type(model).__name__, exc)
    blank = np.zeros((4, 4), dtype=np.float32)
    overlay(np.zeros((4, 4, 3)), blank, find_regions(blank, 0.5)[1], 0.45)
