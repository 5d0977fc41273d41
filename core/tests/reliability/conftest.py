"""Fixtures for the reliability suite: image writers, fake plugin distributions, tiny detectors.

``fake_dist`` builds installed-looking distributions (``*.dist-info`` with METADATA and
entry_points.txt, plus module files, written by :func:`adcore.testing.write_fake_distribution`)
in a temporary site folder on ``sys.path``, so
``adcore.plugins.load_plugins()`` discovers them through ``importlib.metadata`` exactly as it
discovers a pip-installed plugin. Module names are made unique per test so nothing leaks between
tests through ``sys.modules``.
"""

from __future__ import annotations

import importlib
import itertools
import os
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("ADCORE_PROGRESS", "0")

_COUNTER = itertools.count()


# -- images ------------------------------------------------------------------------------------
def save_array(path: Path, array: np.ndarray, mode: str | None = None, **save_kwargs) -> Path:
    """Write ``array`` with PIL (optionally converting to ``mode`` first) and return the path."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    if mode is not None and image.mode != mode:
        image = image.convert(mode)
    image.save(path, **save_kwargs)
    return path


@pytest.fixture
def write_image() -> Callable[..., Path]:
    """``write_image(path, array, mode=None, **save_kwargs)``."""
    return save_array


@pytest.fixture
def rgb_array() -> np.ndarray:
    """A deterministic 20×30 RGB uint8 array (non-square on purpose)."""
    return np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)


@pytest.fixture
def mvtec_tree(tmp_path: Path) -> Callable[..., Path]:
    """``mvtec_tree(train=4, good=2, defects={"scratch": 2}, size=(24, 32))`` → category folder with masks."""

    def build(train: int = 4, good: int = 2, defects: dict[str, int] | None = None,
              size: tuple[int, int] = (24, 32), masks: bool = True, name: str = "widget") -> Path:
        defects = {"scratch": 2} if defects is None else defects
        rng = np.random.default_rng(1)
        folder = tmp_path / "mvtec" / name
        height, width = size

        def image() -> np.ndarray:
            return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)

        for i in range(train):
            save_array(folder / "train" / "good" / f"{i:03d}.png", image())
        for i in range(good):
            save_array(folder / "test" / "good" / f"{i:03d}.png", image())
        for defect, count in defects.items():
            for i in range(count):
                save_array(folder / "test" / defect / f"{i:03d}.png", image())
                if masks:
                    mask = np.zeros((height, width), dtype=np.uint8)
                    mask[2:8, 3:9] = 255
                    save_array(folder / "ground_truth" / defect / f"{i:03d}_mask.png", mask)
        return folder

    return build


# -- fake plugin distributions -------------------------------------------------------------------
@dataclass
class FakePlugin:
    dist: str
    version: str
    module: str  #: the hook module's import name (also the entry-point name)
    site: Path


class FakeDistributions:
    """Factory behind the ``fake_dist`` fixture."""

    def __init__(self, site: Path) -> None:
        self.site = site
        self.modules: list[str] = []

    def unique(self, stem: str) -> str:
        """A module name no other test uses (sys.modules is process-wide)."""
        name = f"relfake_{stem}_{os.getpid()}_{next(_COUNTER)}"
        self.modules.append(name)
        return name

    def add(self, dist: str, hook_source: str, *, version: str = "0.1.0", extra_modules: dict[str, str] | None = None,
            entry_points_text: str | None = None, entry_point_name: str | None = None) -> FakePlugin:
        """One distribution ``dist`` whose ``adcore`` entry point names a new hook module.

        ``hook_source`` may use ``{mod}`` for the hook module's own name and ``{extra_name}`` for
        the unique name of each ``extra_modules`` key (e.g. a lazy target module).
        """
        from adcore.testing import write_fake_distribution

        module = self.unique(dist.replace("-", "_"))
        renames = {key: self.unique(key) for key in (extra_modules or {})}
        fill = {"mod": module, **renames}
        sources = {module: _fill(hook_source, fill)}
        sources.update({renames[key]: _fill(source, fill) for key, source in (extra_modules or {}).items()})
        entry_points = None if entry_points_text is not None else {entry_point_name or module: module}
        write_fake_distribution(self.site, dist, version, modules=sources, entry_points=entry_points,
                                entry_points_text=entry_points_text)
        return FakePlugin(dist, version, module, self.site)

    def cleanup(self) -> None:
        for name in self.modules:
            sys.modules.pop(name, None)


def _fill(source: str, names: dict[str, str]) -> str:
    source = textwrap.dedent(source)
    for key, value in names.items():
        source = source.replace("{" + key + "}", value)
    return source


@pytest.fixture
def fake_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeDistributions]:
    """Build fake installed plugin distributions; plugins are reloaded from scratch before and after."""
    from adcore.plugins import reset_plugins

    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    for name in ("ADCORE_STRICT_PLUGINS", "ADCORE_DISABLE_PLUGINS", "ADCORE_SLOW_IMPORT_SECONDS"):
        monkeypatch.delenv(name, raising=False)
    factory = FakeDistributions(site)
    reset_plugins()
    yield factory
    factory.cleanup()
    importlib.invalidate_caches()
    reset_plugins()


# -- detectors ------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def mean_detector_class() -> type:
    """A backbone-free BaseDetector: squared distance to the mean training image (fast and real)."""
    from adcore.base import BaseDetector
    from adcore.errors import InvalidInputError

    class MeanDetector(BaseDetector):
        def __init__(self, *, input_size: int = 32, scale: float = 1.0, seed: int = 0) -> None:
            self.input_size = input_size
            self.scale = scale
            self.seed = seed

        def _validate_params(self) -> None:
            super()._validate_params()
            if not isinstance(self.scale, (int, float)) or isinstance(self.scale, bool) or not 0 < self.scale <= 10:
                raise InvalidInputError(f"scale must be a number in (0, 10], got {self.scale!r}")

        def _fit(self, stream) -> None:
            total, count = None, 0
            for batch in stream:  # streamed sums: never the whole set in memory
                total = batch.sum(0) if total is None else total + batch.sum(0)
                count += batch.shape[0]
            self.mean_ = total / count
            self.count_ = count

        def _predict(self, images):
            maps = self.scale * ((images - self.mean_) ** 2).sum(1)
            return maps.flatten(1).amax(1), maps

    MeanDetector.__module__ = __name__
    MeanDetector.__qualname__ = "MeanDetector"
    return MeanDetector


@pytest.fixture(scope="session")
def normal_images() -> torch.Tensor:
    from adcore.testing import make_normal_images

    return make_normal_images(8, (32, 32), seed=0)


@pytest.fixture(scope="session")
def gaussian(normal_images: torch.Tensor):
    """The example plugin's GaussianPatchDetector at 32 px, fitted once per session (real backbone)."""
    from ad_example.gaussian import GaussianPatchDetector

    return GaussianPatchDetector(input_size=32).fit(normal_images)
