"""``BaseDetector``: scikit-learn conventions, input handling, calibration and save/load.

Subclasses write three things: ``__init__`` that only stores its keyword parameters, declared in
``parameter_constraints`` (:mod:`adcore.params`) and validated right after ``__init__`` by
``_validate_params``, ``_fit(stream)`` and ``_predict(images)`` on images already resized to
``input_size``. Everything else (parameter checks, renamed-parameter aliases, input checks,
resizing back to the caller's size, seeding, thresholds, persistence, the device) lives here once.
Detectors on a pretrained backbone derive from :class:`adcore.feature_detector.FeatureDetector` instead.

Devices (:mod:`adcore.devices`): ``device`` is resolved to ``device_`` when ``fit`` starts; ``_fit``
and ``_predict`` receive images on ``device_`` and keep their fitted state there (after ``fit`` and
``load`` the base moves every fitted tensor and module there too); ``predict`` returns CPU tensors.

State conventions: fitted state is public attributes ending in ``_`` (tensors, ``nn.Module``s or
JSON-able values); these are what :meth:`save` writes. Frozen pretrained backbones are private
attributes rebuilt from parameters, so they are not copied into every model file.
"""

from __future__ import annotations

import functools
import inspect
import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from adcore.devices import DeviceSpec, Precision, resolve_device
from adcore.errors import InvalidArgumentError, InvalidInputError, NotFittedError
from adcore.inputs import DeviceStream, ImageStream, to_size, validate_images
from adcore.params import ConstraintSpec, Integer, Real, Size, validate_parameters
from adcore.prediction import Prediction
from adcore.seeding import seeded
from adcore.tiling import TileStream, TilingMixin, predict_tiled_batch

__all__ = ["BaseDetector", "COMMON_PARAMETERS", "RUNTIME_PARAMETERS"]

_JSON_TYPES = (bool, int, float, str, type(None))

#: parameters every detector has without listing them in its ``__init__``, handled here once:
#: tiling (see :mod:`adcore.tiling`), the device and the precision (see :mod:`adcore.devices`). They
#: are part of ``get_params``, and of the model file except the :data:`RUNTIME_PARAMETERS`.
COMMON_PARAMETERS: dict[str, Any] = {"tile_size": None, "tile_overlap": 0.25, "tile_input_size": None,
                                     "device": "auto", "precision": "32"}
#: common parameters that say where a model runs, not what it is: never written into a model file
#: (``load(path, device=...)`` chooses them again)
RUNTIME_PARAMETERS: frozenset[str] = frozenset({"device"})


