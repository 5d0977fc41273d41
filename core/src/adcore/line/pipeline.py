"""``adcore predict`` as a production-line pipeline: decode ahead, score in batches, write behind.

Three stages run at once: decoding threads (:mod:`adcore.line.decoding`) read the next images in
input order, the calling thread scores ``batch_size`` of them per ``detector.predict`` call, and the
writer thread (:mod:`adcore.line.sink`) finds regions, writes heatmaps/masks and appends each
image's row (:mod:`adcore.line.outputs`). Every stage holds a bounded number of images, so memory
is flat over any number of inputs.

A stop signal (SIGTERM, what ``docker stop`` sends, or Ctrl-C) is a request: the batch being scored
is finished and written, the writer drains, both output files are flushed and ``fsync``-ed, and the
run reports how far it got (``--resume`` continues it). A second Ctrl-C stops at once.
"""

from __future__ import annotations

import hashlib
import heapq
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from adcore.line.decoding import Decoded, decoded_in_order, decode
from adcore.line.heatmaps import HeatmapStyle, overlay, png_bytes, render_contact_sheet
from adcore.line.outputs import RunOutputs, read_results
from adcore.line.sink import Calibration, Scored, Sink, map_at_size, normalized_map, print_result
from adcore.line.sources import InputImage

__all__ = ["finish_run", "PredictOptions", "RunSummary", "run_predictions", "open_run", "score_batch", "outputs_count",
           "write_contact_sheet", "StopRequest", "file_sha256", "most_anomalous", "NO_THRESHOLD"]

NO_THRESHOLD = ("the model has no threshold (it was not calibrated), so nothing can be flagged: 'anomalous' is "
                "empty; calibrate it (adcore train calibrates on held-out good images) to get verdicts")
NO_PIXEL_THRESHOLD = ("the model has no pixel threshold (calibrated before adcore had them, or not at all): no "
                      "defect regions, and heatmaps are scaled per image; recalibrate it to get both")


@dataclass(frozen=True)
class PredictOptions:
    """The knobs of a run (``adcore predict --help`` explains each)."""

    out: Path
    batch_size: int = 8
    workers: int = 2
    heatmaps: bool = True
    masks: bool = False
    side_by_side: bool = False
    min_area: int = 1
    resume: bool = False
    strict: bool = False
    contact_sheet: int = 0
    max_pixels: int | None = None

    def identity(self) -> dict[str, Any]:
        """The options that change what the outputs hold (a resumed run must keep them)."""
        return {"heatmaps": self.heatmaps, "masks": self.masks, "side_by_side": self.side_by_side,
                "min_area": self.min_area}


@dataclass
class RunSummary:
    """How a run ended: images scored now, files skipped, images already done, and the signal that
    stopped it early (``None`` if it ran to the end)."""

    scored: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    already_done: int = 0
    stopped_by: str | None = None
    contact_sheet: Path | None = None


def file_sha256(path: Path) -> str:
    """The model's identity for ``--resume``: a model file's sha256; for an export folder (or its
    ``adcore-export.json``) one sha256 over the folder's files, each by name and content."""
    path = Path(path)
    if path.is_file() and path.name != "adcore-export.json":
        return _sha256_of([path], named=False)
    folder = path if path.is_dir() else path.parent
    return _sha256_of(sorted(p for p in folder.iterdir() if p.is_file()), named=True)


def _sha256_of(files: list[Path], *, named: bool) -> str:
    digest = hashlib.sha256()
    for file in files:
        if named:
            digest.update(file.name.encode() + b"\0")
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


