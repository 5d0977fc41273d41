"""The model file format: one safetensors file holding tensors plus a JSON header. Never pickle.

This module is the format only: it writes and reads tensors and a header, and checks a file before
anything is built from it. What goes into the header (which detector, its parameters and state) is
decided by :meth:`adcore.base.BaseDetector.save`; which installed class a file needs is decided by
:func:`adcore.factory.load`.

Header (safetensors ``__metadata__``, all strings): ``format`` = ``adcore-detector``,
``format_version``, ``adcore_version``, ``detector`` (registry name), ``target``
(``module:Class``), ``distribution`` and ``distribution_version`` of the plugin, ``params`` and
``state`` (JSON objects, written with sorted keys), and ``sha256`` over ``detector``, ``target``,
``params``, ``state`` and every tensor's name, dtype, shape and bytes. The header JSON itself is
written with sorted keys, so the same tensors and header always give the same file bytes.
Writes are atomic (:func:`adcore.files.atomic_write_bytes`): a crash, a full disk or Ctrl-C
mid-write leaves the previous file intact.

Reading never executes code from the file: pickles and ``torch.save`` archives are refused by their
first bytes, the header is plain JSON with a size limit (:data:`MAX_HEADER_BYTES`) and a nesting
limit (:data:`MAX_JSON_DEPTH`, so a header of nested brackets is an error, not a ``RecursionError``),
and the class to build comes from the installed registry, never from the file. Tensors must be
floating-point, integer or bool, and the state may set only fitted attributes
(:func:`check_state_names`). The checksum detects corruption and casual edits; it is not a
signature (anyone who can write the file can recompute it).

Authenticity is optional: with a signing key (``ADCORE_SIGNING_KEY``, the key itself, or
``ADCORE_SIGNING_KEY_FILE``, a file holding it) :func:`write` adds ``signature`` =
``hmac-sha256:<hex>``, an HMAC-SHA256 over every other header field (the checksum among them, so
the tensors are covered), and :func:`read` verifies it. ``ADCORE_REQUIRE_SIGNED=1`` refuses files
without a valid signature; without it, an unsigned file loads as before.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from adcore._version import __version__
from adcore.errors import ModelFileError
from adcore.files import atomic_write_bytes  # ad-distill's teachers.py still imports it from here; new code: adcore.files

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "MAX_HEADER_BYTES", "MAX_JSON_DEPTH", "ALLOWED_DTYPES", "write", "read",
           "read_header", "signing_key", "BASE_FITTED_STATE", "check_state_names", "load_state_tensors"]

FORMAT_NAME = "adcore-detector"
FORMAT_VERSION = 1
#: the largest header (safetensors JSON, including ``params`` and ``state``) a file may claim
MAX_HEADER_BYTES = 100 * 1024 * 1024
#: the deepest nesting of brackets allowed in the header and in ``params`` / ``state``
MAX_JSON_DEPTH = 64

_SIGNED_KEYS = ("detector", "target", "params", "state")
_REQUIRED_KEYS = ("detector", "target", "params", "state", "sha256")
_TEXT_FIELDS = ("detector", "target", "distribution", "distribution_version")
_JSON_FIELDS = ("params", "state")
_SIGNATURE_PREFIX = "hmac-sha256:"
#: the tensor dtypes a model file may hold: floating-point, integer and bool (no complex, no quantized)
ALLOWED_DTYPES = frozenset({torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32,
                            torch.int16, torch.int8, torch.uint8, torch.bool})


def signing_key() -> bytes | None:
    """The HMAC key from ``ADCORE_SIGNING_KEY`` or the file named by ``ADCORE_SIGNING_KEY_FILE``; ``None`` if neither."""
    from adcore.errors import ConfigurationError

    text = os.environ.get("ADCORE_SIGNING_KEY", "")
    if text:
        return text.encode("utf-8")
    file = os.environ.get("ADCORE_SIGNING_KEY_FILE", "")
    if not file:
        return None
    try:
        key = Path(file).read_bytes().strip()
    except OSError as exc:
        raise ConfigurationError(f"ADCORE_SIGNING_KEY_FILE={file}: cannot read the signing key "
                                 f"({exc.strerror or exc})") from exc
    if not key:
        raise ConfigurationError(f"ADCORE_SIGNING_KEY_FILE={file} is empty; put the signing key in it")
    return key


def _require_signed() -> bool:
    return os.environ.get("ADCORE_REQUIRE_SIGNED", "").strip().lower() in ("1", "true", "yes", "on")


def _signature(key: bytes, meta: Mapping[str, str]) -> str:
    signed = {k: v for k, v in meta.items() if k != "signature"}
    message = json.dumps(signed, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return _SIGNATURE_PREFIX + hmac.new(key, message, hashlib.sha256).hexdigest()


def write(path: str | Path, tensors: Mapping[str, torch.Tensor], header: Mapping[str, Any]) -> Path:
    """Write ``tensors`` and ``header`` to ``path`` atomically; returns ``path``.

    ``header`` holds ``detector`` and ``target`` (strings), optionally ``distribution`` and
    ``distribution_version`` (strings, default ``"unknown"``), and ``params`` and ``state``
    (mappings of JSON values; tuples, paths and numpy scalars are converted). ``format``,
    ``format_version``, ``adcore_version`` and ``sha256`` are added here.
    """
    path = Path(path)
    if path.is_dir():
        raise ModelFileError(f"cannot save to {path}: it is a folder; give a file name such as {path / 'model.safetensors'}")
    meta = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION), "adcore_version": __version__,
            **_encode_fields(header)}
    tensors = _unshare({name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()})
    unsupported = sorted(name for name, tensor in tensors.items() if tensor.dtype not in ALLOWED_DTYPES)
    if unsupported:
        raise ModelFileError(f"tensor(s) {unsupported} have dtype {tensors[unsupported[0]].dtype}; a model file holds "
                             "floating-point, integer or bool tensors only")
    meta["sha256"] = _digest(tensors, meta)
    key = signing_key()
    if key is not None:
        meta["signature"] = _signature(key, meta)
    return atomic_write_bytes(path, _serialise(tensors, meta))


def read_header(path: str | Path) -> dict[str, Any]:
    """The header of a model file, checked for format, version and fields (tensors not read).

    ``params`` and ``state`` come back as dicts of JSON values, ``format_version`` as an int.
    """
    path = Path(path)
    return _decode_fields(_read_meta(path), path)


def read(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(tensors, header)`` of a model file, after every check including the checksum."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    meta = _read_meta(path)
    try:
        tensors = load(path.read_bytes())
    except PermissionError as exc:
        raise ModelFileError(f"cannot read model file {path}: permission denied; give this user read access to it") from exc
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise ModelFileError(f"{path} is truncated or corrupt: {exc}") from exc
    if _digest(tensors, meta) != meta["sha256"]:
        raise ModelFileError(f"{path} failed its checksum: tensors or parameters were modified or corrupted after saving. "
                             "Use an intact copy or retrain")
    _verify_signature(meta, path)
    unsupported = sorted(name for name, tensor in tensors.items() if tensor.dtype not in ALLOWED_DTYPES)
    if unsupported:
        raise ModelFileError(f"{path} holds tensor(s) {unsupported[:5]} of dtype {tensors[unsupported[0]].dtype}; a model "
                             "file holds floating-point, integer or bool tensors only. It was not written by "
                             "detector.save()")
    return tensors, _decode_fields(meta, path)


def _verify_signature(meta: Mapping[str, str], path: Path) -> None:
    key = signing_key()
    signature = meta.get("signature")
    if signature is None:
        if _require_signed():
            raise ModelFileError(f"{path} is not signed, and ADCORE_REQUIRE_SIGNED=1 refuses unsigned model files; "
                                 "save it again with ADCORE_SIGNING_KEY (or ADCORE_SIGNING_KEY_FILE) set")
        return
    if key is None:
        if _require_signed():
            raise ModelFileError(f"{path} is signed, but no signing key is configured to verify it "
                                 "(ADCORE_REQUIRE_SIGNED=1); set ADCORE_SIGNING_KEY or ADCORE_SIGNING_KEY_FILE")
        return
    if not isinstance(signature, str) or not hmac.compare_digest(signature, _signature(key, meta)):
        raise ModelFileError(f"{path} failed its signature check: it was modified after it was signed, or signed with "
                             "another key. Use the original file, or the key it was signed with")


# -- writing -------------------------------------------------------------------------------------------------
def _encode_fields(header: Mapping[str, Any]) -> dict[str, str]:
    unknown = sorted(set(header) - set(_TEXT_FIELDS) - set(_JSON_FIELDS))
    if unknown:
        raise ModelFileError(f"header field(s) {unknown} are not part of the {FORMAT_NAME} format; "
                             f"its fields are {list(_TEXT_FIELDS + _JSON_FIELDS)}")
    fields: dict[str, str] = {}
    for key in _TEXT_FIELDS:
        value = header.get(key, "unknown") if key.startswith("distribution") else header.get(key)
        if not isinstance(value, str) or not value:
            raise ModelFileError(f"header field {key!r} must be a non-empty string, got {value!r}")
        fields[key] = value
    for key in _JSON_FIELDS:
        value = header.get(key)
        if not isinstance(value, Mapping):
            raise ModelFileError(f"header field {key!r} must be a mapping of JSON values, got {type(value).__name__}")
        depth = _nesting(dict(value))
        if depth > MAX_JSON_DEPTH:
            raise ModelFileError(f"the {key} of this detector nest more than {MAX_JSON_DEPTH} levels deep, which a model "
                                 "file does not allow; store deep structures as tensors")
        if key == "params":
            encoded = {str(k): _to_json(v, f"parameter {k!r}") for k, v in value.items()}
        else:
            encoded = _to_json(dict(value), "fitted state")
        # sorted keys: the same detector always gives the same bytes, however its attributes were set
        fields[key] = json.dumps(encoded, sort_keys=True)
    return fields


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


def _serialise(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> bytes:
    """safetensors bytes with the header JSON's keys sorted.

    safetensors keeps ``__metadata__`` in a hash map whose order changes from one save to the next,
    so its own output differs between two saves of the same detector; the tensor layout it chooses
    is kept, only the header is written again, canonically.
    """
    from safetensors.torch import save

    raw = save(tensors, metadata=meta)
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)  # safetensors aligns the tensor data to 8 bytes
    return struct.pack("<Q", len(text)) + text + raw[8 + length:]


def _digest(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, str]) -> str:
    hasher = hashlib.sha256()
    for key in _SIGNED_KEYS:
        hasher.update(f"{key}={meta.get(key, '')}|".encode())
    for name in sorted(tensors):
        tensor = tensors[name]
        hasher.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        # reshape(-1): a 0-dim tensor cannot be viewed as bytes directly
        hasher.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return hasher.hexdigest()


# -- reading -------------------------------------------------------------------------------------------------
def _looks_pickled(prefix: bytes) -> bool:
    """A pickle (PROTO opcode 0x80 and protocol 2..5) or a zip archive (torch.save's format)."""
    return (prefix[:1] == b"\x80" and prefix[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")) or prefix.startswith(b"PK\x03\x04")


def _nesting(value: Any) -> int:
    """How deeply lists and dicts nest in ``value`` (``{"a": 1}`` is 1), counted up to one level past
    :data:`MAX_JSON_DEPTH`; walked without recursion."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, level = pending.pop()
        if isinstance(item, (list, tuple, dict)):
            deepest = max(deepest, level)
            if level > MAX_JSON_DEPTH:
                break  # deep enough to refuse; the rest need not be walked
            pending.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _parse_json(raw: bytes | str, path: Path, what: str) -> Any:
    """``json.loads`` with the nesting limit; every failure is a :class:`ModelFileError`."""
    try:
        value = json.loads(raw)
        too_deep = _nesting(value) > MAX_JSON_DEPTH
    except RecursionError:  # nested deeper than the interpreter's recursion limit
        value, too_deep = None, True
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path} has a corrupt {what} ({type(exc).__name__}: {exc}); it is not an adcore model file") from exc
    if too_deep:
        raise ModelFileError(f"{path} has a corrupt {what}: its JSON nests more than {MAX_JSON_DEPTH} levels deep; "
                             "it is damaged or was not written by detector.save()")
    return value


def _read_meta(path: Path) -> dict[str, str]:
    """The safetensors ``__metadata__`` of ``path``, checked for format, version and required fields."""
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist (or is not a file)")
    try:
        handle = open(path, "rb")
    except PermissionError as exc:
        raise ModelFileError(f"cannot read model file {path}: permission denied; give this user read access to it") from exc
    with handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ModelFileError(f"{path} is truncated or empty ({len(prefix)} bytes); it is not an adcore model file")
        (length,) = struct.unpack("<Q", prefix)
        first = handle.read(1)
        # A safetensors file is an 8-byte header length and then a JSON object. Only when that does
        # not hold is the file sniffed for pickle: a legitimate header length may begin with 0x80.
        if first != b"{" or length < 2 or length > MAX_HEADER_BYTES or length > path.stat().st_size - 8:
            if first == b"{" and 2 <= length <= MAX_HEADER_BYTES:
                raise ModelFileError(f"{path} is truncated (its header claims {length} bytes, the file has "
                                     f"{path.stat().st_size - 8} after the length)")
            if _looks_pickled(prefix):
                raise ModelFileError(f"{path} is a pickle/torch.save file. adcore never unpickles (it can run code); "
                                     "model files are written by detector.save()")
            if first == b"{" and length > MAX_HEADER_BYTES:
                raise ModelFileError(f"{path} claims a header of {length} bytes, more than a model file may have "
                                     f"({MAX_HEADER_BYTES}); it is truncated or not a safetensors file")
            raise ModelFileError(f"{path} is truncated or not a safetensors file; it is not an adcore model file")
        raw = first + handle.read(length - 1)
    header = _parse_json(raw, path, "header")
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise ModelFileError(f"{path} is a safetensors file but not an adcore detector (no '{FORMAT_NAME}' header); "
                             "load raw weights with safetensors instead")
    try:
        file_version = int(meta.get("format_version", "0"))
    except (TypeError, ValueError):
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


def _decode_fields(meta: dict[str, str], path: Path) -> dict[str, Any]:
    header: dict[str, Any] = dict(meta)
    header["format_version"] = int(meta["format_version"])
    for key in _JSON_FIELDS:
        value = _parse_json(meta[key], path, "parameter block")
        if not isinstance(value, dict):
            raise ModelFileError(f"{path} has a corrupt parameter block: params and state must be JSON objects")
        header[key] = value
    return header


# -- fitted state ---------------------------------------------------------------------------------------------
#: fitted attributes BaseDetector itself sets (fit, calibrate; ``training_images_``, the folder of good
#: training images, is set by ``adcore train``/``eval`` for export's parity check), allowed in every file's state
BASE_FITTED_STATE = frozenset({"fitted_", "threshold_", "calibration_", "score_scale_", "pixel_threshold_",
                               "pixel_scale_", "training_images_"})


def check_state_names(cls: type, names: list[str]) -> None:
    """Refuse state names a model file must not set on ``cls``: only fitted attributes (a letter
    first, one ``_`` last), none that ``cls`` defines itself, and, when ``cls`` declares
    ``fitted_state``, only those and :data:`BASE_FITTED_STATE` (see ``BaseDetector._set_state``)."""
    declared = getattr(cls, "fitted_state", None)
    for name in names:
        if not (isinstance(name, str) and name[:1].isalpha() and name.endswith("_") and name.isidentifier()
                and not name.endswith("__")):
            raise ModelFileError(f"the saved state names {name!r}, which is not a fitted attribute (a name starting "
                                 f"with a letter and ending in one '_'); the file was not written by {cls.__name__}.save()")
        if hasattr(cls, name):
            raise ModelFileError(f"the saved state would replace {cls.__name__}.{name}, which the class defines itself; "
                                 f"the file was not written by {cls.__name__}.save()")
        if declared is not None and name not in declared and name not in BASE_FITTED_STATE:
            raise ModelFileError(f"the saved state holds {name!r}, which {cls.__name__} does not declare in "
                                 f"fitted_state {sorted(declared)}; install the version that wrote it or retrain")


def load_state_tensors(owner: Any, modules: list[str], tensors: Mapping[str, torch.Tensor]) -> None:
    """Put a file's tensors into ``owner`` (``BaseDetector._set_state``, after ``_build_modules``):
    each module's tensors into that module, the others as attributes.

    Every shape is checked first against what the parameters imply, so a file whose tensors disagree
    with its parameters is a :class:`ModelFileError` naming the tensor and both shapes, never a
    traceback at predict: a module's tensors against the module the parameters built, and plain
    tensors against ``owner.expected_state_shapes()`` when the class declares it (``{name: shape}``,
    ``None`` for a free dimension, e.g. the number of training patches).
    """
    owner_name = type(owner).__name__
    expected: dict[str, tuple[int | None, ...]] = {}
    for name in modules:
        module = getattr(owner, name, None)
        if not isinstance(module, torch.nn.Module):
            raise ModelFileError(f"{owner_name}._build_modules() must create the module {name!r} before loading")
        expected.update({f"{name}.{key}": tuple(value.shape) for key, value in module.state_dict().items()})
    declared = getattr(owner, "expected_state_shapes", None)
    if callable(declared):
        expected.update({name: tuple(shape) for name, shape in declared().items()})
    for name, tensor in sorted(tensors.items()):
        want = expected.get(name)
        found = tuple(tensor.shape)
        if want is not None and (len(want) != len(found) or any(w is not None and w != f for w, f in zip(want, found))):
            shown = tuple("any" if w is None else w for w in want)
            raise ModelFileError(f"tensor {name!r} has shape {found} in the file, but {owner_name}'s parameters imply "
                                 f"{shown}: the file's tensors disagree with its parameters (modified after saving, "
                                 f"or not written by {owner_name}.save()); retrain or restore the original file")
    for name in modules:
        prefix = f"{name}."
        module = getattr(owner, name)
        module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}, strict=True)
        module.eval()
    for name, value in tensors.items():
        if "." not in name:
            setattr(owner, name, value)
