"""PaDiM refuses statistics that would not fit in memory, and names epsilon when a covariance is
not positive definite (issue 22)."""

from __future__ import annotations

import pytest
import torch

from ad_stat.padim import Padim
from adcore import memory
from adcore.errors import InvalidInputError
from adcore.testing import make_normal_images


def test_statistics_larger_than_memory_are_refused_with_the_estimate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: 10_000_000)
    detector = Padim(input_size=64, num_features=100)
    with pytest.raises(InvalidInputError) as info:
        detector.fit(make_normal_images(2, (64, 64), seed=0))
    # stride 4 at 64 px: 16 × 16 = 256 positions; 256 × 100² × 4 bytes = 10.24 MB, plus the sums
    assert str(info.value) == ("padim: the covariances (256 positions × 100² features × 4 bytes) need about 10.6 MB, "
                               "more than the 10.0 MB of memory available; lower num_features (the memory grows "
                               "with its square; now 100) or input_size (now 64)")
    assert not hasattr(detector, "whitening_")


def test_statistics_that_fit_are_not_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: 11_000_000)
    Padim(input_size=64, num_features=100).fit(make_normal_images(2, (64, 64), seed=0))


def test_covariance_that_is_not_positive_definite_names_epsilon(monkeypatch) -> None:
    from ad_stat import padim

    monkeypatch.setattr(padim, "_WHITENING_CHUNK", 2)  # the error names the chunk that failed
    detector = Padim(epsilon=1e-6)
    dims = 3
    sum_outer = torch.eye(dims).repeat(4, 1, 1)
    sum_outer[3] = -torch.eye(dims)  # an indefinite "covariance" at position 3
    with pytest.raises(InvalidInputError) as info:
        detector._whitening(sum_outer, torch.zeros(4, dims, dtype=torch.float64), count=2)
    assert str(info.value) == ("padim: the feature covariance is not positive definite at 1 of positions 2..3 even "
                               "with the ridge epsilon=1e-06 (from 2 training images); raise epsilon "
                               "(e.g. -p epsilon=0.01), lower num_features, or train on more images")


def test_available_memory_is_read_from_the_machine() -> None:
    available, total = memory.available_memory_bytes(), memory.total_memory_bytes()
    assert available is not None and total is not None and 0 < available <= total
