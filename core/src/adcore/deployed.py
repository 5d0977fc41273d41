"""One way to open a model (Contract D): a ``.safetensors`` model file or an exported artefact.

    >>> from adcore.deployed import open_model
    >>> model = open_model("padim.safetensors")          # the BaseDetector (adcore.factory.load)  # doctest: +SKIP
    >>> model = open_model("deploy/padim")               # an ExportedModel (adcore export's folder)  # doctest: +SKIP
    >>> model.predict(images).pred_score                                                            # doctest: +SKIP

Both answer the duck interface the production-line pipeline, ``adcore predict``, ``adcore eval``
and the serving and scale-out packages use: ``name``, ``load_size``, ``image_size``, ``tiled``,
``is_fitted``, the four calibration numbers ``threshold_``, ``score_scale_``, ``pixel_threshold_``,
``pixel_scale_``, and ``predict(images) -> Prediction`` on CPU tensors.

An :class:`ExportedModel` runs the artefact's graph (ONNX Runtime, OpenVINO or ``torch.jit``, through
the runner functions of :mod:`adcore.export`) and does outside it exactly what ``BaseDetector`` does
around ``_predict``: resize to ``input_size`` (antialiased when shrinking), resize the map back,
and for an artefact exported from a tiling detector cut the full-resolution image into tiles and
blend their maps (:mod:`adcore.tiling`, the image score being the tiles' maximum), and give the
graph at most the sidecar's ``max_batch`` images per call (a larger batch is split). So an artefact
opened here scores like the torch detector it was exported from, within the export's parity
tolerance. Artefacts run on the CPU: ``device`` is accepted for every model, passed to
``factory.load`` for a model file when it takes one, and for an artefact anything other than
``None``, ``"auto"`` or ``"cpu"`` warns that the artefact runs on the CPU.
"""

from __future__ import annotations

import inspect
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from adcore.errors import ModelFileError
from adcore.prediction import Prediction

__all__ = ["open_model", "ExportedModel", "is_exported_artefact", "SIDECAR"]

#: the sidecar ``adcore export`` writes beside the graph (adcore.export.SIDECAR, spelled out so that
#: recognising an artefact imports no exporter)
SIDECAR = "adcore-export.json"
_RUNTIMES = ("onnx", "openvino", "torchscript")
_CPU_DEVICES = (None, "auto", "cpu")


def is_exported_artefact(path: str | Path) -> bool:
    """Whether ``path`` is an export folder (holding ``adcore-export.json``) or that sidecar itself."""
    path = Path(path)
    return (path.is_dir() and (path / SIDECAR).is_file()) or (path.is_file() and path.name == SIDECAR)


def open_model(path: str | Path, *, device: str | None = None) -> Any:
    """The model at ``path``: a ``BaseDetector`` for a model file, an :class:`ExportedModel` for an
    export folder or its ``adcore-export.json``.

    Raises :class:`~adcore.errors.ModelFileError` for a missing path, a folder that holds no
    export, or a sidecar that is not one adcore can run (the message says what to give instead).
    """
    path = Path(path)
    if path.is_dir():
        if not (path / SIDECAR).is_file():
            raise ModelFileError(f"{path} is a folder but not an exported model (it holds no {SIDECAR}); give a "
                                 ".safetensors model file, or the folder `adcore export` wrote")
        return ExportedModel(path, device=device)
    if path.name == SIDECAR or (path.suffix == ".json" and path.is_file()):
        return ExportedModel(path.parent if path.name == SIDECAR else path, device=device)
    if not path.exists():
        raise ModelFileError(f"model {path} does not exist: give a .safetensors model file (adcore train --out) or an "
                             "export folder (adcore export --out)")
    from adcore.factory import load

    if device is not None and "device" in inspect.signature(load).parameters:
        return load(path, device=device)
    return load(path)


