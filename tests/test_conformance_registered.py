"""Every registered detector, from every installed plugin, passes adcore's conformance kit."""

from __future__ import annotations

import pytest

from adcore.testing import build_registered, check_detector, check_export, registered_detector_params


@pytest.mark.parametrize("name", registered_detector_params())
def test_registered_detector_conforms(name: str):
    report = check_detector(lambda: build_registered(name), name=name)
    assert report.ok
    assert "pasted defect scores higher" in report.passed


@pytest.mark.parametrize("name", registered_detector_params())
def test_registered_detector_exports_with_parity(name: str):
    """Every exportable detector exports to ONNX at its quick parameters with torch's numbers (DifferNet
    its image score alone, a score-only artefact); one that cannot refuses with its reason."""
    pytest.importorskip("onnx", reason="adcore[export] is not installed (pip install 'adcore[export]')")
    pytest.importorskip("onnxruntime", reason="adcore[export] is not installed (pip install 'adcore[export]')")
    report = check_export(lambda: build_registered(name), name=name)
    assert report.ok
    assert report.passed in (["exports to onnx with parity"], ["refuses onnx export with its reason"])
