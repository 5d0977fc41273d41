"""The errors of ``adcore serve``: each one an HTTP status and a JSON body a client can act on.

Every API error answers ``{"error": SHORT, "detail": WHAT TO DO}`` (``detail`` may be a string, a
list or an object: the models that exist, the part that was bad). :class:`ApiError` carries the
three; the app turns it into the response (see :mod:`adcore.serve.app`).
"""

from __future__ import annotations

from typing import Any

from adcore.errors import AdcoreError

__all__ = ["ApiError", "RequestTooLargeError", "ServeDependencyError"]


class ApiError(AdcoreError, RuntimeError):
    """A request the server refuses: ``status`` (400, 401, 404, 413, 503...), ``error``, ``detail``."""

    def __init__(self, status: int, error: str, detail: Any = None) -> None:
        super().__init__(error if detail is None else f"{error}: {detail}")
        self.status, self.error, self.detail = status, error, detail

    def body(self) -> dict[str, Any]:
        return {"error": self.error, "detail": self.detail}


class RequestTooLargeError(ApiError):
    """A request body above ``--max-request-bytes`` (413), raised while the body is still arriving."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, "request too large",
                         f"the request body is larger than the server's limit of {limit:,} bytes; send fewer or "
                         "smaller images per request (or start the server with a larger --max-request-bytes)")


class ServeDependencyError(AdcoreError, ImportError):
    """fastapi, uvicorn or python-multipart is not installed (the ``serve`` extra)."""
