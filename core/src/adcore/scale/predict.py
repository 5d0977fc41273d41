"""``adcore predict --executor ray``: the input listing as a Ray Dataset, scored by an actor pool.

The driver lists the inputs (:func:`adcore.line.sources.collect_inputs`), opens the run's output
folder exactly as the local predict does (:func:`adcore.line.pipeline.open_run`: same identity, so
a run started on Ray resumes locally and the other way round) and turns the images not yet scored
into a Ray Dataset of ``(path, name)`` rows. ``map_batches`` runs them through a pool of actors,
each of which opens the model once (:func:`_open_model`, from the model's bytes shipped through
Ray's object store, so workers need no copy of the model file) and, per batch, decodes the images,
scores them (:func:`adcore.line.pipeline.score_batch`) and does everything after the detector
(:func:`adcore.line.sink.render`: map at the image's size, defect regions, heatmap and mask PNGs).

An exported ONNX or OpenVINO artefact is scored by actors that import neither torch nor adcore
(:class:`adcore_runtime.batches.BatchScorer`: adcore-runtime's decoding, resize rule and graph, and
its copy of the line's regions and heatmap drawing), so its workers need only adcore-runtime; its
rows equal the local predict's to float32 rounding (numpy's resize is not torch's to the last bit;
docs/scale-out.md). Without adcore-runtime on the driver, or for a TorchScript or score-only
artefact, the actors run adcore as for a model file.

What travels back is compact: one JSON row per image plus the PNG bytes it will be written as
(nothing at all but the row with ``--no-heatmaps``); an anomaly map never crosses the network. The
driver writes the PNGs and appends the rows with the local predict's own writer
(:func:`adcore.line.sink.write_rendered`, :class:`adcore.line.outputs.RunOutputs`), so the files
are byte for byte those of the local predict, in completion order rather than input order.

A killed actor loses nothing: Ray restarts it and re-runs the batches it held (Ray Data's actor
pools default to unbounded ``max_restarts`` and ``max_task_retries``; a test kills one), and the driver writes each input path at most once (a result seen
again from a retried batch is dropped), so the outputs hold every input exactly once. A stopped
run (Ctrl-C, SIGTERM) keeps every row written; ``--resume`` continues it.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adcore.line.outputs import RunOutputs
from adcore.line.pipeline import (PredictOptions, RunSummary, StopRequest, finish_run, open_run, score_batch)
from adcore.line.sink import Rendered, print_result, write_rendered
from adcore.line.sources import InputImage
from adcore.scale.cluster import TIMELINE, ClusterOptions, connect

__all__ = ["RayPredictOptions", "ModelPayload", "predict_on_ray", "MAX_BLOCKS"]

#: the most blocks the input listing is cut into (a million inputs must not make Ray Data plan a
#: hundred thousand blocks)
MAX_BLOCKS = 10_000
#: batches per block: each block costs the driver ~14 ms of CPU in Ray Data's executor (measured:
#: 400 bottle images, 2 actors, blocks of 1 or 4 batches), taken from the actors on a small machine;
#: a dead actor's re-run and the results' arrival are per block, so blocks stay small
BATCHES_PER_BLOCK = 4
#: blocks each actor gets at least, so that a short run still spreads over the whole pool
MIN_BLOCKS_PER_ACTOR = 4


def _open_model(path: Path) -> Any:
    """Open a model in an actor (and in the driver): a model file or an exported artefact
    (:func:`adcore.deployed.open_model`, the one opener)."""
    from adcore.deployed import open_model

    return open_model(path)


@dataclass(frozen=True)
class RayPredictOptions:
    """How the pool is made: ``actors`` (``None``: the cluster's CPUs divided by ``cpus_per_actor``),
    the resources of each actor, the cluster to run on and an optional ``runtime_env`` for the actors."""

    actors: int | None = None
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    cluster: ClusterOptions = field(default_factory=ClusterOptions)
    runtime_env: dict[str, Any] | None = None


@dataclass(frozen=True)
class ModelPayload:
    """A model as bytes: a ``.safetensors`` file, or an exported artefact's folder (every file in it),
    so an actor on a machine without the driver's disk can open it."""

    entry: str
    files: dict[str, bytes]

    @classmethod
    def of(cls, path: Path) -> ModelPayload:
        path = Path(path)
        if path.is_dir() or path.name == "adcore-export.json":
            folder = path if path.is_dir() else path.parent
            files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
            return cls("" if path.is_dir() else path.name, files)
        return cls(path.name, {path.name: path.read_bytes()})

    def materialize(self, folder: Path) -> Path:
        """Write the files under ``folder``; returns the path to open."""
        for name, data in self.files.items():
            target = folder.joinpath(*name.split("/"))
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)  # a private scratch copy of a file that was written atomically once
        return folder / self.entry if self.entry else folder


