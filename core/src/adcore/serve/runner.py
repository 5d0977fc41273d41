"""Running the app under uvicorn: logging, readiness, and graceful shutdown.

uvicorn handles SIGTERM and Ctrl-C gracefully: it stops accepting connections, lets the requests in
flight finish (their images are already queued with the model's worker, which scores them), then
runs the app's shutdown, which stops the workers. If a model cannot be opened the server stops
itself and :func:`run_server` returns 1, so a supervisor sees the failure at once.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from adcore.serve.config import ServeConfig

__all__ = ["run_server", "configure_logging"]


def configure_logging() -> None:
    """Access lines (JSON, one per request) and the server's own messages to stderr."""
    access = logging.getLogger("adcore.serve.access")
    own = logging.getLogger("adcore.serve")
    for logger, fmt in ((access, "%(message)s"), (own, "adcore serve: %(levelname)s: %(message)s")):
        if not any(getattr(h, "_adcore_serve", False) for h in logger.handlers):
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter(fmt))
            handler._adcore_serve = True  # type: ignore[attr-defined]
            logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def run_server(config: ServeConfig) -> int:
    import uvicorn

    from adcore.serve.app import create_app

    configure_logging()
    outcome = {"code": 0}
    server: Any = None

    def on_loaded(models: Any) -> None:
        if models.failed:
            logging.getLogger("adcore.serve").error(
                "stopping: %s", "; ".join(f"model {slot.name} ({slot.path}): {slot.error}" for slot in models.failed))
            outcome["code"] = 1
            if server is not None:
                server.should_exit = True
        elif config.port:
            logging.getLogger("adcore.serve").info("every model is ready: review page at http://%s:%d/, API under /v1",
                                                   config.host if ":" not in config.host else f"[{config.host}]",
                                                   config.port)

    app = create_app(config, on_loaded=on_loaded)
    server = uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, access_log=False,
                                           log_level="info", server_header=False, proxy_headers=False))
    server.run()
    return outcome["code"]
