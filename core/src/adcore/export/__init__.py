"""``adcore export``: a fitted detector as a self-contained ONNX, OpenVINO or TorchScript artefact.

    >>> from adcore.export import export_detector
    >>> export_detector(detector, "deploy/", format="onnx")   # doctest: +SKIP

writes ``deploy/model.onnx`` and ``deploy/adcore-export.json`` (Contract C, docs/deployment.md).
The artefact is checked against the torch detector before anything is written: beyond the
tolerance the export raises :class:`ParityError` and leaves the folder untouched.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adcore.export.errors import ExportDependencyError, ExportError, NotExportableError, ParityError
from adcore.export.parity import Tolerance

__all__ = ["FORMATS", "SIDECAR", "export_detector", "metadata_for", "ExportError", "NotExportableError",
           "ParityError", "ExportDependencyError", "Tolerance"]

#: format name -> (module, runtime name in the sidecar)
FORMATS = {"onnx": "onnx", "openvino": "openvino", "torchscript": "torchscript"}
SIDECAR = "adcore-export.json"
FORMAT_VERSION = 1


def _format_module(name: str) -> Any:
    from adcore.errors import InvalidInputError

    if name not in FORMATS:
        raise InvalidInputError(f"unknown export format {name!r}; choose one of {', '.join(FORMATS)}")
    import importlib

    return importlib.import_module(f"adcore.export.{name}")


def metadata_for(detector: Any, format: str, artefact: str) -> dict[str, Any]:
    """Contract C's sidecar, without ``parity`` (added once the check ran)."""
    from adcore import __version__
    from adcore.export.graph import calibration_of, max_batch, output_names, score_only
    from adcore.lookups import origin_of

    origin = origin_of(type(detector))
    tiling = None
    if getattr(detector, "tiled", False):
        tiling = {name: _jsonable(getattr(detector, name, None)) for name in ("tile_size", "tile_overlap", "tile_input_size")}
    return {"format": "adcore-export", "format_version": FORMAT_VERSION, "artefact": artefact, "runtime": FORMATS[format],
            "detector": origin.name, "distribution": origin.distribution,
            "distribution_version": origin.distribution_version, "adcore_version": __version__,
            "input_size": list(detector.image_size),
            "input": {"name": "images", "dtype": "float32", "layout": "NCHW", "range": [0, 1]},
            "outputs": output_names(detector), "score_only": score_only(detector), **calibration_of(detector),
            "tiling": tiling, "max_batch": max_batch(detector)}


def _training_files(detector: Any, folder: str | Path | None) -> list[Path]:
    from adcore.errors import InvalidInputError
    from adcore.export.parity import training_check_files

    if folder is not None:
        files = training_check_files(folder)
        if not files:
            raise InvalidInputError(f"no training images found in {folder} for the parity check; give the folder of "
                                    "good training images (or a dataset: adcore export --check-data)")
        return files
    recorded = getattr(detector, "training_images_", None)
    return training_check_files(recorded) if isinstance(recorded, str) and recorded else []


def _map_note(parity: dict[str, Any], tolerance: Tolerance) -> str:
    if parity["max_map_diff_over_range"] is None:
        return " (a score-only artefact: no map)"
    return (f", map difference {parity['max_map_diff_over_range']:.3g} of the map's range (allowed "
            f"{tolerance.map_over_range:g})")


def _normalizer(detector: Any) -> Any:
    from adcore.export.graph import calibration_of
    from adcore.scoring import normalize_score

    calibration = calibration_of(detector)
    threshold, scale = calibration["threshold"], calibration["score_scale"]
    if threshold is None or scale is None:
        return None
    return lambda raw: normalize_score(np.asarray(raw, dtype=np.float64), threshold, scale).astype(np.float64)


