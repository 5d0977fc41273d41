"""One training loop for every detector that learns weights (students, flows, autoencoders).

Detectors give a ``loss_fn(batch) -> loss`` and the parameters to optimise; the loop handles
shuffling under the detector's seed, epochs, the progress bar with the running loss, optional
validation-based early stopping (restoring the best weights), a loss history for plots, and the
precision: ``precision="16-mixed"``/``"bf16-mixed"`` runs ``loss_fn`` under ``torch.autocast`` on
``device`` (a gradient scaler for float16 on CUDA; see :mod:`adcore.devices`), ``"32"`` as before.

Observing training from outside: inside ``with on_epoch(callback):`` every :func:`train_epochs`
call (in this thread or task, however deep inside a detector's ``fit``) calls ``callback`` once
after each epoch with an :class:`EpochEnd` (the loop's description, the epoch index, the
:class:`TrainingHistory` so far, the modules being trained and the epoch's seconds). No detector
threads a parameter through for it: ``adcore benchmark --curve`` records learning curves this way.
A callback must leave the modules as it found them (their weights; their train/eval mode is reset
by the loop); an exception it raises ends the training.

Order and batching do not reach the model: a detector that trains calls :func:`training_images`
(or, when it streams, :func:`content_keys` and :func:`canonical_permutation`) so that the images it
fits on stand in one canonical order, sorted by a hash of their content, before
:func:`split_holdout` and :func:`train_epochs` draw the hold-out and the shuffles from the
detector's own seed. The same images in any order and in batches of any size give the same split,
the same batches and so the same weights (:class:`adcore.inputs.ImageStream` keeps reading the
caller's data off the random stream the detector draws its initial weights from).
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import hashlib
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from adcore.devices import autocast, check_precision, grad_scaler
from adcore.errors import TrainingDivergedError
from adcore.progress import progress

__all__ = ["TrainingHistory", "EpochEnd", "EpochCallback", "on_epoch", "train_epochs", "split_holdout",
           "content_keys", "canonical_permutation", "canonical_order", "training_images"]


@dataclass
class TrainingHistory:
    """Per-epoch mean training loss (and validation loss when early stopping was on)."""

    loss: list[float] = field(default_factory=list)
    validation: list[float] = field(default_factory=list)
    best_epoch: int | None = None
    stopped_early: bool = False

    def as_dict(self) -> dict[str, object]:
        return {"loss": self.loss, "validation": self.validation, "best_epoch": self.best_epoch,
                "stopped_early": self.stopped_early}


@dataclass(frozen=True)
class EpochEnd:
    """What an :func:`on_epoch` callback is told after each epoch of :func:`train_epochs`."""

    #: the loop's ``desc`` (e.g. ``"stfpm"``): tells apart loops of one fit (teacher, then student)
    description: str
    #: 0-based index of the epoch that just ended
    epoch: int
    #: the number of epochs the loop was asked for (early stopping may end it sooner)
    epochs: int
    #: the history so far, this epoch included (the loop's own object: read it, do not change it)
    history: TrainingHistory
    #: the modules being trained (in the state this epoch left them)
    modules: tuple[nn.Module, ...]
    #: wall-clock seconds of this epoch (training and validation, without the callbacks)
    seconds: float


EpochCallback = Callable[[EpochEnd], None]

_CALLBACKS: contextvars.ContextVar[tuple[EpochCallback, ...]] = contextvars.ContextVar("adcore_epoch_callbacks",
                                                                                       default=())


@contextlib.contextmanager
def on_epoch(callback: EpochCallback) -> Iterator[EpochCallback]:
    """Call ``callback(EpochEnd)`` after every epoch of every :func:`train_epochs` run inside the block.

    Blocks nest (every active callback is called, outermost first); leaving the block removes the
    callback, also when the block raises.
    """
    token = _CALLBACKS.set((*_CALLBACKS.get(), callback))
    try:
        yield callback
    finally:
        _CALLBACKS.reset(token)


def content_keys(images: torch.Tensor) -> list[bytes]:
    """One SHA-256 digest per item of ``(N, ...)``: of its shape, dtype and bytes (equal only for equal content)."""
    items = images.detach().cpu().contiguous()
    header = f"{tuple(items.shape[1:])}|{items.dtype}|".encode()
    return [hashlib.sha256(header + item.numpy().tobytes()).digest() for item in items]


def canonical_permutation(keys: list[bytes]) -> torch.Tensor:
    """The permutation that sorts items by their :func:`content_keys`.

    Stable: identical items keep their relative order, and being identical they are interchangeable.
    """
    return torch.tensor(sorted(range(len(keys)), key=keys.__getitem__), dtype=torch.long)


def canonical_order(images: torch.Tensor) -> torch.Tensor:
    """``images`` (``(N, ...)``) sorted by content: the same tensor whatever order the items came in."""
    if images.shape[0] < 2:
        return images
    return images[canonical_permutation(content_keys(images))]


def training_images(stream: Iterable[torch.Tensor]) -> torch.Tensor:
    """Every image of a fit stream as one ``(N,3,h,w)`` tensor in canonical order (:func:`canonical_order`).

    What every detector that trains fits on: however the caller orders or batches its images, the
    tensor is the same, so the seeded hold-out split and shuffles pick the same images.
    """
    materialize = getattr(stream, "materialize", None)
    images = materialize() if callable(materialize) else torch.cat(list(stream), dim=0)
    return canonical_order(images)


def split_holdout(images: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``(N,...)`` into training and held-out parts, the held-out part chosen under ``seed``."""
    if not 0.0 < fraction < 1.0 or images.shape[0] < 2:
        return images, images[:0]
    order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))
    count = max(1, int(round(fraction * images.shape[0])))
    return images[order[count:]], images[order[:count]]


