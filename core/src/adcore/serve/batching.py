"""Micro-batching: the images of concurrent requests share one ``predict`` call, off the event loop.

Each model has one :class:`MicroBatcher`: a worker thread that owns the detector. Requests hand it
decoded images (:meth:`MicroBatcher.submit`) and await one future per image. The worker takes what
is queued, up to ``max_batch`` images; if the batch is not full and other requests have announced
images that are still being decoded (:meth:`MicroBatcher.expect`), it waits for them, at most
``wait_s``. A lone client therefore never waits, and under load the queue fills while the detector
is busy, so batches form by themselves. Images of one size go into one call (a tiling detector
takes images at their own size), in the order they came.

A batched call gives each image what a call with that image alone gives (the detectors score images
independently; float rounding of a larger matrix product aside, ``rel=1e-5``). If the detector
refuses a batch (``InvalidInputError``), each image is tried alone, so one refused image fails only
its own request.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["ImageScore", "MicroBatcher"]


@dataclass(frozen=True)
class ImageScore:
    """One image's prediction: raw score, normalised score and label (``None`` when uncalibrated),
    and its anomaly map at the size the detector was given."""

    score: float
    normalized: float | None
    anomalous: bool | None
    amap: torch.Tensor


@dataclass
class _Job:
    image: torch.Tensor
    future: Future


class MicroBatcher:
    """The worker thread of one model (see the module docstring)."""

    def __init__(self, model: Any, *, max_batch: int = 8, wait_s: float = 0.005, name: str = "model") -> None:
        self.model, self.max_batch, self.wait_s = model, max(1, int(max_batch)), max(0.0, float(wait_s))
        #: how many calls had each batch size (what the tests and the load test look at)
        self.batch_sizes: Counter[int] = Counter()
        self._jobs: deque[_Job] = deque()
        self._expected = 0
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=f"adcore-serve-{name}", daemon=True)
        self._thread.start()

    def expect(self, count: int) -> None:
        """Announce ``count`` images that a request is decoding (the worker may wait for them)."""
        with self._cond:
            self._expected += count

    def withdraw(self, count: int) -> None:
        """The announced images will not come (their request failed)."""
        with self._cond:
            self._expected = max(0, self._expected - count)
            self._cond.notify_all()

    def submit(self, images: list[torch.Tensor], *, announced: int = 0) -> list[Future]:
        """Queue ``(3,H,W)`` images; one future per image, resolving to an :class:`ImageScore`."""
        jobs = [_Job(image, Future()) for image in images]
        with self._cond:
            if self._closed:
                from adcore.serve.errors import ApiError

                raise ApiError(503, "shutting down", "the server is stopping and takes no new images; retry on "
                               "another instance or once it is back")
            self._expected = max(0, self._expected - announced)
            self._jobs.extend(jobs)
            self._cond.notify_all()
        return [job.future for job in jobs]

    def close(self, timeout: float | None = None) -> None:
        """Score what is queued, then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _next_batch(self) -> list[_Job] | None:
        with self._cond:
            while not self._jobs and not self._closed:
                self._cond.wait()
            if not self._jobs:
                return None
            deadline = time.monotonic() + self.wait_s
            while len(self._jobs) < self.max_batch and self._expected > 0 and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            return [self._jobs.popleft() for _ in range(min(self.max_batch, len(self._jobs)))]

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            groups: dict[tuple[int, ...], list[_Job]] = {}
            for job in batch:
                groups.setdefault(tuple(job.image.shape), []).append(job)
            for group in groups.values():
                self._score(group)

    def _score(self, group: list[_Job]) -> None:
        from adcore.errors import InvalidInputError

        try:
            prediction = self.model.predict(torch.stack([job.image for job in group]))
        except InvalidInputError as exc:
            if len(group) == 1:
                group[0].future.set_exception(exc)
            else:
                for job in group:
                    self._score([job])
            return
        except Exception as exc:  # noqa: BLE001 - the request answers 500 and the server logs it
            for job in group:
                job.future.set_exception(exc)
            return
        self.batch_sizes[len(group)] += 1
        normalized, labels = prediction.normalized_score, prediction.pred_label
        for index, job in enumerate(group):
            job.future.set_result(ImageScore(
                float(prediction.pred_score[index]), None if normalized is None else float(normalized[index]),
                None if labels is None else bool(labels[index]), prediction.anomaly_map[index].detach().cpu()))
