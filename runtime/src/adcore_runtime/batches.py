"""Batches of image files in, ``adcore predict``'s rows and PNG bytes out: the actor of
``adcore predict --executor ray`` for an exported artefact, needing neither torch nor adcore.

``adcore.scale.predict`` hands Ray Data this class for an ONNX or OpenVINO artefact (with maps):
each actor writes the artefact's files (shipped as bytes through Ray's object store) into a
scratch folder, opens them once with :class:`~adcore_runtime.Runtime`, and for each row of the
dataset (one batch of the local predict: ``paths`` and ``names``) decodes the images, scores them
and renders everything after the detector (:mod:`adcore_runtime.line`). What it returns is what
adcore's torch actor returns, so the driver writes it with the local predict's writer.

What a worker node needs installed for this: Python, Ray (as the cluster runs it) and
``adcore-runtime`` (numpy, Pillow, ONNX Runtime; ``adcore-runtime[openvino]`` for an OpenVINO
artefact). Nothing here imports Ray except to fetch the artefact's bytes.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from adcore_runtime.errors import AdcoreRuntimeError, InvalidInputError
from adcore_runtime.images import load_image
from adcore_runtime.line import (error_row, heatmap_title, normalized_map, png_bytes, regions_and_mask, render_heatmap,
                                 result_row)
from adcore_runtime.runtime import Prediction, Runtime

__all__ = ["BatchScorer", "materialize"]


def materialize(entry: str, files: dict[str, bytes], folder: Path) -> Path:
    """Write an artefact's files (relative name → bytes) under ``folder``; the path to open."""
    for name, data in files.items():
        target = folder.joinpath(*name.split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)  # a private scratch copy of files that were written atomically once
    return folder if not entry or entry == "adcore-export.json" else folder / entry