class BaseDetector(TilingMixin, ABC):
    """Optional base class for detectors (see the module docstring for the contract)."""

    #: run ``_predict`` under ``torch.inference_mode`` (off for detectors that need input gradients)
    inference_mode: ClassVar[bool] = True
    #: images per batch when ``predict`` is given a large batch
    predict_batch_size: ClassVar[int] = 32
    #: what each constructor parameter may be (merged over the MRO; see :mod:`adcore.params`)
    parameter_constraints: ClassVar[Mapping[str, ConstraintSpec]] = {
        "input_size": [Size(16, 4096)],
        "seed": [Integer(0, 2**63 - 1), None],
        "batch_size": [Integer(1, 4096)],
        "tile_size": [Size(16, 8192), None],
        "tile_overlap": [Real(0.0, 0.9)],
        "tile_input_size": [Size(16, 65536), None],
        "device": [DeviceSpec()],
        "precision": [Precision()],
    }
    #: renamed parameters still accepted, with a DeprecationWarning: ``{"lr": "learning_rate"}``, or
    #: ``{"layer": ("layers", lambda v: (v,))}`` when the value changes form too
    parameter_aliases: ClassVar[Mapping[str, str | tuple[str, Callable[[Any], Any]]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return

        @functools.wraps(init)
        def validating_init(self: BaseDetector, *args: Any, **kw: Any) -> None:
            most_derived = type(self).__init__ is validating_init
            common: dict[str, Any] = {}
            if most_derived:
                if kw:
                    kw = type(self)._resolve_aliases(kw)
                own = set(inspect.signature(init).parameters)
                common = {name: kw.pop(name, default) for name, default in COMMON_PARAMETERS.items() if name not in own}
            init(self, *args, **kw)
            if most_derived:  # only once, after the most derived __init__
                for name, value in common.items():
                    setattr(self, name, value)
                self._validate_params()

        cls.__init__ = validating_init  # type: ignore[method-assign]

    @classmethod
    def constraints(cls) -> dict[str, ConstraintSpec]:
        """Every parameter's constraints, the most derived class's declaration winning."""
        merged: dict[str, ConstraintSpec] = {}
        for klass in reversed(cls.__mro__):
            merged.update(getattr(klass, "__dict__", {}).get("parameter_constraints", {}))
        return merged

    @classmethod
    def _resolve_aliases(cls, params: dict[str, Any]) -> dict[str, Any]:
        aliases: dict[str, Any] = {}
        for klass in reversed(cls.__mro__):
            aliases.update(getattr(klass, "__dict__", {}).get("parameter_aliases", {}))
        if not any(name in aliases for name in params):
            return params
        resolved = dict(params)
        for old, target in aliases.items():
            if old not in resolved:
                continue
            new, convert = (target, None) if isinstance(target, str) else target
            value = resolved.pop(old)
            if new in resolved:
                raise InvalidInputError(f"{cls.__name__}: {old!r} is the old name of {new!r}; give only {new}=")
            warnings.warn(f"{cls.__name__}: parameter {old!r} was renamed to {new!r}; the old name will stop "
                          "working in a later release", DeprecationWarning, stacklevel=4)
            resolved[new] = convert(value) if convert is not None else value
        return resolved

    # -- scikit-learn conventions -------------------------------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        signature = inspect.signature(cls.__init__)
        names = []
        for name, param in signature.parameters.items():
            if name == "self":
                continue
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise InvalidArgumentError(f"{cls.__name__}.__init__ must list its parameters explicitly (no *args/**kwargs)")
            names.append(name)
        return names + [name for name in COMMON_PARAMETERS if name not in names]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor parameters, read back from the attributes ``__init__`` stored (plus the
        common ones every detector has, such as ``tile_size``)."""
        return {name: getattr(self, name, COMMON_PARAMETERS.get(name)) for name in self._param_names()}

    def set_params(self, **params: Any) -> BaseDetector:
        valid = set(self._param_names())
        unknown = sorted(set(params) - valid)
        if unknown:
            raise InvalidInputError(f"{type(self).__name__} has no parameter {unknown[0]!r}; valid: {sorted(valid)}")
        previous = {name: getattr(self, name) for name in params}
        for name, value in params.items():
            setattr(self, name, value)
        try:
            self._validate_params()
            if "device" in params and self.is_fitted:
                self._move_to_device()  # a fitted model follows its new device (refused if it is not here)
        except Exception:
            for name, value in previous.items():  # a rejected value must not stay set
                setattr(self, name, value)
            raise
        return self

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({params})"

    @functools.cached_property  # not a data descriptor: a detector may still take a ``name`` parameter
    def name(self) -> str:
        """The registry name (Contract D: what an exported artefact calls itself too)."""
        from adcore.lookups import origin_of

        return origin_of(type(self)).name

    @property
    def is_fitted(self) -> bool:
        return bool(getattr(self, "fitted_", False))

    @property
    def device_(self) -> torch.device:
        """The :class:`torch.device` that ``device`` resolves to on this machine (where fit and predict run)."""
        spec = getattr(self, "device", "auto")
        cached = self.__dict__.get("_device_cache")
        if cached is None or cached[0] is not spec:
            cached = (spec, resolve_device(spec))
            self.__dict__["_device_cache"] = cached
        return cached[1]

    def _move_to_device(self) -> None:
        """Put every fitted tensor and module on ``device_`` (free where they already are), then call
        :meth:`_on_device` for state a detector keeps in other objects."""
        device = self.device_
        for name, value in list(vars(self).items()):
            if not name.endswith("_") or name.startswith("_"):
                continue
            if isinstance(value, torch.Tensor) and value.device != device:
                setattr(self, name, value.to(device))
            elif isinstance(value, nn.Module):
                value.to(device)
        self._on_device(device)

    def _on_device(self, device: torch.device) -> None:
        """Hook: move fitted state held outside tensor/module attributes (an index, a list) to ``device``."""

    @property
    def image_size(self) -> tuple[int, int]:
        """``input_size`` as ``(height, width)``."""
        return to_size(getattr(self, "input_size", 256))

    # -- fit / predict --------------------------------------------------------------------------
    def fit(self, data: Any) -> BaseDetector:
        """Learn normality from good images only; returns ``self``."""
        self._validate_params()
        stream: Any = ImageStream(data, self.load_size, batch_size=getattr(self, "batch_size", 8), where="fit")
        if self.tiled:
            stream = TileStream(stream, self.tile_size, self.tile_overlap, self.image_size, self._tile_input_size(),
                                batch_size=getattr(self, "batch_size", 8))
        self.threshold_: float | None = None
        self.score_scale_ = self.pixel_threshold_ = self.pixel_scale_ = None  # set by calibrate
        self.fitted_ = False
        device = self.device_  # refuses an unavailable device before any work
        if device.type != "cpu":
            stream = DeviceStream(stream, device)
        with seeded(getattr(self, "seed", 0)):
            self._fit(stream)
        self._move_to_device()
        self.fitted_ = True
        return self

    def predict(self, images: torch.Tensor) -> Prediction:
        """Score a ``(B,3,H,W)`` float batch in [0, 1]; maps come back at the input's own H×W."""
        self._check_fitted("predict")
        # tiling converts a uint8 image tile by tile: no float copy of a huge image is ever held
        images = validate_images(images, where="predict", tiling=self.tiled)
        context = torch.inference_mode() if self.inference_mode else torch.no_grad()
        with context:
            if self.tiled:
                pred_score, anomaly_map = predict_tiled_batch(images, lambda image, out: self._predict_tiled(image, out)[0])
            else:
                pred_score, anomaly_map = self._predict_resized(images, tuple(images.shape[-2:]))
        label = normalized = None
        threshold = getattr(self, "threshold_", None)
        if threshold is not None:
            label = pred_score >= threshold
            scale = getattr(self, "score_scale_", None)
            if scale is not None:
                from adcore.scoring import normalize_score

                normalized = normalize_score(pred_score, threshold, scale)
        return Prediction(pred_score, anomaly_map, label, normalized)

    def _predict_resized(self, images: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``_predict`` in chunks of ``predict_batch_size`` on images resized to ``input_size``; maps at ``size``."""
        scores, maps = [], []
        device = self.device_
        for start in range(0, images.shape[0], self.predict_batch_size):
            chunk = images[start:start + self.predict_batch_size].to(device, non_blocking=True)
            resized = F.interpolate(chunk, size=self.image_size, mode="bilinear", align_corners=False,
                                    antialias=chunk.shape[-2] > self.image_size[0] or chunk.shape[-1] > self.image_size[1]) \
                if tuple(chunk.shape[-2:]) != self.image_size else chunk
            score, amap = self._predict(resized)
            if amap.ndim == 4 and amap.shape[1] == 1:
                amap = amap[:, 0]
            self._check_output(score, amap, resized.shape[0])
            amap = F.interpolate(amap[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
            scores.append(score.detach().float().reshape(-1))
            maps.append(amap.detach())
        return _on_cpu(torch.cat(scores)), _on_cpu(torch.cat(maps))

    def score(self, images: torch.Tensor) -> torch.Tensor:
        """Image scores only (``predict(images).pred_score``)."""
        return self.predict(images).pred_score

    # -- thresholds (adcore.calibration) -----------------------------------------------------
    def calibrate(self, data: Any, *, target_fpr: float = 0.01, pixel_target_fpr: float = 0.001) -> BaseDetector:
        """Set ``threshold_`` (and the readable-score scales) from held-out data: the smallest threshold
        that flags at most ``target_fpr`` of good-only data, or the best-F1 one on labelled data with
        both classes; see :func:`adcore.calibration.calibrate` for every value it sets."""
        from adcore.calibration import calibrate

        return calibrate(self, data, target_fpr=target_fpr, pixel_target_fpr=pixel_target_fpr)

    # -- persistence ----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write parameters and fitted state to ``path`` (safetensors + JSON, atomically, no pickle).

        The header names this class (``target``), its registry name and distribution (answered by
        :func:`adcore.lookups.origin_of`, which the plugin host installs), the parameters and the
        JSON part of the fitted state; :mod:`adcore.persistence` writes it.
        """
        self._check_fitted("save")
        from adcore import persistence
        from adcore.lookups import origin_of

        cls = type(self)
        origin = origin_of(cls)
        tensors, state = self._get_state()
        header = {"detector": origin.name, "target": f"{cls.__module__}:{cls.__qualname__}",
                  "distribution": origin.distribution, "distribution_version": origin.distribution_version,
                  "params": {k: v for k, v in self.get_params().items() if k not in RUNTIME_PARAMETERS},
                  "state": state}
        return persistence.write(Path(path), tensors, header)

    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device = "auto") -> BaseDetector:
        """Rebuild a detector saved by :meth:`save` on ``device`` (any machine's: the file keeps no
        device); predictions are bit-identical on the same device.

        The file must hold this very class; ``adcore.load(path)`` finds the class a file needs.
        """
        from adcore import persistence
        from adcore.errors import ModelFileError

        path = Path(path)
        tensors, header = persistence.read(path)
        if header["target"] != f"{cls.__module__}:{cls.__qualname__}":
            raise ModelFileError(f"{path} holds a {header['detector']!r} detector ({header['target']}), not a "
                                 f"{cls.__name__}; use adcore.load(path) to load whatever it holds")

        def tuples(value: Any) -> Any:  # JSON lists come back as tuples: sequence parameters are tuples by convention
            if isinstance(value, list):
                return tuple(tuples(v) for v in value)
            if isinstance(value, dict):
                return {k: tuples(v) for k, v in value.items()}
            return value

        origin = f"{header['distribution']} {header['distribution_version']}"
        params = {k: v for k, v in tuples(header["params"]).items() if k not in RUNTIME_PARAMETERS}
        resolve_device(device)  # an unavailable device is the caller's error, not the file's
        try:
            detector = cls(**params, device=device)
        except (TypeError, ValueError) as exc:
            raise ModelFileError(f"{path} was written by {origin} with parameters this installed version of "
                                 f"{cls.__name__} does not accept ({type(exc).__name__}: {exc}); install the version "
                                 "that wrote it or retrain") from exc
        try:
            detector._set_state(tensors, dict(tuples(header["state"])))
        except ModelFileError as exc:  # a state no save() of this class writes
            raise ModelFileError(f"{path}: {exc}") from exc
        except (TypeError, ValueError, KeyError, RuntimeError) as exc:
            raise ModelFileError(f"{path} was written by {origin}; its fitted state does not fit the installed "
                                 f"{cls.__name__} ({type(exc).__name__}: {exc}); install the version that wrote it or "
                                 "retrain") from exc
        detector._move_to_device()
        detector.fitted_ = True
        return detector

    def _get_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Fitted attributes (ending in ``_``) split into tensors and JSON metadata."""
        tensors: dict[str, torch.Tensor] = {}
        meta: dict[str, Any] = {}
        modules: list[str] = []
        for name, value in vars(self).items():
            if not name.endswith("_") or name.startswith("_"):
                continue
            if isinstance(value, torch.Tensor):
                tensors[name] = value
            elif isinstance(value, nn.Module):
                modules.append(name)
                for key, tensor in value.state_dict().items():
                    tensors[f"{name}.{key}"] = tensor
            elif _json_able(value):
                meta[name] = value
            else:
                from adcore.errors import ModelFileError

                raise ModelFileError(f"{type(self).__name__}.{name} ({type(value).__name__}) cannot be saved: store "
                                     "tensors, nn.Modules or JSON values in fitted attributes, or override _get_state")
        meta["__modules__"] = modules
        return tensors, meta

    def _set_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Inverse of :meth:`_get_state`. Modules are built by :meth:`_build_modules` first.

        A file's state may set only fitted attributes: names that start with a letter and end in
        ``_`` (so never ``__dict__``, a dunder or a private name), that the class does not define
        itself (a method, property or class attribute cannot be shadowed) and, when the class
        declares ``fitted_state`` (a set of names), one of those or of the base class's own
        (:data:`adcore.persistence.BASE_FITTED_STATE`). Every tensor belongs to such an attribute or to one of the
        modules :meth:`_build_modules` created, each of which must receive all its tensors, in the
        shapes the parameters imply (:func:`adcore.persistence.load_state_tensors`).
        """
        from adcore.errors import ModelFileError

        modules = meta.pop("__modules__", [])
        if not isinstance(modules, (list, tuple)) or not all(isinstance(m, str) for m in modules):
            raise ModelFileError(f"the state's module list must be a list of names, got {modules!r}")
        from adcore.persistence import check_state_names

        check_state_names(type(self), [*meta, *modules, *(name for name in tensors if "." not in name)])
        stray = sorted(name for name in tensors if "." in name and name.split(".", 1)[0] not in set(modules))
        if stray:
            raise ModelFileError(f"tensor(s) {stray[:5]} belong to no module of the saved state "
                                 f"(modules: {sorted(modules)}); the file was not written by {type(self).__name__}.save()")
        for name, value in meta.items():
            setattr(self, name, value)
        if modules:
            self._build_modules()
        from adcore.persistence import load_state_tensors

        load_state_tensors(self, modules, tensors)  # shapes checked against the parameters first

    def _build_modules(self) -> None:
        """Create the (untrained) ``nn.Module`` attributes so a saved state can be loaded into them."""
        raise NotImplementedError(f"{type(self).__name__} saves nn.Modules and must implement _build_modules()")

    # -- for subclasses -------------------------------------------------------------------------
    def _validate_params(self) -> None:
        """Reject out-of-range parameters with the allowed range; called after ``__init__``, by
        ``set_params`` and before ``fit``. Subclasses override it only for checks that involve
        several parameters, calling ``super()._validate_params()`` first."""
        validate_parameters(type(self).__name__, self.get_params(), type(self).constraints())

    @abstractmethod
    def _fit(self, stream: ImageStream) -> None:
        """Learn from batches already resized to ``input_size``."""

    @abstractmethod
    def _predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(scores (B,), maps (B,h,w))`` for images resized to ``input_size``."""

    def _check_output(self, score: torch.Tensor, amap: torch.Tensor, count: int) -> None:
        """A detector bug must surface as an error naming it, never as a silent wrong score."""
        problem = None
        if tuple(score.reshape(-1).shape) != (count,) or amap.ndim != 3 or amap.shape[0] != count:
            problem = f"returned scores {tuple(score.shape)} and maps {tuple(amap.shape)} for {count} images"
        elif not bool(torch.isfinite(score).all()) or not bool(torch.isfinite(amap).all()):
            problem = "returned NaN or Inf scores"
        if problem:
            from adcore.errors import DetectorOutputError

            raise DetectorOutputError(f"{type(self).__module__}.{type(self).__name__} {problem}; this is a bug in the "
                                      "detector (or its fitted state is corrupt): report it to the plugin's authors")

    def _check_fitted(self, action: str) -> None:
        if not self.is_fitted:
            raise NotFittedError(f"{type(self).__name__} is not fitted yet: call fit(good_images) before {action}(), "
                                 "or load a saved model with adcore.load(path)")

    # -- export ---------------------------------------------------------------------------------
    def export(self, out: str | Path, format: str = "onnx", **options: Any) -> dict[str, Any]:
        """Write this fitted detector to the folder ``out`` as ``"onnx"``, ``"openvino"`` or
        ``"torchscript"``, after checking the artefact gives the same scores and maps; returns the
        sidecar (``adcore-export.json``). Options (``check``, ``opset``, ...): see
        :func:`adcore.export.export_detector` and docs/deployment.md."""
        self._check_fitted("export")
        from adcore.lookups import exporter

        return exporter()(self, out, format=format, **options)


def _on_cpu(tensor: torch.Tensor) -> torch.Tensor:
    # a fresh tensor either way: clone on the CPU, the copy .cpu() makes elsewhere
    return tensor.clone() if tensor.device.type == "cpu" else tensor.cpu()


def _json_able(value: Any) -> bool:
    if isinstance(value, _JSON_TYPES):
        return not (isinstance(value, float) and not math.isfinite(value))
    if isinstance(value, (list, tuple)):
        return all(_json_able(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _json_able(v) for k, v in value.items())
    return False
