"""PatchCore and SPADE refuse, with the estimate, a fit whose features would not fit in memory (issue 22)."""

from __future__ import annotations

import pytest

from ad_memory.patchcore import PatchCore
from ad_memory.spade import SPADE
from adcore import memory
from adcore.errors import InvalidInputError
from adcore.testing import make_normal_images

SIZE = 64


def test_patchcore_refuses_features_larger_than_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: 100_000)
    detector = PatchCore(input_size=SIZE)
    with pytest.raises(InvalidInputError) as info:
        detector.fit(make_normal_images(2, (SIZE, SIZE), seed=0))
    # stride 8 at 64 px: 8 × 8 = 64 patches an image, 152 features (Lite0 blocks.2 + blocks.4):
    # 128 × 152 × 4 features + 128 × (128 + 10) × 4 coreset working set = 148,480 bytes
    assert str(info.value) == ("patchcore: the patch features (128 patches × 152 features × 4 bytes) and the coreset's "
                               "working copy (128 values a patch) need about 148.5 KB, more than the 100.0 KB of memory "
                               "available; cap the patches with max_patches (now None; e.g. -p max_patches=200000), "
                               "lower input_size (now 64) or train on fewer images")
    assert not hasattr(detector, "memory_bank_")


def test_patchcore_estimate_counts_the_max_patches_reservoir(monkeypatch: pytest.MonkeyPatch) -> None:
    detector = PatchCore(input_size=SIZE, max_patches=10_000)
    assert detector.fit_memory_bytes(1_000_000, 152) == 10_000 * 152 * 4 + 10_000 * 138 * 4
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: 5_000_000)  # 10k rows need 11.6 MB
    with pytest.raises(InvalidInputError, match=r"patchcore: the patch features \(10000 patches .* need about 11.6 MB"):
        detector.fit(make_normal_images(2, (SIZE, SIZE), seed=0))


def test_patchcore_that_fits_is_not_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: 200_000)
    PatchCore(input_size=SIZE).fit(make_normal_images(2, (SIZE, SIZE), seed=0))


def test_spade_refuses_pyramids_larger_than_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: 200_000)
    detector = SPADE(input_size=SIZE)
    with pytest.raises(InvalidInputError) as info:
        detector.fit(make_normal_images(3, (SIZE, SIZE), seed=0))
    # an image: 320 pooled (blocks.6) + 24·16² + 40·8² + 112·4² = 10,816 values; 3 images, twice
    assert str(info.value) == ("spade: the stored feature pyramids (3 images × 10816 values × 4 bytes, held twice while "
                               "they are joined) need about 259.6 KB, more than the 200.0 KB of memory available; lower "
                               "input_size (now 64), train on fewer images or pick shallower layers")
    assert not hasattr(detector, "gallery_")


def test_spade_counts_only_what_is_not_allocated_yet(monkeypatch: pytest.MonkeyPatch) -> None:
    assert SPADE.fit_memory_bytes(3, 10_816) == 259_584
    seen = []
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: seen.append(1) or 10**12)
    SPADE(input_size=SIZE, batch_size=2).fit(make_normal_images(5, (SIZE, SIZE), seed=0))
    assert len(seen) == 3  # asked once a batch, before keeping it