def _read_sidecar(where: Path) -> tuple[Path, dict[str, Any]]:
    sidecar_path = where if where.is_file() else where / SIDECAR
    try:
        sidecar = json.loads(sidecar_path.read_text())
    except OSError as exc:
        raise ModelFileError(f"cannot read {sidecar_path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise ModelFileError(f"{sidecar_path} is not valid JSON ({exc}); re-export the model with adcore export") from exc
    if not isinstance(sidecar, dict) or sidecar.get("format") != "adcore-export":
        raise ModelFileError(f"{sidecar_path} is not an adcore export sidecar (no \"format\": \"adcore-export\"); give "
                             "the folder `adcore export` wrote, or a .safetensors model file")
    from adcore.export import FORMAT_VERSION

    version = sidecar.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelFileError(f"{sidecar_path} has export format version {version!r}; this adcore reads up to "
                             f"{FORMAT_VERSION}: upgrade adcore, or re-export with this version")
    runtime = sidecar.get("runtime")
    if runtime not in _RUNTIMES:
        raise ModelFileError(f"{sidecar_path} names the runtime {runtime!r}; adcore runs {', '.join(_RUNTIMES)}")
    limit = sidecar.get("max_batch")  # optional: artefacts written before it take any batch
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ModelFileError(f"{sidecar_path}: max_batch must be a positive integer or null, got {limit!r}; "
                             "re-export the model with adcore export")
    folder = sidecar_path.parent
    graph = folder / str(sidecar.get("artefact", ""))
    if not graph.is_file():
        raise ModelFileError(f"{sidecar_path} names the graph {sidecar.get('artefact')!r}, which is not in {folder}; "
                             "copy the whole export folder, or re-export")
    return folder, sidecar


class ExportedModel:
    """An artefact written by ``adcore export``, scoring images like the detector it came from.

    Attributes (Contract D): ``name`` (the registry name), ``distribution``, ``image_size`` (the
    graph's ``(h, w)``), ``load_size`` (``image_size``; ``None`` when tiled: tiles are cut from the
    full-resolution image), ``tiled``, ``is_fitted`` (always true), ``threshold_``, ``score_scale_``,
    ``pixel_threshold_``, ``pixel_scale_`` (``None`` when the exported model was not calibrated),
    ``tile_size``, ``tile_overlap``, ``tile_input_size``, ``runtime`` (``"onnx"``, ``"openvino"``,
    ``"torchscript"``), ``path`` (the export folder), ``sidecar`` (its parsed ``adcore-export.json``),
    ``has_maps`` (False for a score-only artefact: its ``anomaly_map`` is zeros and its pixel
    threshold ``None``, so no regions are drawn and ``adcore eval`` reports no pixel metrics),
    ``max_batch`` (the sidecar's images per graph call, ``None``: any; larger batches are split).
    """

    #: images (or tiles) per graph call
    predict_batch_size: int = 8

    def __init__(self, path: str | Path, *, device: str | None = None) -> None:
        self.path, self.sidecar = _read_sidecar(Path(path))
        if device not in _CPU_DEVICES and str(device) not in _CPU_DEVICES:
            warnings.warn(f"device={device!r}: exported artefacts run on the CPU in adcore; {self.path} runs there",
                          stacklevel=2)
        self.device = "cpu"
        sidecar = self.sidecar
        self.name: str = str(sidecar.get("detector", "exported"))
        self.distribution: str = str(sidecar.get("distribution", "unknown"))
        self.runtime: str = sidecar["runtime"]
        self.outputs: list[str] = list(sidecar.get("outputs", ["pred_score", "anomaly_map"]))
        height, width = (int(s) for s in sidecar["input_size"])
        self.image_size: tuple[int, int] = (height, width)
        self.input_size = self.image_size
        self.threshold_ = _number(sidecar.get("threshold"))
        self.score_scale_ = _number(sidecar.get("score_scale"))
        #: False for a score-only artefact (DifferNet): its maps are zeros, and it has no pixel threshold
        self.has_maps = "anomaly_map" in self.outputs
        self.pixel_threshold_ = _number(sidecar.get("pixel_threshold")) if self.has_maps else None
        self.pixel_scale_ = _number(sidecar.get("pixel_scale")) if self.has_maps else None
        tiling = sidecar.get("tiling") or {}
        self.tile_size = _size_or_int(tiling.get("tile_size"))
        self.tile_overlap = float(tiling.get("tile_overlap", 0.25) or 0.0)
        self.tile_input_size = _size_or_int(tiling.get("tile_input_size"))
        #: images per graph call the artefact declares (``None``: any): its graph's memory grows with the batch
        self.max_batch: int | None = sidecar.get("max_batch")
        self._run = _split_calls(self._runner(), self.max_batch)

    def __repr__(self) -> str:
        return f"ExportedModel({str(self.path)!r}, detector={self.name!r}, runtime={self.runtime!r})"

    def _runner(self) -> Callable[[np.ndarray], list[np.ndarray]]:
        import importlib

        return importlib.import_module(f"adcore.export.{self.runtime}").runner(self.path)

    # -- the duck interface ---------------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return True

    @property
    def tiled(self) -> bool:
        return self.tile_size is not None

    @property
    def load_size(self) -> tuple[int, int] | None:
        return None if self.tiled else self.image_size

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """What the artefact records of its detector (for reports; it cannot be refitted)."""
        return {"input_size": self.image_size, "tile_size": self.tile_size, "tile_overlap": self.tile_overlap,
                "tile_input_size": self.tile_input_size, "artefact": str(self.path), "runtime": self.runtime}

    def predict(self, images: torch.Tensor) -> Prediction:
        """Score a ``(B,3,H,W)`` float batch in [0, 1] (uint8 is divided by 255); maps at the input's H×W."""
        from adcore.inputs import validate_images

        from adcore.tiling import predict_tiled_batch

        images = validate_images(images, where="predict", tiling=self.tiled).cpu()
        if self.tiled:
            pred_score, anomaly_map = predict_tiled_batch(images, lambda image, out: self._predict_tiled(image, out)[0])
        else:
            pred_score, anomaly_map = self._predict_resized(images, tuple(images.shape[-2:]))
        label = normalized = None
        if self.threshold_ is not None:
            label = pred_score >= self.threshold_
            if self.score_scale_ is not None:
                from adcore.scoring import normalize_score

                normalized = normalize_score(pred_score, self.threshold_, self.score_scale_)
        return Prediction(pred_score, anomaly_map, label, normalized)

    def score(self, images: torch.Tensor) -> torch.Tensor:
        """Image scores only (``predict(images).pred_score``)."""
        return self.predict(images).pred_score

    # -- what BaseDetector does around _predict, around the graph instead -----------------------
    def _predict_resized(self, images: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        from adcore.inputs import resize_images

        scores, maps = [], []
        for start in range(0, images.shape[0], self.predict_batch_size):
            chunk = resize_images(images[start:start + self.predict_batch_size], self.image_size)
            outputs = dict(zip(self.outputs, self._run(np.ascontiguousarray(chunk.numpy(), dtype=np.float32))))
            score = torch.from_numpy(np.asarray(outputs["pred_score"], dtype=np.float32)).reshape(-1)
            if not self.has_maps:
                maps.append(torch.zeros(score.shape[0], *size))
                scores.append(score)
                continue
            amap = torch.from_numpy(np.asarray(outputs["anomaly_map"], dtype=np.float32))
            if amap.ndim == 4 and amap.shape[1] == 1:
                amap = amap[:, 0]
            amap = F.interpolate(amap[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
            scores.append(score)
            maps.append(amap)
        return torch.cat(scores).clone(), torch.cat(maps).clone()

    def _predict_tiled(self, image: torch.Tensor, out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        from adcore.tiling import score_tiles

        resize_to = None if self.tile_input_size is None else _as_pair(self.tile_input_size)
        tile_scores, blended = score_tiles(image, self.tile_size, self.tile_overlap, resize_to,
                                           self.predict_batch_size, self._predict_resized, out)
        # BaseDetector.aggregate_tile_scores: the maximum (no first-party detector aggregates otherwise)
        return tile_scores.max().float().reshape(()), blended


def _split_calls(run: Callable[[np.ndarray], list[np.ndarray]],
                limit: int | None) -> Callable[[np.ndarray], list[np.ndarray]]:
    """``run`` fed at most ``limit`` images per call (``None``: unchanged), each output concatenated
    over the calls in order; adcore_runtime.Runtime does the same with the sidecar's ``max_batch``."""
    if limit is None:
        return run

    def split(images: np.ndarray) -> list[np.ndarray]:
        if images.shape[0] <= limit:
            return run(images)
        parts = [run(images[start:start + limit]) for start in range(0, images.shape[0], limit)]
        return [np.concatenate([np.asarray(part[index]) for part in parts]) for index in range(len(parts[0]))]

    return split


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def _size_or_int(value: Any) -> int | tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return (int(value[0]), int(value[1]))
    return int(value)


def _as_pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else value
