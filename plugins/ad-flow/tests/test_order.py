"""Issue 23: FastFlow and DifferNet train the same flow whatever the order, batching or kind of the fit stream.

FastFlow streams: it extracts the frozen features batch by batch in the caller's batches and sorts
them by the content of their images afterwards, so the same batches in another order give the same
flow bit for bit. In other batch sizes the frozen backbone's convolutions may round differently (the
CPU kernels block by batch), which the second test bounds instead of requiring equality.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, TensorDataset

from ad_flow.differnet import DifferNet
from ad_flow.fastflow import FastFlow
from adcore.testing import make_normal_images

IMAGES = make_normal_images(6, (64, 64), seed=2)
FASTFLOW = dict(input_size=64, epochs=2, flow_steps=2, batch_size=3, seed=3)


def _equal(one: dict, two: dict) -> bool:
    return one.keys() == two.keys() and all(torch.equal(one[name], two[name]) for name in one)


def test_fastflow_same_batches_in_another_order_and_stream_kind() -> None:
    first = FastFlow(**FASTFLOW).fit(DataLoader(TensorDataset(IMAGES), batch_size=3))
    second = FastFlow(**FASTFLOW).fit([IMAGES[3:], IMAGES[:3]])
    assert _equal(first.head_.state_dict(), second.head_.state_dict())


def test_fastflow_other_batches_stay_within_rounding() -> None:
    first = FastFlow(**FASTFLOW).fit(IMAGES)
    second = FastFlow(**FASTFLOW).fit(iter([IMAGES[i:i + 1] for i in reversed(range(6))]))  # a one-shot stream
    one, two = first.head_.state_dict(), second.head_.state_dict()
    assert one.keys() == two.keys()
    for name in one:
        if one[name].is_floating_point():
            assert torch.allclose(one[name], two[name], rtol=1e-3, atol=1e-4), name


def test_differnet_order_batching_and_stream_kind_do_not_change_the_flow() -> None:
    params = dict(input_size=64, epochs=2, coupling_blocks=2, fc_hidden=16, num_transforms=2, num_test_transforms=1,
                  rotation_degrees=0.0, brightness=0.0, contrast=0.0, saturation=0.0, sigma=0.0, batch_size=4)
    first = DifferNet(**params).fit(DataLoader(TensorDataset(IMAGES), batch_size=4))
    backwards = IMAGES.flip(0)
    second = DifferNet(**params).fit([backwards[i:i + 5] for i in range(0, 6, 5)])
    assert _equal(first.flow_.state_dict(), second.flow_.state_dict())
