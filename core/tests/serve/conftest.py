"""Tiny served models and images: a calibrated PaDiM with random backbone weights at 64 px."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="adcore serve needs the serve extra: pip install 'adcore[serve]'")


def png(image) -> bytes:
    """A ``(3,H,W)`` float tensor in [0, 1] as PNG bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    import adcore
    from adcore.testing import make_normal_images

    root = tmp_path_factory.mktemp("serve-model")
    good = make_normal_images(12, (64, 64), seed=3)
    detector = adcore.get_model("padim", weights=None, input_size=64, num_features=20).fit(good[:8])
    detector.calibrate(good[8:])
    return detector.save(root / "line1.safetensors")


@pytest.fixture(scope="session")
def images() -> dict[str, bytes]:
    """``good``, ``defect`` (a pasted defect) and ``wide`` (another size) as PNG bytes; ``corrupt``."""
    from adcore.testing import make_normal_images, paste_defects

    good = make_normal_images(3, (64, 64), seed=7)
    bad, _ = paste_defects(make_normal_images(1, (64, 64), seed=8), seed=9)
    wide = make_normal_images(1, (48, 80), seed=10)
    return {"good": png(good[0]), "good2": png(good[1]), "defect": png(bad[0]), "wide": png(wide[0]),
            "corrupt": png(good[2])[:60]}
