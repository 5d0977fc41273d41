"""Every ad-recon detector passes adcore's conformance kit with its registered quick parameters."""

from __future__ import annotations

import pytest

from adcore.factory import get_entry, list_models
from adcore.testing import build_registered, check_detector

NAMES = ["vanilla_ae", "unet_ae", "vae", "beta_vae", "wae", "resnet_ae"]


def test_all_six_are_registered_under_reconstruction() -> None:
    assert sorted(list_models(category="reconstruction")) == sorted(NAMES)
    for name in NAMES:
        card = get_entry(name).card
        assert card["trains"] is True and card["paper"] and card["quick_params"]["input_size"] == 64


@pytest.mark.parametrize("name", NAMES)
def test_conformance(name: str) -> None:
    check_detector(lambda: build_registered(name), name=name)