def train_epochs(
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    modules: Iterable[nn.Module] = (),
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    validation_images: torch.Tensor | None = None,
    patience: int | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    desc: str = "train",
    device: torch.device | None = None,
    precision: str = "32",
) -> TrainingHistory:
    """Train for ``epochs`` over ``images`` and return the :class:`TrainingHistory`.

    With ``validation_images`` and ``patience``, training stops when the validation loss has not
    improved for ``patience`` epochs and the best weights of ``modules`` are restored. ``device``
    (default: where ``images`` are; pass it when ``images`` are indices) is where autocast applies
    ``precision``.
    """
    precision = check_precision(precision)
    device = images.device if device is None else device
    scaler = grad_scaler(device, precision)
    history = TrainingHistory()
    modules = list(modules)
    generator = torch.Generator().manual_seed(seed)
    best_loss, best_state, stale = float("inf"), None, 0
    bar = progress(range(epochs), desc=desc, total=epochs)
    callbacks = _CALLBACKS.get()
    for epoch in bar:
        started = time.perf_counter()
        stop = False
        for module in modules:
            module.train()
        order = torch.randperm(images.shape[0], generator=generator)
        total, count = 0.0, 0
        for start in range(0, images.shape[0], batch_size):
            batch = images[order[start:start + batch_size]]
            if augment is not None:
                batch = augment(batch, generator)
            with autocast(device, precision):
                loss = loss_fn(batch)
            if not torch.isfinite(loss):
                raise TrainingDivergedError(f"{desc}: the loss became {loss.item()} at epoch {epoch + 1}; lower the "
                                         "learning rate or check the input images")
            optimizer.zero_grad(set_to_none=True)
            if scaler is None:
                loss.backward()
                optimizer.step()
            else:  # float16 on CUDA: scaled gradients, steps skipped while they overflow
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            total += float(loss.detach()) * batch.shape[0]
            count += batch.shape[0]
        if scheduler is not None:
            scheduler.step()
        history.loss.append(total / max(count, 1))
        postfix = {"loss": f"{history.loss[-1]:.4g}"}
        if validation_images is not None and validation_images.shape[0] and patience is not None:
            for module in modules:
                module.eval()
            with torch.no_grad(), autocast(device, precision):
                val = sum(float(loss_fn(validation_images[i:i + batch_size])) * min(batch_size, validation_images.shape[0] - i)
                          for i in range(0, validation_images.shape[0], batch_size)) / validation_images.shape[0]
            history.validation.append(val)
            postfix["val"] = f"{val:.4g}"
            if val < best_loss:
                best_loss, stale, history.best_epoch = val, 0, epoch
                best_state = [copy.deepcopy(m.state_dict()) for m in modules]
            else:
                stale += 1
                if stale >= patience:
                    history.stopped_early = True
                    stop = True
        if callbacks:
            report = EpochEnd(desc, epoch, epochs, history, tuple(modules), time.perf_counter() - started)
            for callback in callbacks:
                callback(report)
        if stop:
            break
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(postfix)
    if best_state is not None:
        for module, state in zip(modules, best_state):
            module.load_state_dict(state)
    for module in modules:
        module.eval()
    return history