def _normalized_note(parity: dict[str, Any], tolerance: Tolerance) -> str:
    if "max_normalized_graph_error" not in parity:
        if "max_normalized_abs_diff" not in parity:
            return ""
        return (f", normalized score difference {parity['max_normalized_abs_diff']:.3g} (absolute, allowed "
                f"{tolerance.score_rel:g})")
    return (f", normalized score {parity['max_normalized_graph_error']:.3g} off Contract A of its raw score "
            f"(absolute, allowed {tolerance.score_rel:g})")


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _as_strings(metadata: dict[str, Any]) -> dict[str, str]:
    # metadata_props are strings: plain strings stay as they are, everything else is JSON
    return {key: value if isinstance(value, str) else json.dumps(value) for key, value in metadata.items()}


def export_detector(detector: Any, out: str | Path, format: str = "onnx", *, check: Sequence[str | Path] = (),
                    check_images: torch.Tensor | None = None, check_training: str | Path | None = None,
                    opset: int | None = None, tolerance: Tolerance = Tolerance()) -> dict[str, Any]:
    """Export ``detector`` into the folder ``out`` and return the sidecar written beside the artefact.

    ``check`` (image files or folders) or ``check_images`` (a float tensor) are the parity images;
    by default generated good and defective images plus up to 16 training images from
    ``check_training`` (a folder of good training images) or, without it, from the folder the model
    file records (``training_images_``, set by ``adcore train``) when that folder exists. Raises :class:`NotExportableError` for a
    detector that has no static graph, :class:`ParityError` when the artefact disagrees (nothing is
    written then), :class:`ExportDependencyError` when the format's package is missing.
    """
    from adcore.export.graph import ExportModule, exporting_for, output_names
    from adcore.export.parity import check_images as make_check_images
    from adcore.export.parity import compare, reference_outputs
    from adcore.files import atomic_write_bytes, atomic_write_text

    writer = _format_module(format)
    refusal = getattr(detector, "export_refusal", None)
    if refusal:
        raise NotExportableError(f"{type(detector).__name__} cannot be exported: {refusal}")
    size = tuple(detector.image_size)
    sources: dict[str, Any] = {}
    if check_images is not None:
        images, sources["given"] = check_images, int(check_images.shape[0])
    elif check:
        images = make_check_images(size, check)
        sources["files"] = int(images.shape[0])
    else:
        images = make_check_images(size)
        sources["generated"] = int(images.shape[0])
        training = _training_files(detector, check_training)
        if training:
            images = torch.cat([images, make_check_images(size, training)])
            sources["training"] = len(training)
    images = images.float().contiguous()
    reference = reference_outputs(detector, images)  # first: builds lazily created networks too
    module = ExportModule(detector)
    metadata = metadata_for(detector, format, writer.ARTEFACT)
    outputs = output_names(detector)
    example = images[: min(2, images.shape[0])].clone()
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="adcore-export-") as scratch:
        with exporting_for(format):
            files = writer.write(module, example, Path(scratch), outputs, _as_strings(metadata), opset)
        parity = compare(reference, writer.runner(Path(scratch)), images, tolerance, outputs,
                         normalize=_normalizer(detector))
        if not parity.pop("ok"):
            shapes = parity.pop("shapes", None)
            if shapes:
                raise ParityError(f"the exported {format} graph of {metadata['detector']} returns {shapes} on "
                                  f"{parity['images']} images; nothing was written to {out}. The detector's export "
                                  "graph depends on the batch size it was traced at: report it with the model file")
            raise ParityError(f"the exported {format} artefact of {metadata['detector']} disagrees with the torch "
                              f"detector on {parity['images']} images: score difference {parity['max_score_rel_diff']:.3g} "
                              f"(relative, allowed {tolerance.score_rel:g}){_normalized_note(parity, tolerance)}"
                              f"{_map_note(parity, tolerance)}; nothing was written to {out}. This is a bug in the "
                              "detector's export graph: report it with the model file")
        metadata["parity"] = {**parity, "sources": sources}
        if hasattr(writer, "add_metadata"):  # the parity result travels inside the artefact too
            writer.add_metadata(Path(scratch), _as_strings({"parity": metadata["parity"]}))
        for file in files:
            atomic_write_bytes(out / file.name, file.read_bytes())
    atomic_write_text(out / SIDECAR, json.dumps(metadata, indent=2) + "\n")
    return metadata
