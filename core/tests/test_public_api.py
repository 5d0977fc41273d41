"""The top-level `adcore` namespace: exactly the documented names, importable, and cheap to import."""

from __future__ import annotations

import subprocess
import sys

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
