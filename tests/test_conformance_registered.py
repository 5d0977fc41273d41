"""Every registered detector, from every installed plugin, passes adcore's conformance kit."""

from __future__ import annotations

import pytest

from adcore.testing import build_registered, check_detector, registered_detector_params


@pytest.mark.parametrize("name", registered_detector_params())
def test_registered_detector_conforms(name: str):
    report = check_detector(lambda: build_registered(name), name=name)
    assert report.ok
    assert "pasted defect scores higher" in report.passed
