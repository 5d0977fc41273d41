"""Shared fixtures for cross-package tests: tiny MVTec-layout folders and fake plugin distributions."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("ADCORE_PROGRESS", "0")


@pytest.fixture
def tiny_mvtec(tmp_path: Path) -> Path:
    """ROOT/widget with 10 good train, 3 good + 3 defective test images (48×48) and masks."""
    from PIL import Image

    from adcore.testing import make_normal_images, paste_defects

    root = tmp_path / "mvtec"
    good = make_normal_images(13, (48, 48), seed=3)
    bad, masks = paste_defects(make_normal_images(3, (48, 48), seed=4), seed=5)

    def write(tensor, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        array = (tensor.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(array).save(path)

    for i in range(10):
        write(good[i], root / "widget" / "train" / "good" / f"{i:03d}.png")
    for i in range(3):
        write(good[10 + i], root / "widget" / "test" / "good" / f"{i:03d}.png")
        write(bad[i], root / "widget" / "test" / "scratch" / f"{i:03d}.png")
        mask_path = root / "widget" / "ground_truth" / "scratch" / f"{i:03d}_mask.png"
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((masks[i].numpy() * 255).astype(np.uint8)).save(mask_path)
    return root


@pytest.fixture
def broken_plugins_site(tmp_path: Path) -> Path:
    """A folder holding one healthy and four broken fake plugin distributions."""
    from adcore.testing import write_fake_distribution

    site = tmp_path / "site"
    healthy = """
        from adcore import hookimpl
        @hookimpl
        def adcore_register_detectors(registry):
            registry.add("healthy_detector", "ad_example.gaussian:GaussianPatchDetector", category="example")
    """
    write_fake_distribution(site, "ad-healthy", "1.0", modules={"ad_healthy": healthy},
                            entry_points={"ad_healthy": "ad_healthy"})
    write_fake_distribution(site, "ad-import-error", "0.1", modules={"ad_import_error": "import not_a_real_module_xyz\n"},
                            entry_points={"ad_import_error": "ad_import_error"})
    write_fake_distribution(site, "ad-bad-signature", "0.2", modules={"ad_bad_signature": """
        from adcore import hookimpl
        @hookimpl
        def adcore_register_detectors(registry, unknown_argument):
            pass
    """}, entry_points={"ad_bad_signature": "ad_bad_signature"})
    write_fake_distribution(site, "ad-raising", "0.3", modules={"ad_raising": """
        from adcore import hookimpl
        @hookimpl
        def adcore_register_detectors(registry):
            registry.add("half_registered", "x.y:Z", category="example")
            raise RuntimeError("boom in hook")
    """}, entry_points={"ad_raising": "ad_raising"})
    write_fake_distribution(site, "ad-duplicate", "0.4", modules={"ad_duplicate": """
        from adcore import hookimpl
        @hookimpl
        def adcore_register_detectors(registry):
            registry.add("healthy_detector", "x.y:Z", category="example")
    """}, entry_points={"ad_duplicate": "ad_duplicate"})
    return site
