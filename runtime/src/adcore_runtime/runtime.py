"""``Runtime(path).predict(images)``: score images with an exported detector, no torch involved."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from adcore_runtime.artefact import Artefact, normalize_score, read_artefact
from adcore_runtime.errors import BackendError, InvalidInputError
from adcore_runtime.images import resize_image, resize_map, to_image_array
from adcore_runtime.tiling import blend_tiles, tile_grid

__all__ = ["Prediction", "Runtime"]


@dataclass(frozen=True)
class Prediction:
    """adcore's ``Prediction`` with numpy arrays, for a batch of ``B`` images of size ``H×W``.

    Attributes:
        pred_score: ``(B,)`` float32, higher means more anomalous.
        anomaly_map: ``(B, H, W)`` float32 at the input images' own size.
        pred_label: ``(B,)`` bool, ``pred_score >= threshold``; ``None`` without a threshold.
        normalized_score: ``(B,)`` float32 in (0, 1), 0.5 at the threshold; ``None`` when the
            artefact has no threshold and score scale.
    """

    pred_score: np.ndarray
    anomaly_map: np.ndarray
    pred_label: np.ndarray | None = None
    normalized_score: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.pred_score.shape[0])


class _OnnxBackend:
    def __init__(self, graph: Path, threads: int | None, outputs: tuple[str, ...]) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = onnxruntime.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's exception types are not public
            raise BackendError(f"ONNX Runtime cannot load {graph}: {type(exc).__name__}: {exc}") from exc
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, input_name: str, batch: np.ndarray) -> dict[str, np.ndarray]:
        values = self.session.run(None, {input_name: batch})
        return dict(zip(self.output_names, values))


class _OpenVinoBackend:
    def __init__(self, graph: Path, threads: int | None, outputs: tuple[str, ...]) -> None:
        self.outputs = outputs
        try:
            import openvino
        except ImportError as exc:
            raise BackendError("this artefact runs on OpenVINO, which is not installed: "
                               'pip install "adcore-runtime[openvino]"') from exc
        core = openvino.Core()
        # f32, as adcore export's parity check ran it: CPUs with bf16/fp16 units otherwise lower the precision
        # and the scores drift by ~1e-3
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = core.compile_model(core.read_model(str(graph)), "CPU", config)

    def run(self, input_name: str, batch: np.ndarray) -> dict[str, np.ndarray]:
        result = self.compiled({input_name: batch})
        named: dict[str, np.ndarray] = {}
        for position, (output, value) in enumerate(result.items()):
            # an ONNX graph read by OpenVINO may name an output by its internal tensor: the graph's own
            # output order (the sidecar's "outputs") then says which is which
            names = set(output.get_names()) & set(self.outputs)
            name = names.pop() if names else (self.outputs[position] if position < len(self.outputs)
                                              else output.get_any_name())
            named[name] = np.asarray(value)
        return named


class Runtime:
    """An exported adcore detector, ready to score images.

    Args:
        path: the folder ``adcore export`` wrote (holding ``adcore-export.json``), or its ``.onnx``.
        backend: ``"onnx"`` (ONNX Runtime) or ``"openvino"``; default: the artefact's own runtime.
            An ONNX artefact also runs on OpenVINO.
        batch_size: images per graph call; an artefact whose sidecar declares ``max_batch`` (its
            graph's memory grows with the batch: PatchCore, SPADE) is called with at most that many.
        threads: inference threads (default: the backend's choice).
    """

    def __init__(self, path: str | Path, *, backend: str | None = None, batch_size: int = 8,
                 threads: int | None = None) -> None:
        self.artefact: Artefact = read_artefact(path)
        backend = backend or self.artefact.runtime
        if backend not in ("onnx", "openvino"):
            raise InvalidInputError(f"backend must be 'onnx' or 'openvino', got {backend!r}")
        if backend == "onnx" and self.artefact.runtime != "onnx":
            raise InvalidInputError(f"{self.artefact.graph} is an OpenVINO artefact; use backend='openvino'")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidInputError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.backend = backend
        self.batch_size = batch_size
        engine = _OnnxBackend if backend == "onnx" else _OpenVinoBackend
        self._engine = engine(self.artefact.graph, threads, self.artefact.outputs)

    # -- what the artefact says -------------------------------------------------------------------
    @property
    def input_size(self) -> tuple[int, int]:
        return self.artefact.input_size

    @property
    def threshold(self) -> float | None:
        return self.artefact.threshold

    @property
    def pixel_threshold(self) -> float | None:
        return self.artefact.pixel_threshold

    def __repr__(self) -> str:
        return f"Runtime({str(self.artefact.graph)!r}, detector={self.artefact.detector!r}, backend={self.backend!r})"

    # -- scoring ------------------------------------------------------------------------------------
    def predict(self, images: Any) -> Prediction:
        """Score images of ONE size (like adcore's ``detector.predict``): a list of paths, Pillow
        images or arrays, or one ``(B,3,H,W)`` / ``(B,H,W,3)`` array. Maps come back at that size;
        for images of mixed sizes use :meth:`predict_each`."""
        arrays = self._as_arrays(images)
        sizes = {a.shape[-2:] for a in arrays}
        if len(sizes) > 1:
            raise InvalidInputError(f"predict takes images of one size, got {sorted(sizes)}; "
                                    "use predict_each for mixed sizes")
        parts = [self._score(arrays[i:i + self.batch_size]) for i in range(0, len(arrays), self.batch_size)]
        return self._finish(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))

    def predict_each(self, images: Iterable[Any]) -> Iterator[Prediction]:
        """One single-image :class:`Prediction` per image, in order, each map at its image's own size."""
        for image in images:
            score, amap = self._score([to_image_array(image)])
            yield self._finish(score, amap)

    def _as_arrays(self, images: Any) -> list[np.ndarray]:
        if isinstance(images, np.ndarray) and images.ndim == 4:
            return [to_image_array(image) for image in images]
        if isinstance(images, (str, Path, np.ndarray)) or hasattr(images, "mode"):
            images = [images]
        if not isinstance(images, Sequence) or not images:
            raise InvalidInputError("predict takes a non-empty list of images (paths, Pillow images or arrays)")
        return [to_image_array(image) for image in images]

    def _score(self, arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Raw scores ``(B,)`` and maps ``(B,H,W)`` at the images' size, for same-size images."""
        if self.artefact.tiling is not None:
            scored = [self._score_tiled(array) for array in arrays]
            return np.array([s for s, _ in scored], dtype=np.float32), np.stack([m for _, m in scored])
        return self._score_resized(arrays)

    def _score_tiled(self, image: np.ndarray) -> tuple[np.float32, np.ndarray]:
        """One image tile by tile, as ``BaseDetector._predict_tiled``: the maximum tile score, blended maps."""
        tiling = self.artefact.tiling
        height, width = image.shape[-2:]
        source = image if tiling.tile_input_size is None else resize_image(image, tiling.tile_input_size)
        grid = tile_grid(source.shape[-2], source.shape[-1], tiling.tile_size, tiling.tile_overlap)
        boxes = grid.boxes()
        scores, maps = [], []
        for start in range(0, len(boxes), self.batch_size):
            chunk = boxes[start:start + self.batch_size]
            score, amap = self._score_resized([source[:, t:t + grid.tile_h, l:l + grid.tile_w] for t, l in chunk])
            scores.append(score)
            maps.extend((t, l, m) for (t, l), m in zip(chunk, amap))
        blended = blend_tiles(grid, maps, tiling.tile_overlap)
        if blended.shape != (height, width):
            blended = resize_map(blended, (height, width))
        return np.concatenate(scores).max(), blended

    def _score_resized(self, arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """``BaseDetector._predict_resized``: same-size images to ``input_size``, the graph, maps back."""
        size = self.input_size
        batch = np.stack([resize_image(a, size) for a in arrays]).astype(np.float32)
        outputs = self._run_graph(batch)
        try:
            score = np.asarray(outputs["pred_score"], dtype=np.float32).reshape(-1)
            amap = np.asarray(outputs["anomaly_map"], dtype=np.float32)
        except KeyError as exc:
            raise BackendError(f"{self.artefact.graph} has outputs {sorted(outputs)}, not pred_score and "
                               "anomaly_map; re-export the model") from exc
        if amap.ndim == 4 and amap.shape[1] == 1:
            amap = amap[:, 0]
        if score.shape[0] != len(arrays) or amap.ndim != 3 or amap.shape[0] != len(arrays):
            raise BackendError(f"{self.artefact.graph} returned scores {score.shape} and maps {amap.shape} "
                               f"for {len(arrays)} images")
        maps = np.stack([resize_map(m, tuple(a.shape[-2:])) for m, a in zip(amap, arrays)])
        return score, maps

    def _run_graph(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """The engine on ``batch``, split into calls of at most the artefact's ``max_batch`` images
        (as adcore.deployed._split_calls), each output concatenated in order."""
        limit = self.artefact.max_batch
        if limit is None or batch.shape[0] <= limit:
            return self._engine.run(self.artefact.input_name, batch)
        parts = [self._engine.run(self.artefact.input_name, batch[start:start + limit])
                 for start in range(0, batch.shape[0], limit)]
        return {name: np.concatenate([np.asarray(part[name]) for part in parts]) for name in parts[0]}

    def _finish(self, score: np.ndarray, amap: np.ndarray) -> Prediction:
        threshold, scale = self.artefact.threshold, self.artefact.score_scale
        label = None if threshold is None else score >= np.float32(threshold)
        normalized = None
        if threshold is not None and scale is not None:
            # computed here rather than read from the graph's output, so predict's batches need no bookkeeping;
            # the graph's normalized_score is the same formula (Contract A)
            normalized = normalize_score(score, threshold, scale)
        return Prediction(pred_score=score, anomaly_map=amap, pred_label=label, normalized_score=normalized)
