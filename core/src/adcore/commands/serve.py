"""``adcore serve MODEL [MODEL ...]``: an HTTP inference server with a review page (docs/serving.md).

Each MODEL is a ``.safetensors`` model file, served under its file stem, or ``NAME=MODEL``. The API
is under ``/v1`` (``POST /v1/models/NAME/predict``, ``GET /v1/models``, ``GET /v1/health``); the
review page is at ``/``. It listens on 127.0.0.1; any other ``--host`` needs a token
(``--token-file`` or ``ADCORE_SERVE_TOKEN``). SIGTERM or Ctrl-C stops it after the requests in
flight are answered. Needs the serve extra: ``pip install 'adcore[serve]'``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from adcore.commands.options import non_negative_float, positive_int

__all__ = ["NAME", "HELP", "add_arguments", "run"]

NAME = "serve"
HELP = "serve models over HTTP (JSON API under /v1, review page at /); loopback only unless given a token"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="+", metavar="MODEL", help="model files, each served under its file stem; "
                        "NAME=MODEL names one")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                        "only; any other needs a token)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    parser.add_argument("--token-file", type=Path, help="file holding the token clients must send as "
                        "'Authorization: Bearer TOKEN' (default: the ADCORE_SERVE_TOKEN environment variable)")
    parser.add_argument("--max-request-bytes", type=positive_int, default=32 * 1024 * 1024,
                        help="largest request body accepted (default 32 MiB; larger ones get 413)")
    parser.add_argument("--max-images", type=positive_int, default=32, help="most images in one request (default 32)")
    parser.add_argument("--max-batch", type=positive_int, default=8,
                        help="most images per detector call when requests are batched together (default 8)")
    parser.add_argument("--batch-wait-ms", type=non_negative_float, default=5.0,
                        help="longest a request waits for others to share its batch (default 5 ms; a lone "
                        "request never waits)")


def run(args: argparse.Namespace) -> int:
    from adcore.serve.config import ServeConfig, check_binding, parse_model_specs, read_token
    from adcore.serve.errors import ServeDependencyError

    models = parse_model_specs(args.models)
    token = read_token(args.token_file)
    check_binding(args.host, token)
    missing = [name for name in ("fastapi", "uvicorn", "multipart") if not _importable(name)]
    if missing:
        raise ServeDependencyError(f"adcore serve needs {', '.join(missing)}: pip install 'adcore[serve]'")
    from adcore.serve.runner import run_server

    config = ServeConfig(models=models, host=args.host, port=args.port, token=token,
                         max_request_bytes=args.max_request_bytes, max_images=args.max_images,
                         max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms)
    return run_server(config)


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None
