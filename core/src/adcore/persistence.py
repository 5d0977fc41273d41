"""Model files: one safetensors file holding tensors plus a JSON header. Never pickle.

Header (safetensors ``__metadata__``, all strings): ``format`` = ``adcore-detector``,
``format_version``, ``detector`` (registry name), ``target`` (``module:Class``),
``distribution`` and ``distribution_version`` of the plugin, ``adcore_version``, ``params``,
``state`` (JSON values of fitted attributes), ``sha256`` over every tensor's name, dtype, shape
and bytes. Writes go to a temporary file in the same folder, are flushed to disk, then renamed over
the target, so a crash, a full disk or Ctrl-C mid-write leaves the previous file intact and no
temporary file behind.

Loading never executes code from the file: pickles and ``torch.save`` archives are refused by their
first bytes, the header is plain JSON, and the class to build comes from the installed registry,
never from the file. The checksum detects corruption and casual edits; it is not a signature (anyone
who can write the file can recompute it), so keep model files where only trusted users can write.
"""

from __future__ import annotations

import functools
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


def _looks_pickled(prefix: bytes) -> bool:
    """A pickle (PROTO opcode 0x80 and protocol 2..5) or a zip archive (torch.save's format)."""
    return (prefix[:1] == b"\x80" and prefix[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")) or prefix.startswith(b"PK\x03\x04")


_REQUIRED_KEYS = ("detector", "target", "params", "state", "sha256")


def _file_mode() -> int:
    """Permissions of a newly created file under the current umask (mkstemp would give 0600)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _file_mode()


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` via a temporary file, ``fsync`` and ``os.replace``.

    Any failure (``OSError`` such as a full disk, ``KeyboardInterrupt``) removes the temporary
    file and leaves an existing ``path`` untouched.
    """
    path = Path(path)
    if path.is_dir():
        raise ModelFileError(f"cannot save to {path}: it is a folder; give a file name such as {path / 'model.safetensors'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, _FILE_MODE)
        os.replace(temporary, path)
    except BaseException:
        with _suppress():
            os.unlink(temporary)
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (best effort: not every OS/filesystem allows it)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


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
        # reshape(-1): a 0-dim tensor cannot be viewed as bytes directly
        hasher.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return hasher.hexdigest()


@functools.lru_cache(maxsize=1)
def _packages_distributions() -> dict[str, list[str]]:
    # scanning every installed distribution takes about a second: once per process is enough
    return packages_distributions()


def _distribution_of(module: str) -> tuple[str, str]:
    top = module.split(".")[0]
    names = _packages_distributions().get(top, [])
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
    if type(value).__module__ == "numpy" and hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return _to_json(value.item(), what)  # numpy scalars, e.g. from a parameter grid
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
    tensors = _unshare({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    params = {k: _to_json(v, f"parameter {k!r}") for k, v in detector.get_params().items()}
    header = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "detector": name,
        "target": target,
        "distribution": distribution,
        "distribution_version": dist_version,
        "adcore_version": __version__,
        # sorted keys: the same detector always gives the same bytes, however its attributes were set
        "params": json.dumps(params, sort_keys=True),
        "state": json.dumps(_to_json(state, "fitted state"), sort_keys=True),
    }
    header["sha256"] = _digest(tensors, header)
    atomic_write_bytes(path, save(tensors, metadata=header))
    return path


def _unshare(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory (tied weights, a view kept next to its base):
    copy every tensor whose storage an earlier one already uses."""
    seen: set[int] = set()
    out = {}
    for name in sorted(tensors):
        tensor = tensors[name]
        pointer = tensor.untyped_storage().data_ptr() if tensor.numel() else 0
        if pointer and pointer in seen:
            tensor = tensor.clone()
        elif pointer:
            seen.add(pointer)
        out[name] = tensor
    return out


def read_header(path: Path) -> dict[str, str]:
    """The JSON metadata of a model file, checked for format and version (tensors not read)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist (or is not a file)")
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ModelFileError(f"{path} is truncated or empty ({len(prefix)} bytes); it is not an adcore model file")
        (length,) = struct.unpack("<Q", prefix)
        first = handle.read(1)
        # A safetensors file is an 8-byte header length and then a JSON object. Only when that does
        # not hold is the file sniffed for pickle: a legitimate header length may begin with 0x80.
        if first != b"{" or length < 2 or length > _MAX_HEADER_BYTES or length > path.stat().st_size - 8:
            if first == b"{" and 2 <= length <= _MAX_HEADER_BYTES:
                raise ModelFileError(f"{path} is truncated (its header claims {length} bytes, the file has "
                                     f"{path.stat().st_size - 8} after the length)")
            if _looks_pickled(prefix):
                raise ModelFileError(f"{path} is a pickle/torch.save file. adcore never unpickles (it can run code); "
                                     "model files are written by detector.save()")
            raise ModelFileError(f"{path} is truncated or not a safetensors file; it is not an adcore model file")
        raw = first + handle.read(length - 1)
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
    if file_version < 1:
        raise ModelFileError(f"{path} has an invalid format_version {meta.get('format_version')!r} (expected 1..{FORMAT_VERSION})")
    missing = [key for key in _REQUIRED_KEYS if not isinstance(meta.get(key), str)]
    if missing:
        raise ModelFileError(f"{path} is missing header field(s) {missing}; it is damaged or was not written by "
                             "detector.save()")
    meta.setdefault("distribution", "unknown")
    meta.setdefault("distribution_version", "unknown")
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
            if meta["distribution"] == "unknown":
                raise ModelFileError(
                    f"{path} holds a {meta['detector']!r} detector ({meta['target']}) that no installed plugin registers; "
                    "load it with its class: TheClass.load(path)") from None
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
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise ModelFileError(f"{path} is truncated or corrupt: {exc}") from exc
    if _digest(tensors, meta) != meta.get("sha256"):
        raise ModelFileError(f"{path} failed its checksum: tensors or parameters were modified or corrupted after saving. "
                             "Use an intact copy or retrain")
    try:
        params = _from_json(json.loads(meta["params"]))
        state = _from_json(json.loads(meta["state"]))
    except (KeyError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path} has a corrupt parameter block: {exc}") from exc
    if not isinstance(params, dict) or not isinstance(state, dict):
        raise ModelFileError(f"{path} has a corrupt parameter block: params and state must be JSON objects")
    origin = f"{meta['distribution']} {meta['distribution_version']}"
    try:
        detector = cls(**params)
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"{path} was written by {origin} with parameters this installed version of "
                             f"{cls.__name__} does not accept ({type(exc).__name__}: {exc}); install the version that "
                             "wrote it or retrain") from exc
    try:
        detector._set_state(tensors, dict(state))
    except (TypeError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelFileError(f"{path} was written by {origin}; its fitted state does not fit the installed "
                             f"{cls.__name__} ({type(exc).__name__}: {exc}); install the version that wrote it or "
                             "retrain") from exc
    detector.fitted_ = True
    return detector
