"""The parity check that is part of every export: the torch detector and the artefact on the same images.

Scores are compared relatively, ``|torch - exported| / max(|torch|, 1e-6)`` per image; the
normalised score, when there is one, must be Contract A's of the graph's own raw score (absolutely,
within the same tolerance; see :func:`compare`); maps by the largest absolute difference over
the torch maps' range (max - min over every check image). The artefact is run once on all images
at once and once on a single image, so a graph that baked in the traced batch size fails here.
The all-at-once call ignores the sidecar's ``max_batch`` on purpose: a graph must be right at any
batch (ONNX Runtime or OpenVINO used directly do not read the key), and ``max_batch`` only bounds
the memory the deployed consumers let a call take.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["Tolerance", "check_images", "training_check_files", "reference_outputs", "compare", "TRAINING_CHECK_IMAGES"]

#: training images added to the default parity check (evenly spaced over the training folder)
TRAINING_CHECK_IMAGES = 16


@dataclass(frozen=True)
class Tolerance:
    score_rel: float = 1e-4
    map_over_range: float = 1e-3

    def as_dict(self) -> dict[str, float]:
        return {"score_rel": self.score_rel, "map_over_range": self.map_over_range}


def _resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    # Contract C's resize rule, the same as BaseDetector's
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    shrinking = images.shape[-2] > size[0] or images.shape[-1] > size[1]
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=shrinking)


def check_images(size: tuple[int, int], paths: Sequence[str | Path] = (), *, generated: int = 3) -> torch.Tensor:
    """Float ``(N,3,h,w)`` check images at ``size``: ``paths`` (files or folders) decoded as adcore
    does, or, when none are given, ``generated`` good images and the same with a pasted defect."""
    from adcore.data import list_images, load_image
    from adcore.errors import InvalidInputError

    if paths:
        files: list[Path] = []
        for raw in paths:
            path = Path(raw)
            files.extend(list_images(path) if path.is_dir() else [path])
        if not files:
            raise InvalidInputError(f"no images found in {', '.join(map(str, paths))} for the parity check; give "
                                    "image files or folders holding them")
        return torch.cat([_resize(load_image(p)[None], size) for p in files])
    from adcore.testing import make_normal_images, paste_defects

    good = make_normal_images(generated, size, seed=7)
    defects, _ = paste_defects(good, seed=8)
    return torch.cat([good, defects])


def training_check_files(folder: str | Path, limit: int = TRAINING_CHECK_IMAGES) -> list[Path]:
    """Up to ``limit`` image files of the training folder ``folder``, evenly spaced (sorted order);
    none when the folder is gone (a model file moved to another machine)."""
    from adcore.data import list_images

    folder = Path(folder)
    if not folder.is_dir():
        return []
    files = list_images(folder)
    if len(files) <= limit:
        return files
    step = len(files) / limit
    return [files[int(i * step)] for i in range(limit)]


def reference_outputs(detector: Any, images: torch.Tensor) -> list[np.ndarray]:
    """What adcore's torch path gives for ``images`` (already at ``input_size``), in the order of
    :func:`adcore.export.graph.output_names` (no map for a score-only detector)."""
    from adcore.export.graph import calibration_of, output_names

    context = torch.inference_mode() if getattr(detector, "inference_mode", True) else torch.no_grad()
    with context:
        score, amap = detector._predict_resized(images, tuple(detector.image_size))
    names = output_names(detector)
    outputs = [score.numpy().astype(np.float64)]
    if "anomaly_map" in names:
        outputs.append(amap.numpy().astype(np.float64))
    if "normalized_score" in names:
        calibration = calibration_of(detector)
        z = -(outputs[0] - calibration["threshold"]) / calibration["score_scale"]
        outputs.append(1.0 / (1.0 + np.exp(np.clip(z, -700.0, 700.0))))  # far from the threshold: 0 or 1, no overflow warning
    return outputs


def compare(reference: list[np.ndarray], run: Callable[[np.ndarray], list[np.ndarray]], images: torch.Tensor,
            tolerance: Tolerance, names: Sequence[str] | None = None,
            normalize: Callable[[np.ndarray], np.ndarray] | None = None) -> dict[str, Any]:
    """Run the artefact, compare with ``reference``; the sidecar's ``parity`` entry (``ok`` included).

    ``names`` are the outputs in order (default: ``pred_score``, ``anomaly_map`` and, with a third
    output, ``normalized_score``); without ``anomaly_map`` (a score-only artefact) the map
    difference is ``None``. ``normalize`` (Contract A with the detector's threshold and scale):
    the graph's ``normalized_score`` must be that of its own ``pred_score`` (``max_normalized_graph_error``),
    while its difference from torch's (``max_normalized_abs_diff``) is recorded: it is the raw
    score's difference times the logistic's slope, ``1 / (4 * score_scale)`` at most, which a
    steep calibration (a tiny calibration set) makes large without the graph being wrong. Without
    ``normalize`` that difference itself is held to the tolerance."""
    names = list(names) if names is not None else ["pred_score", "anomaly_map", "normalized_score"][:len(reference)]
    where = {name: index for index, name in enumerate(names)}
    batch = images.numpy().astype(np.float32)
    together = [np.asarray(x, dtype=np.float64) for x in run(batch)]
    single = [np.asarray(x, dtype=np.float64) for x in run(batch[:1])]
    for got, want, count in ((together, reference, batch.shape[0]), (single, reference, 1)):
        shapes = [tuple(g.shape) for g in got]
        wanted = [(count, *w.shape[1:]) for w in want]
        if shapes != wanted:  # e.g. a graph that baked in the traced batch size
            return {"images": int(batch.shape[0]), "max_score_rel_diff": math.inf, "max_map_diff_over_range": math.inf,
                    "tolerance": tolerance.as_dict(), "ok": False, "shapes": f"outputs {shapes}, expected {wanted}"}
    score_diff = normalized_diff = 0.0
    index = where["pred_score"]
    for got, want in ((together[index], reference[index]), (single[index], reference[index][:1])):
        diff = np.abs(got.reshape(-1) - want.reshape(-1)) / np.maximum(np.abs(want.reshape(-1)), 1e-6)
        score_diff = max(score_diff, _worst(diff))
    graph_error: float | None = None
    if "normalized_score" in where:
        # the normalised score lies in (0, 1): a relative difference near 0 (a good image far below
        # the threshold) would magnify a raw-score difference by score / scale, so it is compared absolutely
        index, raw = where["normalized_score"], where["pred_score"]
        for got, want in ((together[index], reference[index]), (single[index], reference[index][:1])):
            normalized_diff = max(normalized_diff, _worst(np.abs(got.reshape(-1) - want.reshape(-1))))
        if normalize is not None:
            graph_error = max(_worst(np.abs(out[index].reshape(-1) - normalize(out[raw].reshape(-1))))
                              for out in (together, single))
    map_rel: float | None = None
    if "anomaly_map" in where:
        index = where["anomaly_map"]
        span = float(reference[index].max() - reference[index].min())
        map_diff = max(_worst(np.abs(together[index] - reference[index])),
                       _worst(np.abs(single[index] - reference[index][:1])))
        map_rel = map_diff / span if span > 0 else (0.0 if map_diff == 0 else math.inf)
    normalized_ok = (normalized_diff if graph_error is None else graph_error) <= tolerance.score_rel
    ok = score_diff <= tolerance.score_rel and normalized_ok and (map_rel is None or map_rel <= tolerance.map_over_range)
    found = {"images": int(batch.shape[0]), "max_score_rel_diff": score_diff, "max_map_diff_over_range": map_rel}
    if "normalized_score" in where:
        found["max_normalized_abs_diff"] = normalized_diff
    if graph_error is not None:
        found["max_normalized_graph_error"] = graph_error
    return {**found, "tolerance": tolerance.as_dict(), "ok": bool(ok)}


def _worst(diff: np.ndarray) -> float:
    # a NaN would slip through max() and every comparison: a non-finite output is the worst difference
    return float(diff.max()) if bool(np.isfinite(diff).all()) else math.inf
