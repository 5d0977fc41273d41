"""Model files: one safetensors file holding tensors plus a JSON header. Never pickle.

Header (safetensors ``__metadata__``, all strings): ``format`` = ``adcore-detector``,
``format_version``, ``detector`` (registry name), ``target`` (``module:Class``),
``distribution`` and ``distribution_version`` of the plugin, ``adcore_version``, ``params``,
``state`` (JSON values of fitted attributes), ``sha256`` over every tensor's name, dtype, shape
and bytes. Writes go to a temporary file in the same folder, are flushed to disk, then renamed over
the target, so a crash or a full disk mid-write leaves the previous file intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from importlib.metadata import PackageNotFoundError, packages_distributions, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from adcore.errors import ModelFileError

if TYPE_CHECKING:
    from adcore.base import BaseDetector

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "save_detector", "load_detector", "read_header", "atomic_write_bytes"]

FORMAT_NAME = "adcore-detector"
FORMAT_VERSION = 1
_MAX_HEADER_BYTES = 100 * 1024 * 1024
_SIGNED_KEYS = ("detector", "target", "params", "state")
_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # a pickle protocol opcode, or torch.save's zip


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` via a temporary file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with _suppress():
            os.unlink(temporary)
        raise


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return True


def _digest(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> str:
    hasher = hashlib.sha256()
    for key in _SIGNED_KEYS:
        hasher.update(f"{key}={meta.get(key, '')}|".encode())
    for name in sorted(tensors):
        tensor = tensors[name]
        hasher.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        hasher.update(tensor.contiguous().view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return hasher.hexdigest()


def _distribution_of(module: str) -> tuple[str, str]:
    top = module.split(".")[0]
    names = packages_distributions().get(top, [])
    for name in names:
        try:
            return name, version(name)
        except PackageNotFoundError:
            continue
    return "unknown", "unknown"


def _to_json(value: Any, what: str) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_to_json(v, what) for v in value]
    if isinstance(value, dict):
        return {str(k): _to_json(v, what) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ModelFileError(f"{what} of type {type(value).__name__} cannot be written to a model file; use JSON values")


def _from_json(value: Any) -> Any:
    """Lists come back as tuples: detectors' sequence parameters are tuples by convention."""
    if isinstance(value, list):
        return tuple(_from_json(v) for v in value)
    if isinstance(value, dict):
        return {k: _from_json(v) for k, v in value.items()}
    return value


def save_detector(detector: BaseDetector, path: Path) -> Path:
    from safetensors.torch import save

    from adcore import __version__
    from adcore.plugins import get_host

    cls = type(detector)
    target = f"{cls.__module__}:{cls.__qualname__}"
    entry = get_host().detectors.find_by_target(target)
    if entry is not None:
        name, distribution, dist_version = entry.name, entry.distribution, entry.version
    else:
        name = cls.__name__.lower()
        distribution, dist_version = _distribution_of(cls.__module__)
    tensors, state = detector._get_state()
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    params = {k: _to_json(v, f"parameter {k!r}") for k, v in detector.get_params().items()}
    header = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "detector": name,
        "target": target,
        "distribution": distribution,
        "distribution_version": dist_version,
        "adcore_version": __version__,
        "params": json.dumps(params),
        "state": json.dumps(_to_json(state, "fitted state")),
    }
    header["sha256"] = _digest(tensors, header)
    atomic_write_bytes(path, save(tensors, metadata=header))
    return path


def read_header(path: Path) -> dict[str, str]:
    """The JSON metadata of a model file, checked for format and version (tensors not read)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist (or is not a file)")
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ModelFileError(f"{path} is truncated or empty ({len(prefix)} bytes); it is not an adcore model file")
        if prefix.startswith(_PICKLE_MAGIC):
            raise ModelFileError(f"{path} is a pickle/torch.save file. adcore never unpickles (it can run code); "
                                 "model files are written by detector.save()")
        (length,) = struct.unpack("<Q", prefix)
        if length > _MAX_HEADER_BYTES or length > path.stat().st_size - 8:
            raise ModelFileError(f"{path} is truncated or not a safetensors file (header claims {length} bytes)")
        raw = handle.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path} has a corrupt header ({exc}); it is not an adcore model file") from exc
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise ModelFileError(f"{path} is a safetensors file but not an adcore detector (no '{FORMAT_NAME}' header); "
                             "load raw weights with safetensors instead")
    try:
        file_version = int(meta.get("format_version", "0"))
    except ValueError:
        raise ModelFileError(f"{path} has an invalid format_version {meta.get('format_version')!r}") from None
    if file_version > FORMAT_VERSION:
        raise ModelFileError(f"{path} uses model format v{file_version}, newer than this adcore reads (v{FORMAT_VERSION}); "
                             "upgrade adcore: pip install -U adcore")
    return meta


def load_detector(path: Path, expected: type | None = None) -> BaseDetector:
    """Rebuild the detector in ``path``; ``expected`` is the class ``Cls.load`` was called on."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    meta = read_header(path)
    if expected is None:
        from adcore.plugins import get_host
        from adcore.registry import ModelNotFoundError

        try:
            entry = get_host().detectors.get(meta["detector"])
        except ModelNotFoundError:
            raise ModelFileError(
                f"{path} holds a {meta['detector']!r} detector from {meta['distribution']} "
                f"{meta['distribution_version']}, which is not installed: pip install {meta['distribution']}") from None
        if entry.target_path != meta["target"]:
            raise ModelFileError(f"{path} was written by {meta['target']} but {meta['detector']!r} is now provided by "
                                 f"{entry.target_path} ({entry.distribution} {entry.version}); they may be incompatible")
        cls = entry.load()
    else:
        cls = expected
        if meta["target"] != f"{cls.__module__}:{cls.__qualname__}":
            raise ModelFileError(f"{path} holds a {meta['detector']!r} detector ({meta['target']}), not a {cls.__name__}; "
                                 "use adcore.load(path) to load whatever it holds")
    try:
        tensors = load(path.read_bytes())
    except SafetensorError as exc:
        raise ModelFileError(f"{path} is truncated or corrupt: {exc}") from exc
    if _digest(tensors, meta) != meta.get("sha256"):
        raise ModelFileError(f"{path} failed its checksum: tensors or parameters were modified or corrupted after saving. "
                             "Use an intact copy or retrain")
    try:
        params = _from_json(json.loads(meta["params"]))
        state = _from_json(json.loads(meta["state"]))
    except (KeyError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path} has a corrupt parameter block: {exc}") from exc
    detector = cls(**params)
    detector._set_state(tensors, dict(state))
    detector.fitted_ = True
    return detector
