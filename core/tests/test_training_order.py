"""Canonical order of training images and a fit stream that leaves the detector's random stream alone (issue 23)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, TensorDataset

from adcore.inputs import ImageStream
from adcore.training import canonical_order, canonical_permutation, content_keys, split_holdout, training_images


def _images(count: int = 9) -> torch.Tensor:
    return torch.rand(count, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def test_canonical_order_is_the_same_for_every_order_of_the_items() -> None:
    images = _images()
    reference = canonical_order(images)
    for seed in range(3):
        shuffled = images[torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))]
        assert torch.equal(canonical_order(shuffled), reference)
    assert torch.equal(canonical_order(images.flip(0)), reference)
    # a permutation of the same images, not a copy of one of them
    assert sorted(content_keys(reference)) == sorted(content_keys(images))


def test_content_keys_tell_apart_what_differs_and_only_that() -> None:
    images = _images(2)
    nudged = images.clone()
    nudged[1, 0, 0, 0] += 1e-7
    keys, other = content_keys(images), content_keys(nudged)
    assert keys[0] == other[0] and keys[1] != other[1]
    assert content_keys(images.double())[0] != keys[0]  # another dtype is other content


def test_identical_images_keep_their_relative_order() -> None:
    keys = [b"b", b"a", b"b", b"a"]
    assert canonical_permutation(keys).tolist() == [1, 3, 0, 2]


def test_training_images_and_the_holdout_ignore_order_and_batching() -> None:
    images = _images(10)
    by_four = ImageStream(DataLoader(TensorDataset(images), batch_size=4), (8, 8))
    backwards = ImageStream([images.flip(0)[i:i + 3] for i in range(0, 10, 3)], (8, 8))
    first, second = training_images(by_four), training_images(backwards)
    assert torch.equal(first, second)
    for a, b in zip(split_holdout(first, 0.3, seed=4), split_holdout(second, 0.3, seed=4), strict=True):
        assert torch.equal(a, b)


def test_reading_a_dataloader_leaves_the_global_generator_alone() -> None:
    # a DataLoader draws its base seed from torch's generator on every iteration; the stream must
    # keep that draw away from the initial weights a detector draws next
    images = _images(6)
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    stream = ImageStream(DataLoader(TensorDataset(images), batch_size=4, shuffle=True), (8, 8))
    stream.materialize()
    stream.materialize()
    assert torch.equal(torch.rand(4), expected)


def test_a_shuffling_dataloader_still_shuffles_differently_each_pass() -> None:
    # the data keeps a random stream of its own that goes on from pass to pass
    images = torch.arange(32, dtype=torch.float32).view(32, 1, 1, 1).expand(32, 3, 2, 2) / 32
    torch.manual_seed(0)
    stream = ImageStream(DataLoader(TensorDataset(images), batch_size=32, shuffle=True), None)
    first, second = stream.materialize(), stream.materialize()
    assert not torch.equal(first, second)
    assert torch.equal(canonical_order(first), canonical_order(second))