class _StopRequest:
    """SIGTERM/SIGINT set a flag checked between batches (main thread only; restored after)."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGTERM, signal.SIGINT):
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, number: int, frame: Any) -> None:
        if self.signal_name is not None and number == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.signal_name = signal.Signals(number).name  # announced by the loop: no I/O inside a handler

    def __exit__(self, *exc_info: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)


#: the stop-signal handler, for other executors of the same run (adcore.scale)
StopRequest = _StopRequest


def _predict_batch(detector: Any, group: list[Decoded]) -> Iterator[Scored | Decoded]:
    """Score images of one size together; if the detector refuses the batch, each on its own so a
    refused image becomes a skipped file, not a stopped run."""
    from adcore.errors import InvalidInputError

    try:
        prediction = detector.predict(torch.stack([d.image for d in group]))
    except InvalidInputError as exc:
        if len(group) == 1:
            group[0].error = f"the detector refused {group[0].item.path}: {exc}"
            group[0].image = group[0].full = None
            yield group[0]
            return
        for decoded in group:
            yield from _predict_batch(detector, [decoded])
        return
    normalized = prediction.normalized_score
    for index, decoded in enumerate(group):
        yield Scored(decoded, float(prediction.pred_score[index]),
                     None if normalized is None else float(normalized[index]),
                     None if prediction.pred_label is None else bool(prediction.pred_label[index]),
                     prediction.anomaly_map[index].detach().cpu())
        decoded.image = None  # the writer needs only the full image and the map


def score_batch(detector: Any, batch: list[Decoded]) -> Iterator[Scored | Decoded]:
    """Scored images and skipped files of ``batch``, in its order (a refused image becomes a skipped file)."""
    groups: list[list[Decoded]] = []
    for decoded in batch:  # consecutive images of one size share a predict call; a bad file stands alone
        if decoded.error is None and groups and groups[-1][0].error is None \
                and groups[-1][0].image.shape == decoded.image.shape:
            groups[-1].append(decoded)
        else:
            groups.append([decoded])
    for group in groups:
        if group[0].error is not None:
            yield group[0]
        else:
            yield from _predict_batch(detector, group)


def open_run(detector: Any, model_file: Path, inputs: list[InputImage], options: PredictOptions, *,
             given: list[str] | None, warn: Callable[[str], None]) -> tuple[Calibration, RunOutputs, list[InputImage],
                                                                          RunSummary]:
    """The start every executor shares: warnings about a missing threshold, the run's identity (so a
    run resumes under any executor), its output folder, and the inputs not yet scored there."""
    calibration = Calibration.of(detector)
    notes: dict[str, Any] = {"detector": _detector_label(detector), "threshold": calibration.threshold,
                             "score_scale": calibration.score_scale, "pixel_threshold": calibration.pixel_threshold,
                             "pixel_scale": calibration.pixel_scale, "warnings": []}
    if calibration.threshold is None:
        warn(NO_THRESHOLD)
        notes["warnings"].append(NO_THRESHOLD)
    elif not calibration.pixels:
        warn(NO_PIXEL_THRESHOLD)
        notes["warnings"].append(NO_PIXEL_THRESHOLD)
    identity = {"model_sha256": file_sha256(model_file),
                "inputs": list(given) if given is not None else [item.path for item in inputs],
                **options.identity()}
    summary = RunSummary()
    outputs = RunOutputs(options.out, identity, resume=options.resume, notes=notes)
    todo = [item for item in inputs if item.path not in outputs.done]
    summary.already_done = len(inputs) - len(todo)
    if summary.already_done:
        warn(f"resuming: {summary.already_done} of {len(inputs)} images are already scored in {options.out}")
    return calibration, outputs, todo, summary


def run_predictions(detector: Any, model_file: Path, inputs: list[InputImage], options: PredictOptions, *,
                    given: list[str] | None = None, echo: Callable[[dict], None] | None = print_result,
                    warn: Callable[[str], None] = lambda text: print(f"adcore predict: {text}", file=sys.stderr,
                                                                     flush=True)) -> RunSummary:
    """Score ``inputs`` into ``options.out`` (see the module docstring); returns how it ended.

    ``given`` is what the user named (files and folders; default: the inputs' paths): a resumed run
    must name the same, while files added to those folders since are simply scored too.

    Raises :class:`~adcore.errors.InvalidInputError` for the first bad file under ``strict`` (after
    writing every image before it), and whatever the detector or the writer raised.
    """
    calibration, outputs, todo, summary = open_run(detector, model_file, inputs, options, given=given, warn=warn)
    try:
        sink = Sink(outputs, calibration, heatmaps=options.heatmaps, masks=options.masks, min_area=options.min_area,
                    style=HeatmapStyle(side_by_side=options.side_by_side), capacity=2 * options.batch_size, echo=echo)
        window = 2 * options.batch_size + max(options.workers, 1)
        decoded_stream = decoded_in_order(todo, detector.load_size, workers=options.workers,
                                          keep_full=options.heatmaps, window=window, max_pixels=options.max_pixels)
        try:
            with _StopRequest() as stop:
                batch: list[Decoded] = []
                for decoded in decoded_stream:
                    batch.append(decoded)  # a bad file keeps its place: outputs follow the input order
                    failed = decoded.error is not None and options.strict
                    if len([d for d in batch if d.error is None]) >= options.batch_size or failed or stop.signal_name:
                        _feed(detector, batch, sink, summary, warn)
                        batch = []
                        failed = failed or (options.strict and bool(summary.skipped))  # refused by the detector
                    if failed or stop.signal_name:
                        break
                if stop.signal_name:
                    warn(f"{stop.signal_name} received: the images scored so far are written and flushed; stopping "
                         "(Ctrl-C again to stop at once)")
                if batch:
                    _feed(detector, batch, sink, summary, warn)
                summary.stopped_by = stop.signal_name
        finally:
            decoded_stream.close()
            sink.close()
    finally:
        outputs.close()
    return finish_run(detector, options, calibration, summary)


def finish_run(detector: Any, options: PredictOptions, calibration: Calibration, summary: RunSummary) -> RunSummary:
    """The end every executor shares, once the outputs are closed: ``--strict``'s error for the first
    skipped file, then the contact sheet of a run that was not stopped."""
    from adcore.errors import InvalidInputError

    if options.strict and summary.skipped:
        path, reason = summary.skipped[0]
        raise InvalidInputError(f"--strict: {reason}; the {outputs_count(summary)} images scored before it are in "
                                f"{options.out} (rerun with --resume after fixing or removing the file)")
    if options.contact_sheet and summary.stopped_by is None:
        summary.contact_sheet = write_contact_sheet(detector, options, calibration)
    return summary


def _detector_label(detector: Any) -> str:
    # an exported artefact (adcore.deployed.ExportedModel) is named by the detector it was exported from
    name = getattr(detector, "name", None) if getattr(detector, "runtime", None) else None
    return f"{name} ({detector.runtime} artefact)" if name else type(detector).__name__


def outputs_count(summary: RunSummary) -> int:
    return summary.scored + summary.already_done


def _feed(detector: Any, batch: list[Decoded], sink: Sink, summary: RunSummary, warn: Callable[[str], None]) -> None:
    for work in score_batch(detector, batch):
        if isinstance(work, Decoded):
            summary.skipped.append((work.item.path, work.error))
            warn(f"skipped {work.item.path!r}: {work.error}")
        else:
            summary.scored += 1
        sink.put(work)


def most_anomalous(out: Path, count: int) -> list[dict[str, Any]]:
    """The ``count`` results of the run in ``out`` with the highest scores, highest first (streamed:
    memory holds ``count`` rows). The raw score ranks exactly as the normalised one (monotone) and
    keeps apart images whose normalised score saturates at 1.000."""
    scored = (r for r in read_results(out) if r.get("error") is None and r.get("score") is not None)
    return heapq.nlargest(count, scored, key=lambda r: r["score"])


def write_contact_sheet(detector: Any, options: PredictOptions, calibration: Calibration) -> Path:
    """``OUT/contact-sheet.png``: the ``options.contact_sheet`` most anomalous images of the run (all
    of it, resumed parts included), most anomalous first, re-scored from their files."""
    from adcore.files import atomic_write_bytes
    from adcore.line.regions import find_regions
    from adcore.line.sources import InputImage as Item

    top = most_anomalous(options.out, options.contact_sheet)
    tiles = []
    for result in top:
        decoded = decode(Item(result["path"], result["path"]), detector.load_size, keep_full=True,
                         max_pixels=options.max_pixels)
        if decoded.error is not None:
            continue  # removed or changed since it was scored
        prediction = detector.predict(decoded.image[None])
        amap = map_at_size(prediction.anomaly_map[0].cpu(), decoded.size)
        mask = None
        if calibration.pixel_threshold is not None:
            mask = find_regions(amap, calibration.pixel_threshold, min_area=options.min_area)[1]
        picture = overlay(decoded.full.permute(1, 2, 0).numpy(), normalized_map(amap, calibration), mask, 0.45)
        readable = "" if result["normalized_score"] is None else f"  norm {result['normalized_score']:.3f}"
        verdict = {True: "ANOMALOUS", False: "ok", None: "no threshold"}[result["anomalous"]]
        tiles.append((picture, f"#{len(tiles) + 1} {verdict}{readable}  score {result['score']:.4g}", result["path"]))
    title = f"{len(tiles)} most anomalous of the run in {options.out.name} (normalised score, threshold 0.5)"
    sheet = render_contact_sheet(tiles, title=title, calibrated=calibration.pixels)
    return atomic_write_bytes(options.out / "contact-sheet.png", png_bytes(sheet))
