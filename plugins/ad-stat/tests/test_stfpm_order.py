"""Issue 23: STFPM's student does not depend on the order, batching or kind of the fit stream."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, TensorDataset

from ad_stat.stfpm import Stfpm
from adcore.testing import make_normal_images


def test_order_batching_and_stream_kind_do_not_change_the_student() -> None:
    images = make_normal_images(7, (64, 64), seed=3)
    params = dict(input_size=64, epochs=2, batch_size=3, seed=1, validation_fraction=0.3, patience=1)
    first = Stfpm(**params).fit(DataLoader(TensorDataset(images), batch_size=4))
    backwards = images.flip(0)
    second = Stfpm(**params).fit([backwards[i:i + 2] for i in range(0, 7, 2)])
    one, two = first.student_.state_dict(), second.student_.state_dict()
    assert one.keys() == two.keys()
    for name in one:
        assert torch.equal(one[name], two[name]), name
