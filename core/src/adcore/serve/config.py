"""What a server is started with: the models by name, where it listens, its token and its limits.

Safe by default: it listens on loopback; any other address needs a token (``--token-file`` or the
``ADCORE_SERVE_TOKEN`` environment variable), which every ``/v1`` request must then send as
``Authorization: Bearer TOKEN``. A token given on loopback is required there too.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from adcore.errors import ConfigurationError

__all__ = ["ServeConfig", "TOKEN_ENV", "parse_model_specs", "model_name_for", "read_token", "is_loopback",
           "check_binding"]

#: the environment variable holding the token (``--token-file`` wins when both are given)
TOKEN_ENV = "ADCORE_SERVE_TOKEN"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_MIN_TOKEN = 16


@dataclass(frozen=True)
class ServeConfig:
    """``models``: name -> model file or exported artefact. Limits: ``max_request_bytes`` per request
    body, ``max_images`` per request, ``max_batch`` images per detector call, ``batch_wait_ms`` the
    longest a request waits for others to share its batch; ``max_pixels`` the decompression-bomb
    guard (default ``ADCORE_MAX_PIXELS`` or the machine's default), which also bounds the pixels of all
    of one request's images together."""

    models: dict[str, Path]
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = field(default=None, repr=False)
    max_request_bytes: int = 32 * 1024 * 1024
    max_images: int = 32
    max_batch: int = 8
    batch_wait_ms: float = 5.0
    max_pixels: int | None = None


def model_name_for(path: Path) -> str:
    """A model's default name: the file's stem (``line1.safetensors`` -> ``line1``), an export folder's
    name (``deploy/padim`` or ``deploy/padim/adcore-export.json`` -> ``padim``)."""
    if path.name == "adcore-export.json":
        return path.parent.name
    return path.name if path.is_dir() else path.stem


def parse_model_specs(specs: list[str]) -> dict[str, Path]:
    """``MODEL`` or ``NAME=MODEL`` arguments as ``{name: path}``; names are unique and URL-safe."""
    models: dict[str, Path] = {}
    for spec in specs:
        name, sep, rest = spec.partition("=")
        if sep and not Path(spec).exists():  # NAME=MODEL (a path holding '=' is taken as it is)
            path = Path(rest)
        else:
            path, name = Path(spec), model_name_for(Path(spec))
        if not path.exists():
            raise ConfigurationError(f"model {str(path)!r} does not exist; give a .safetensors model file (or an "
                                     "exported artefact's folder) as MODEL or NAME=MODEL")
        if not _NAME.match(name):
            raise ConfigurationError(f"model name {name!r} (from {spec!r}) is not usable in a URL: use letters, digits, "
                                     "'.', '_' and '-' (at most 64), e.g. line1=" + str(path))
        if name in models:
            raise ConfigurationError(f"two models are named {name!r} ({models[name]} and {path}); name them apart with "
                                     f"NAME=MODEL, e.g. {name}-2={path}")
        models[name] = path
    if not models:
        raise ConfigurationError("adcore serve needs at least one MODEL")
    return models


def read_token(token_file: Path | None, environ: dict[str, str] | None = None) -> str | None:
    """The token from ``token_file`` (its first line) or :data:`TOKEN_ENV`; ``None`` when neither."""
    environ = os.environ if environ is None else environ
    if token_file is not None:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigurationError(f"cannot read the token file {token_file}: {exc.strerror or exc}") from exc
        source = f"the token file {token_file}"
    else:
        token = environ.get(TOKEN_ENV, "").strip()
        if not token:
            return None
        source = TOKEN_ENV
    if len(token) < _MIN_TOKEN or any(c.isspace() for c in token):
        raise ConfigurationError(f"{source} holds a token of {len(token)} characters; use at least {_MIN_TOKEN} "
                                 "characters without spaces, e.g. the output of: python -c \"import secrets; "
                                 "print(secrets.token_urlsafe(32))\"")
    return token


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_binding(host: str, token: str | None) -> None:
    """Refuse to listen beyond loopback without a token."""
    if not is_loopback(host) and token is None:
        raise ConfigurationError(f"--host {host} makes the server reachable from other machines, so it needs a token: "
                                 f"--token-file FILE or the {TOKEN_ENV} environment variable (clients then send "
                                 "'Authorization: Bearer TOKEN'); or keep the default --host 127.0.0.1")