class _Scorer:
    """One actor: the model opened once; each call decodes, scores and renders one batch."""

    def __init__(self, model: Any, *, heatmaps: bool, masks: bool, min_area: int, side_by_side: bool,
                 max_pixels: int | None, threads: int) -> None:
        self._timing: dict[str, Any] | None = {"pid": os.getpid(), "init_start": time.time()}
        from adcore.process import prepare_process

        prepare_process()  # an actor's process is adcore's own: set it up before torch and timm
        import torch

        from adcore.line.heatmaps import HeatmapStyle
        from adcore.line.sink import Calibration

        torch.set_num_threads(max(1, threads))
        # a reference wrapped in a list: fetched here, so a restarted actor fetches it again (the driver
        # holds it for the whole run) and Ray does not treat it as a constructor argument it must keep
        payload = model if isinstance(model, ModelPayload) else _get(model[0])
        self._scratch = tempfile.TemporaryDirectory(prefix="adcore-ray-model-")
        self.detector = _open_model(payload.materialize(Path(self._scratch.name)))
        self.calibration = Calibration.of(self.detector)
        self.settings = {"heatmaps": heatmaps, "masks": masks, "min_area": min_area,
                         "style": HeatmapStyle(side_by_side=side_by_side)}
        self.max_pixels = max_pixels
        self._timing["model_ready"] = time.time()

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        """``batch``: rows of ``paths``/``names`` lists, each one batch of the local predict."""
        import numpy as np

        from adcore.line.decoding import decode
        from adcore.line.sink import render

        out: dict[str, list[Any]] = {"name": [], "result": [], "heatmap": [], "mask": []}
        for paths, names in zip(batch["paths"], batch["names"], strict=True):
            items = [InputImage(str(path), str(name)) for path, name in zip(paths, names, strict=True)]
            decoded = [decode(item, self.detector.load_size, keep_full=self.settings["heatmaps"],
                              max_pixels=self.max_pixels) for item in items]
            for work in score_batch(self.detector, decoded):
                rendered = render(work, self.calibration, **self.settings)
                out["name"].append(rendered.name)
                out["result"].append(json.dumps(rendered.result, ensure_ascii=True))
                out["heatmap"].append(rendered.heatmap or b"")
                out["mask"].append(rendered.mask or b"")
        out["timing"] = self._first_call_timing(len(out["name"]))
        return {key: np.array(values, dtype=object) for key, values in out.items()}

    def _first_call_timing(self, rows: int) -> list[str]:
        """The ``timing`` column: this actor's start-up (``init_start``, ``model_ready``, ``first_done``,
        seconds since the epoch) as JSON on the first row of its first call, then empty strings (the
        torch-free actor, ``adcore_runtime.batches.BatchScorer``, returns the same column)."""
        if self._timing is None or rows == 0:
            return [""] * rows
        timing, self._timing = {**self._timing, "first_done": time.time()}, None
        return [json.dumps(timing)] + [""] * (rows - 1)