class BatchScorer:
    """One actor: the artefact opened once; each call scores and renders the rows of one Ray batch.

    ``model``: ``(entry, files)``, or a one-element list holding a Ray object reference to it (fetched
    here, so a restarted actor fetches it again). The other arguments are ``adcore predict``'s
    options; ``threads`` the inference threads (the actor's CPUs); ``graph_batch`` images per graph
    call (``adcore.deployed.ExportedModel.predict_batch_size``).
    """

    def __init__(self, model: Any, *, heatmaps: bool, masks: bool, min_area: int, side_by_side: bool,
                 max_pixels: int | None, threads: int, graph_batch: int = 8) -> None:
        self._timing: dict[str, Any] | None = {"pid": os.getpid(), "init_start": time.time()}
        if isinstance(model, list):
            import ray  # only inside a Ray actor: the artefact's bytes are in the object store

            model = ray.get(model[0])
        entry, files = model
        self._scratch = tempfile.TemporaryDirectory(prefix="adcore-runtime-actor-")
        self.runtime = Runtime(materialize(entry, files, Path(self._scratch.name)), batch_size=graph_batch,
                               threads=max(1, int(threads)))
        artefact = self.runtime.artefact
        self.threshold, self.pixel_threshold, self.pixel_scale = (artefact.threshold, artefact.pixel_threshold,
                                                                  artefact.pixel_scale)
        self.heatmaps, self.masks, self.min_area, self.side_by_side = heatmaps, masks, min_area, side_by_side
        self.max_pixels = max_pixels
        self._timing["model_ready"] = time.time()

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        """``batch``: rows of ``paths``/``names`` lists; returns ``name``, ``result`` (the row as
        JSON), ``heatmap`` and ``mask`` (PNG bytes, empty when not drawn) and ``timing``, one entry
        per image."""
        out: dict[str, list[Any]] = {"name": [], "result": [], "heatmap": [], "mask": []}
        for paths, names in zip(batch["paths"], batch["names"], strict=True):
            for name, row, heatmap, mask in self.score(list(map(str, paths)), list(map(str, names))):
                out["name"].append(name)
                out["result"].append(json.dumps(row, ensure_ascii=True))
                out["heatmap"].append(heatmap or b"")
                out["mask"].append(mask or b"")
        out["timing"] = self._first_call_timing(len(out["name"]))
        return {key: np.array(values, dtype=object) for key, values in out.items()}

    def _first_call_timing(self, rows: int) -> list[str]:
        """The ``timing`` column: this actor's start-up times (``init_start``, ``model_ready``,
        ``first_done``, seconds since the epoch) as JSON on the first row of its first call, then
        empty strings; the driver reports them with ``ADCORE_RAY_TIMINGS`` (docs/scale-out.md)."""
        if self._timing is None or rows == 0:
            return [""] * rows
        timing, self._timing = {**self._timing, "first_done": time.time()}, None
        return [json.dumps(timing)] + [""] * (rows - 1)

    def score(self, paths: list[str], names: list[str]) -> list[tuple[str, dict, bytes | None, bytes | None]]:
        """Each image of one batch as ``(name, row, heatmap PNG, mask PNG)``, in order."""
        decoded = [self._decode(path) for path in paths]
        results: list[tuple[str, dict, bytes | None, bytes | None]] = []
        start = 0
        while start < len(decoded):
            if isinstance(decoded[start], str):  # a bad file stands alone
                results.append((names[start], error_row(paths[start], self.threshold, decoded[start]), None, None))
                start += 1
                continue
            end = start + 1  # consecutive images of one size share a predict call
            while end < len(decoded) and not isinstance(decoded[end], str) \
                    and decoded[end].shape == decoded[start].shape:
                end += 1
            results += self._score_group(paths[start:end], names[start:end], decoded[start:end])
            start = end
        return results

    def _decode(self, path: str) -> np.ndarray | str:
        """The image, or why it cannot be scored (``adcore.line.decoding.decode``'s messages)."""
        try:
            image = load_image(path, max_pixels=self.max_pixels)
        except AdcoreRuntimeError as exc:
            return str(exc)
        except (OSError, ValueError, MemoryError) as exc:  # e.g. a file removed or unreadable mid-run
            return f"cannot read image {path}: {type(exc).__name__}: {exc}"
        height, width = image.shape[-2:]
        if height < 2 or width < 2:
            return f"image {path} has {height}×{width} pixels, too small to score (at least 2×2)"
        return image

    def _score_group(self, paths: list[str], names: list[str],
                     images: list[np.ndarray]) -> list[tuple[str, dict, bytes | None, bytes | None]]:
        try:
            prediction = self.runtime.predict(images)
        except InvalidInputError as exc:  # refused: each on its own, so one refused image is one skipped file
            if len(images) == 1:
                return [(names[0], error_row(paths[0], self.threshold, f"the detector refused {paths[0]}: {exc}"),
                         None, None)]
            return [result for i in range(len(images))
                    for result in self._score_group(paths[i:i + 1], names[i:i + 1], images[i:i + 1])]
        return [self._render(paths[i], names[i], images[i], prediction, i) for i in range(len(images))]

    def _render(self, path: str, name: str, image: np.ndarray, prediction: Prediction,
                index: int) -> tuple[str, dict, bytes | None, bytes | None]:
        """Everything after the detector for one image (``adcore.line.sink.render``)."""
        score = float(prediction.pred_score[index])
        normalized = None if prediction.normalized_score is None else float(prediction.normalized_score[index])
        anomalous = None if prediction.pred_label is None else bool(prediction.pred_label[index])
        amap = prediction.anomaly_map[index]
        regions, mask = regions_and_mask(amap, self.pixel_threshold, self.min_area)
        heatmap = None
        if self.heatmaps:
            calibrated = self.pixel_threshold is not None and self.pixel_scale is not None
            picture = render_heatmap(image.transpose(1, 2, 0), normalized_map(amap, self.pixel_threshold,
                                                                              self.pixel_scale), mask,
                                     title=heatmap_title(name, score, normalized, anomalous), calibrated=calibrated,
                                     side_by_side=self.side_by_side)
            heatmap = png_bytes(picture)
        mask_png = png_bytes(mask.astype(np.uint8) * 255) if self.masks and mask is not None else None
        return name, result_row(path, score, normalized, self.threshold, anomalous, regions), heatmap, mask_png
