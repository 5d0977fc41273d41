"""``adcore serve``: an inference server with a review page (needs the ``serve`` extra).

:func:`create_app` builds the FastAPI app for a :class:`ServeConfig` (see :mod:`adcore.serve.app`
for the API, :mod:`adcore.serve.guard` for the token, size limit and access log,
:mod:`adcore.serve.batching` for micro-batching); :func:`serve` runs it under uvicorn with graceful
shutdown. docs/serving.md is the guide.
"""

from __future__ import annotations

from typing import Any

from adcore.serve.config import TOKEN_ENV, ServeConfig, check_binding, parse_model_specs, read_token

__all__ = ["ServeConfig", "TOKEN_ENV", "parse_model_specs", "read_token", "check_binding", "create_app", "serve"]


def create_app(config: ServeConfig, models: Any = None, **kwargs: Any):
    """The FastAPI app (imported lazily: ``adcore.serve.config`` needs no fastapi)."""
    from adcore.serve.app import create_app as build

    return build(config, models, **kwargs)


def serve(config: ServeConfig) -> int:
    """Run the server until SIGTERM/Ctrl-C (in-flight requests finish); 1 if a model failed to open."""
    from adcore.serve.runner import run_server

    return run_server(config)