def _block_count(batches: int, actors: int) -> int:
    """How many blocks ``batches`` rows are cut into: :data:`BATCHES_PER_BLOCK` each, but at least
    :data:`MIN_BLOCKS_PER_ACTOR` per actor (one batch each at most) and at most :data:`MAX_BLOCKS`."""
    return max(1, min(max(-(-batches // BATCHES_PER_BLOCK), min(batches, actors * MIN_BLOCKS_PER_ACTOR)), MAX_BLOCKS))


def _get(reference: Any) -> ModelPayload:
    import ray

    return ray.get(reference)


def _pool_size(ray: Any, options: RayPredictOptions) -> int:
    """The pool's size, refused when the cluster cannot hold it (Ray would wait for ever)."""
    from adcore.errors import ConfigurationError

    resources = ray.cluster_resources()
    cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    actors = options.actors or max(1, int(cpus // max(options.cpus_per_actor, 1e-9)))
    if actors * options.cpus_per_actor > cpus or actors * options.gpus_per_actor > gpus:
        raise ConfigurationError(f"{actors} actor(s) × {options.cpus_per_actor:g} CPU / {options.gpus_per_actor:g} GPU "
                                 f"do not fit the Ray cluster ({cpus:g} CPUs, {gpus:g} GPUs); give fewer --actors, "
                                 "smaller --cpus-per-actor/--gpus-per-actor, or join a bigger cluster (--address)")
    return actors


def predict_on_ray(detector: Any, model_file: Path, inputs: list[InputImage], options: PredictOptions,
                   scale: RayPredictOptions | None = None, *, given: list[str] | None = None,
                   echo: Callable[[dict], None] | None = print_result,
                   warn: Callable[[str], None] = lambda text: print(f"adcore predict: {text}", file=sys.stderr,
                                                                    flush=True)) -> RunSummary:
    """Score ``inputs`` into ``options.out`` on Ray (see the module docstring); the same contract
    as :func:`adcore.line.pipeline.run_predictions` (``detector`` is the driver's copy: its
    calibration names the run and draws the contact sheet; the actors open their own)."""
    scale = scale or RayPredictOptions()
    # connect marks the run's ray.init: here, or before the call (the command line starts Ray while it
    # lists the inputs and opens the model: adcore.scale.cluster.connect_while)
    timeline = TIMELINE
    timeline.start_run()
    with connect(scale.cluster) as ray:
        actors = _pool_size(ray, scale)  # refused before the output folder holds anything
        calibration, outputs, todo, summary = open_run(detector, model_file, inputs, options, given=given, warn=warn)
        try:
            if todo:
                _stream(ray, detector, model_file, todo, options, scale, actors, outputs, summary, echo, warn,
                        timeline)
        finally:
            outputs.close()
            timeline.mark("outputs_closed")
    summary = finish_run(detector, options, calibration, summary)
    timeline.mark("finished")
    return summary


def _runtime_scorer(detector: Any, warn: Callable[[str], None]) -> Any:
    """The actor class: adcore-runtime's torch-free :class:`adcore_runtime.batches.BatchScorer` for an
    ONNX or OpenVINO artefact with maps when adcore-runtime is installed here, else :class:`_Scorer`
    (adcore and torch in every actor; a model file, a TorchScript or score-only artefact)."""
    if getattr(detector, "runtime", None) not in ("onnx", "openvino") or not getattr(detector, "has_maps", False):
        return _Scorer
    try:  # optional: core never needs adcore-runtime, and imports it only here
        from adcore_runtime.batches import BatchScorer
    except ImportError as exc:
        warn(f"adcore-runtime is not installed here ({exc}): the artefact is scored by actors running adcore and "
             "torch; pip install adcore-runtime (here and on the workers) for actors that need neither")
        return _Scorer
    return BatchScorer


def _stream(ray: Any, detector: Any, model_file: Path, todo: list[InputImage], options: PredictOptions,
            scale: RayPredictOptions, actors: int, outputs: RunOutputs, summary: RunSummary,
            echo: Callable[[dict], None] | None, warn: Callable[[str], None], timeline: Any) -> None:
    """Run the dataset and write each result as it arrives (each input path at most once)."""
    by_name = {item.name: item for item in todo}
    written: set[str] = set()
    duplicates = 0
    # one row per batch of the local predict (the same images per detector call: the same floats)
    rows = [{"paths": [item.path for item in todo[start:start + options.batch_size]],
             "names": [item.name for item in todo[start:start + options.batch_size]]}
            for start in range(0, len(todo), options.batch_size)]
    payload = ModelPayload.of(model_file)
    scorer = _runtime_scorer(detector, warn)
    # held until the run ends: restarted actors read it again. A torch-free actor gets plain
    # (entry, files): unpickling a ModelPayload would import adcore, and with it torch
    model = ray.put(payload if scorer is _Scorer else (payload.entry, payload.files))
    dataset = ray.data.from_items(rows, override_num_blocks=_block_count(len(rows), actors)).map_batches(
        scorer, batch_size=1, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=scale.cpus_per_actor, num_gpus=scale.gpus_per_actor or None, runtime_env=scale.runtime_env,
        fn_constructor_kwargs={"model": [model], "heatmaps": options.heatmaps,
                               "masks": options.masks, "min_area": options.min_area,
                               "side_by_side": options.side_by_side, "max_pixels": options.max_pixels,
                               "threads": max(1, int(scale.cpus_per_actor))})
    timeline.mark("stream_start")
    with StopRequest() as stop:
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            timeline.mark("first_result", again=False)
            timeline.actors += [json.loads(str(text)) for text in batch["timing"] if text]
            for name, text, heatmap, mask in zip(batch["name"], batch["result"], batch["heatmap"], batch["mask"],
                                                 strict=True):
                result = json.loads(str(text))
                if result["path"] in written or str(name) not in by_name:
                    duplicates += 1  # a batch re-run after its actor died: already written
                    continue
                row = write_rendered(outputs, Rendered(str(name), result, bytes(heatmap) or None, bytes(mask) or None))
                outputs.append(row)
                written.add(result["path"])
                if result.get("error") is not None:
                    summary.skipped.append((result["path"], result["error"]))
                    warn(f"skipped {result['path']!r}: {result['error']}")
                else:
                    summary.scored += 1
                if echo is not None:
                    echo(row)
            if stop.signal_name or (options.strict and summary.skipped):
                break
        timeline.mark("last_result")
        if stop.signal_name:
            warn(f"{stop.signal_name} received: the images scored so far are written and flushed; stopping")
        summary.stopped_by = stop.signal_name
    if duplicates:
        warn(f"{duplicates} result(s) of re-run batches were already written and were dropped (each input is "
             "written once)")
    missing = len(todo) - len(written)
    if missing and summary.stopped_by is None and not (options.strict and summary.skipped):
        warn(f"{missing} image(s) came back from no actor; rerun with --resume to score them")
