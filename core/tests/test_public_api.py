"""The top-level `adcore` namespace: exactly the documented names, importable, and cheap to import."""

from __future__ import annotations

import subprocess
import sys

import pytest

import adcore

EXPECTED = {
    "__version__", "AnomalyDetector", "BaseDetector", "Prediction", "hookimpl", "get_model", "list_models",
    "list_models_by_category", "load", "ModelNotFoundError", "NotFittedError", "InvalidInputError", "ModelFileError",
}


def test_all_is_exactly_the_public_api():
    assert set(adcore.__all__) == EXPECTED
    for name in adcore.__all__:
        assert getattr(adcore, name) is not None


def test_unknown_attribute_raises_attribute_error():
    try:
        adcore.not_a_thing  # noqa: B018
    except AttributeError as exc:
        assert "not_a_thing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_import_loads_neither_torch_nor_plugins():
    code = ("import sys, adcore; "
            "print('torch' in sys.modules, any(m.startswith('ad_') for m in sys.modules), adcore.plugins._host is None)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False", "True"]


def test_listing_imports_no_model_code():
    code = ("import sys, adcore; names = adcore.list_models(); "
            "print(len(names) > 0, 'torch' in sys.modules, 'ad_example.gaussian' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "False", "False"]


def test_every_core_module_declares_all():
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(adcore.__path__):
        module = importlib.import_module(f"adcore.{info.name}")
        assert hasattr(module, "__all__"), f"adcore.{info.name} has no __all__"
        for name in module.__all__:
            assert hasattr(module, name), f"adcore.{info.name}.__all__ names missing {name!r}"


def test_testing_exports_the_plugin_author_helpers():
    import adcore.testing

    assert {"check_detector", "write_fake_distribution"} <= set(adcore.testing.__all__)


def test_write_fake_distribution_is_discovered_like_an_installed_one(tmp_path, monkeypatch):
    import importlib
    import importlib.metadata

    from adcore.testing import write_fake_distribution

    package = f"fakepkg_api_{id(tmp_path)}"
    info = write_fake_distribution(tmp_path, "ad-fake.api", "2.0", modules={
        f"{package}.hooks": """
            VALUE = 42
        """}, entry_points={"ad_fake_api": f"{package}.hooks"})
    assert info == tmp_path / "ad_fake_api-2.0.dist-info"
    (dist,) = importlib.metadata.distributions(path=[str(tmp_path)])
    assert (dist.metadata["Name"], dist.version) == ("ad-fake.api", "2.0")
    assert [(ep.group, ep.name, ep.value) for ep in dist.entry_points] == [("adcore", "ad_fake_api", f"{package}.hooks")]
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert importlib.import_module(f"{package}.hooks").VALUE == 42
    finally:
        for name in (f"{package}.hooks", package):
            sys.modules.pop(name, None)

    with pytest.raises(ValueError, match="not both"):
        write_fake_distribution(tmp_path, "other", entry_points={}, entry_points_text="")
    with pytest.raises(ValueError, match="module name"):
        write_fake_distribution(tmp_path, "other", modules={"not-a-module": ""})
    with pytest.raises(FileExistsError):
        write_fake_distribution(tmp_path, "ad-fake.api", "2.0")
