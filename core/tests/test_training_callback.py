"""``adcore.training.on_epoch``: the one way to watch a training loop from outside (no monkey-patching)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adcore.training import _CALLBACKS, EpochEnd, on_epoch, train_epochs


def _train(epochs: int = 3, **kwargs) -> tuple[nn.Module, object]:
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    images = torch.randn(12, 4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    history = train_epochs(lambda batch: model(batch).pow(2).mean(), images, optimizer, epochs=epochs, batch_size=4,
                           seed=0, modules=[model], desc="tiny", **kwargs)
    return model, history


def test_the_callback_sees_every_epoch_with_the_history_so_far_and_the_modules():
    events: list[EpochEnd] = []
    seen_losses: list[list[float]] = []

    def record(event: EpochEnd) -> None:
        events.append(event)
        seen_losses.append(list(event.history.loss))

    with on_epoch(record):
        model, history = _train(epochs=3)
    assert [e.epoch for e in events] == [0, 1, 2]
    assert all(e.epochs == 3 and e.description == "tiny" and e.seconds >= 0 for e in events)
    assert seen_losses == [history.loss[:1], history.loss[:2], history.loss[:3]]  # the history *so far*
    assert events[0].modules == (model,)
    assert _CALLBACKS.get() == ()  # gone after the block


def test_without_a_callback_and_after_the_block_nothing_is_called_and_training_is_the_same():
    calls: list[int] = []
    with on_epoch(lambda event: calls.append(event.epoch)):
        watched, _ = _train()
    assert calls == [0, 1, 2]
    plain, _ = _train()
    assert calls == [0, 1, 2]  # not called outside the block
    assert torch.equal(watched.weight, plain.weight)


def test_blocks_nest_and_a_raising_block_still_removes_its_callback():
    outer, inner = [], []
    with on_epoch(lambda e: outer.append(e.epoch)):
        with pytest.raises(RuntimeError, match="boom"):
            with on_epoch(lambda e: inner.append(e.epoch)):
                _train(epochs=1)
                raise RuntimeError("boom")
        _train(epochs=2)
    assert inner == [0] and outer == [0, 0, 1]
    assert _CALLBACKS.get() == ()


def test_the_callback_is_told_about_the_epoch_that_stopped_early():
    events: list[EpochEnd] = []
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    images, held = torch.randn(12, 4), torch.randn(4, 4) + 5.0
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # no progress: the validation loss never improves
    with on_epoch(events.append):
        history = train_epochs(lambda batch: model(batch).pow(2).mean(), images, optimizer, epochs=10, batch_size=4,
                               seed=0, modules=[model], validation_images=held, patience=2)
    assert history.stopped_early and len(events) == len(history.loss) == 3
    assert len(events[-1].history.validation) == 3
