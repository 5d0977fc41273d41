"""The exported graph: a fitted detector wrapped as one ``nn.Module``.

``images`` float32 ``(N, 3, h, w)`` in [0, 1] at the detector's ``input_size`` go in; the image
score ``pred_score (N,)``, the ``anomaly_map (N, h, w)`` at the input size and, for a calibrated
detector (``threshold_`` and ``score_scale_``, Contract A), ``normalized_score (N,)`` come out. The
detector's own normalisation, forward pass, map post-processing (upsampling, Gaussian smoothing)
and image score run inside: the module calls the detector's ``_export_predict(images)`` when it has
one (a detector whose ``_predict`` does not trace, e.g. a faiss search, writes it), else ``_predict``.
A detector whose map cannot be an inference graph (DifferNet: input gradients) declares
``export_score_only`` (why) and writes ``_export_score(images) -> scores``: its graph has no
``anomaly_map`` output. A detector may write ``_export_prepare()``, called once before tracing, to
compute constants its graph needs (random draws: a ``torch.Generator`` cannot be traced).
A detector whose graph's working memory grows with the batch (PatchCore's and SPADE's exact kNN:
distance blocks of queries × chunk floats, the chunk fixed at trace time) declares
``export_max_batch`` (images per graph call): the sidecar records it as ``max_batch`` and
adcore-runtime and ``adcore.deployed`` split larger batches into calls of at most that many
images. The graph itself stays correct at any batch size; only its memory differs.
While the graph is traced, :func:`export_target` names the format it is for, so a detector may pick
the formulation that engine runs best (PaDiM: OpenVINO repacks a constant right-hand MatMul operand
once per input shape, ONNX Runtime runs a constant left-hand one at half the speed).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from adcore.export.errors import NotExportableError

__all__ = ["ExportModule", "calibration_of", "max_batch", "output_names", "score_only", "export_target",
           "exporting_for"]

_TARGET: ContextVar[str | None] = ContextVar("adcore_export_target", default=None)


def export_target() -> str | None:
    """The format (``"onnx"``, ``"openvino"``, ``"torchscript"``) being traced now, else ``None``."""
    return _TARGET.get()


@contextlib.contextmanager
def exporting_for(format: str) -> Iterator[None]:
    """Within: :func:`export_target` answers ``format`` (``export_detector`` wraps its tracing in it)."""
    token = _TARGET.set(format)
    try:
        yield
    finally:
        _TARGET.reset(token)


def calibration_of(detector: Any) -> dict[str, float | None]:
    """Contract A's four numbers (any may be ``None``: an uncalibrated detector)."""
    def number(name: str) -> float | None:
        value = getattr(detector, name, None)
        return None if value is None else float(value)

    return {"threshold": number("threshold_"), "score_scale": number("score_scale_"),
            "pixel_threshold": number("pixel_threshold_"), "pixel_scale": number("pixel_scale_")}


def score_only(detector: Any) -> bool:
    """Whether the detector exports its image score alone (it declares ``export_score_only``, the
    reason its map cannot be in an inference graph, and writes ``_export_score(images)``)."""
    return bool(getattr(detector, "export_score_only", None))


def max_batch(detector: Any) -> int | None:
    """Images per graph call the detector's artefact should be given at most (its
    ``export_max_batch``); ``None``: any batch."""
    value = getattr(detector, "export_max_batch", None)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise NotExportableError(f"{type(detector).__name__}.export_max_batch must be a positive integer or None, "
                                 f"got {value!r}: fix the detector's class attribute")
    return value


def output_names(detector: Any) -> list[str]:
    calibration = calibration_of(detector)
    normalized = calibration["threshold"] is not None and calibration["score_scale"] is not None
    maps = [] if score_only(detector) else ["anomaly_map"]
    return ["pred_score", *maps] + (["normalized_score"] if normalized else [])


class ExportModule(nn.Module):
    """A fitted detector as a graph from images at ``input_size`` to its outputs."""

    def __init__(self, detector: Any) -> None:
        super().__init__()
        if not getattr(detector, "is_fitted", False):
            raise NotExportableError(f"{type(detector).__name__} is not fitted: fit or load it before exporting")
        self.score_only = score_only(detector)
        predict = getattr(detector, "_export_predict", None) or getattr(detector, "_predict", None)
        if self.score_only:
            predict = getattr(detector, "_export_score", None)
            if predict is None:
                raise NotExportableError(f"{type(detector).__name__} declares export_score_only but has no "
                                         "_export_score(images) returning its image scores")
        if predict is None:
            raise NotExportableError(f"{type(detector).__name__} has no _predict: only BaseDetector subclasses export")
        prepare = getattr(detector, "_export_prepare", None)
        if prepare is not None:  # constants drawn before tracing (a torch.Generator cannot be in a graph)
            prepare()
        self._detector = detector
        self._predict_fn = predict
        self.size = tuple(int(s) for s in detector.image_size)
        calibration = calibration_of(detector)
        self.normalized = "normalized_score" in output_names(detector)
        self.threshold = calibration["threshold"]
        self.score_scale = calibration["score_scale"]
        # the detector's networks become this module's submodules, so their weights are graph
        # initializers (and eval mode holds), not constants folded by accident
        for name, value in vars(detector).items():
            if isinstance(value, nn.Module):
                self.add_module(name.strip("_") or "module", value)
        self.eval()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.score_only:
            score = self._predict_fn(images).float().reshape(-1)
            if not self.normalized:
                return (score,)
            return score, torch.sigmoid((score - self.threshold) / self.score_scale)
        score, amap = self._predict_fn(images)
        if amap.ndim == 4 and amap.shape[1] == 1:
            amap = amap[:, 0]
        amap = amap.float()
        if tuple(amap.shape[-2:]) != self.size:
            amap = F.interpolate(amap[:, None], size=self.size, mode="bilinear", align_corners=False)[:, 0]
        score = score.float().reshape(-1)
        if not self.normalized:
            return score, amap
        # Contract A: 1 / (1 + exp(-(raw - threshold) / scale))
        normalized = torch.sigmoid((score - self.threshold) / self.score_scale)
        return score, amap, normalized
