"""Reading an ``adcore export`` artefact: where its graph is, and what its sidecar says.

An artefact is a folder holding ``adcore-export.json`` (the sidecar) and the graph it names
(``model.onnx``, or ``model.xml`` + ``model.bin``), or the ``.onnx`` file itself, whose
``metadata_props`` carry the same keys as strings when no sidecar lies beside it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adcore_runtime.errors import ArtefactError, InvalidInputError

__all__ = ["SIDECAR_NAME", "FORMAT", "FORMAT_VERSION", "Artefact", "Tiling", "read_artefact", "normalize_score"]

SIDECAR_NAME = "adcore-export.json"
FORMAT = "adcore-export"
#: the newest sidecar format this runtime reads
FORMAT_VERSION = 1
_RUNTIMES = ("onnx", "openvino")


@dataclass(frozen=True)
class Tiling:
    """How a tiling detector cuts an image (``adcore.tiling``): tile size, overlap, optional pre-resize."""

    tile_size: tuple[int, int]
    tile_overlap: float
    tile_input_size: tuple[int, int] | None


def _tiling(value: Any, source: Path) -> Tiling | None:
    if value is None:
        return None
    from adcore_runtime.tiling import to_size

    expected = f"{source}: tiling must be {{tile_size, tile_overlap, tile_input_size}} or null, got {value!r}"
    if not isinstance(value, dict) or "tile_size" not in value:
        raise ArtefactError(f"{expected}; re-export the model")
    overlap = value.get("tile_overlap") or 0.0
    if isinstance(overlap, bool) or not isinstance(overlap, (int, float)) or not 0.0 <= overlap < 1.0:
        raise ArtefactError(f"{expected} (tile_overlap {overlap!r} is not in [0, 1)); re-export the model")
    try:
        pre = value.get("tile_input_size")
        return Tiling(to_size(value["tile_size"]), float(overlap), None if pre is None else to_size(pre))
    except InvalidInputError as exc:
        raise ArtefactError(f"{expected} ({exc}); re-export the model") from None


@dataclass(frozen=True)
class Artefact:
    """What the runtime needs from an artefact (``metadata`` keeps the whole sidecar)."""

    graph: Path
    runtime: str
    input_size: tuple[int, int]
    input_name: str
    input_dtype: str
    outputs: tuple[str, ...]
    threshold: float | None
    score_scale: float | None
    pixel_threshold: float | None
    pixel_scale: float | None
    detector: str
    #: ``None``, or ``Tiling`` for a tiling detector (the graph then scores one tile)
    tiling: Tiling | None = None
    #: images per graph call at most (the sidecar's optional ``max_batch``); ``None``: any
    max_batch: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict, repr=False)


def normalize_score(raw: Any, threshold: float, scale: float) -> Any:
    """Contract A: ``1 / (1 + exp(-(raw - threshold) / scale))``; 0.5 exactly at the threshold."""
    import numpy as np

    z = -(np.asarray(raw, dtype=np.float64) - threshold) / scale
    return (1.0 / (1.0 + np.exp(np.clip(z, -700.0, 700.0)))).astype(np.float32)


def _metadata_from_onnx(path: Path) -> dict[str, Any]:
    try:
        import onnxruntime
    except ImportError as exc:  # pragma: no cover - a dependency of this distribution
        raise ArtefactError(f"reading {path} needs onnxruntime (pip install onnxruntime)") from exc
    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own non-exported exception types
        raise ArtefactError(f"{path} is not a readable ONNX model ({type(exc).__name__}: {exc}). "
                            "Give the folder `adcore export` wrote, or its model.onnx") from exc
    props = session.get_modelmeta().custom_metadata_map
    if props.get("format") != FORMAT:
        raise ArtefactError(f"{path} is an ONNX model but not an adcore export (its metadata has no "
                            f"format={FORMAT!r}, and no {SIDECAR_NAME} lies beside it). Export it with `adcore export`")
    metadata: dict[str, Any] = {}
    for key, text in props.items():  # values are stored as strings: JSON where they are not plain text
        try:
            metadata[key] = json.loads(text)
        except ValueError:
            metadata[key] = text
    return metadata


def _locate(path: Path) -> tuple[dict[str, Any], Path, Path]:
    """(metadata, folder the graph is in, where the metadata came from)."""
    if not path.exists():
        raise ArtefactError(f"artefact {path} does not exist; give the folder `adcore export --out DIR` wrote")
    if path.is_dir():
        sidecar = path / SIDECAR_NAME
        if not sidecar.is_file():
            found = ", ".join(sorted(p.name for p in path.iterdir())[:10]) or "nothing"
            raise ArtefactError(f"{path} has no {SIDECAR_NAME} (it holds {found}); is it the folder `adcore export` "
                                "wrote? Re-export the model, or give the .onnx file if it carries its metadata")
    elif path.name == SIDECAR_NAME or path.suffix.lower() == ".json":
        sidecar = path
    elif path.suffix.lower() == ".safetensors":
        raise ArtefactError(f"{path} is an adcore model file, not an exported artefact; export it first with "
                            f"`adcore export {path} --format onnx --out DIR`, or score it with `adcore predict`")
    elif path.suffix.lower() in (".onnx", ".xml"):
        sidecar = path.parent / SIDECAR_NAME
        if not sidecar.is_file():
            if path.suffix.lower() == ".xml":
                raise ArtefactError(f"{path} has no {SIDECAR_NAME} beside it; an OpenVINO artefact needs its sidecar")
            return _metadata_from_onnx(path), path.parent, path
    else:
        raise ArtefactError(f"{path} is not an adcore export: give the folder `adcore export` wrote "
                            f"(with {SIDECAR_NAME}), or its .onnx file")
    try:
        metadata = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ArtefactError(f"cannot read {sidecar}: {exc}. Is it a complete adcore export sidecar? "
                            "Re-export the model") from exc
    if not isinstance(metadata, dict):
        raise ArtefactError(f"{sidecar} is not an adcore export sidecar (a JSON object is expected)")
    return metadata, sidecar.parent, sidecar


def _optional_float(metadata: dict[str, Any], key: str, source: Path, positive: bool = False) -> float | None:
    value = metadata.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or (positive and value <= 0):
        raise ArtefactError(f"{source}: {key} must be {'a positive' if positive else 'a finite'} number or null, "
                            f"got {value!r}; re-export the model")
    return float(value)


def _max_batch(metadata: dict[str, Any], source: Path) -> int | None:
    # optional (artefacts exported before it take any batch), so format_version stays 1
    value = metadata.get("max_batch")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ArtefactError(f"{source}: max_batch must be a positive integer or null, got {value!r}; re-export the model")
    return value


def read_artefact(path: str | Path) -> Artefact:
    """Read and check an artefact; every problem is an :class:`ArtefactError` saying what to do."""
    metadata, folder, source = _locate(Path(path))
    if metadata.get("format") != FORMAT:
        raise ArtefactError(f"{source} is not an adcore export (format is {metadata.get('format')!r}, "
                            f"expected {FORMAT!r})")
    version = metadata.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ArtefactError(f"{source}: format_version must be a positive integer, got {version!r}; re-export the model")
    if version > FORMAT_VERSION:
        raise ArtefactError(f"{source} has format_version {version}, newer than this adcore-runtime reads "
                            f"(up to {FORMAT_VERSION}); upgrade it: pip install -U adcore-runtime")
    runtime = metadata.get("runtime")
    if runtime == "torchscript":
        raise ArtefactError(f"{source} is a TorchScript export, which needs torch; adcore-runtime runs ONNX and "
                            "OpenVINO artefacts. Export with --format onnx, or score it with adcore")
    if runtime not in _RUNTIMES:
        raise ArtefactError(f"{source}: unknown runtime {runtime!r}; expected one of {', '.join(_RUNTIMES)}")
    tiling = _tiling(metadata.get("tiling"), source)
    graph = Path(path) if Path(path).suffix.lower() in (".onnx", ".xml") else folder / str(metadata.get("artefact", ""))
    if not graph.is_file():
        raise ArtefactError(f"{source} names the graph {metadata.get('artefact')!r}, but {graph} is missing; "
                            "copy the whole export folder")
    size = metadata.get("input_size")
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size)):
        raise ArtefactError(f"{source}: input_size must be [height, width], got {size!r}; re-export the model")
    spec = metadata.get("input") or {}
    dtype = spec.get("dtype", "float32")
    if dtype != "float32" or spec.get("layout", "NCHW") != "NCHW":
        raise ArtefactError(f"{source}: this runtime feeds NCHW float32 images in [0, 1], the artefact wants "
                            f"{spec.get('layout')} {dtype}; upgrade adcore-runtime or re-export the model")
    outputs = tuple(metadata.get("outputs") or ("pred_score", "anomaly_map"))
    if "pred_score" in outputs and "anomaly_map" not in outputs and metadata.get("score_only") in (True, "true"):
        raise ArtefactError(f"{source} is a score-only export (its detector's map cannot be an inference graph), "
                            "and adcore-runtime writes maps: run it with adcore (adcore predict, "
                            "adcore.deployed.open_model) or with ONNX Runtime directly (its output pred_score)")
    if "pred_score" not in outputs or "anomaly_map" not in outputs:
        raise ArtefactError(f"{source}: outputs must include pred_score and anomaly_map, got {list(outputs)}")
    return Artefact(
        graph=graph, runtime=runtime, input_size=(size[0], size[1]), input_name=str(spec.get("name", "images")),
        input_dtype=dtype, outputs=outputs,
        threshold=_optional_float(metadata, "threshold", source),
        score_scale=_optional_float(metadata, "score_scale", source, positive=True),
        pixel_threshold=_optional_float(metadata, "pixel_threshold", source),
        pixel_scale=_optional_float(metadata, "pixel_scale", source, positive=True),
        detector=str(metadata.get("detector", "?")), tiling=tiling, max_batch=_max_batch(metadata, source),
        metadata=metadata)
