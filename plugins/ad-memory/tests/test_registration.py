"""ad-memory's entry point registers both detectors with the right cards."""

from __future__ import annotations

from adcore.factory import get_entry, get_model, list_models


def test_detectors_are_registered() -> None:
    assert {"patchcore", "spade"} <= set(list_models(category="memory_based"))
    from ad_memory.patchcore import PatchCore
    from ad_memory.spade import SPADE

    assert isinstance(get_model("patchcore", input_size=64), PatchCore)
    assert isinstance(get_model("ad-memory:spade", input_size=64), SPADE)
    card = get_entry("patchcore").card
    assert card["default_backbone"] == "tf_efficientnet_lite0" and card["trains"] is False
    assert "Total Recall" in card["paper"]
