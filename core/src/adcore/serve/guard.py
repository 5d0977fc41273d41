"""The door every request passes: the token, the size limit, and one JSON access-log line.

A pure ASGI middleware (it sees the raw request before FastAPI parses anything):

* with a token, every ``/v1`` request must send ``Authorization: Bearer TOKEN``; the comparison is
  :func:`hmac.compare_digest` (constant time), and a missing or wrong token is a 401 before the
  body is read;
* a ``Content-Length`` above the limit is a 413 before the body is read; a body without one (chunked)
  is counted as it arrives and cut off with a 413 the moment it passes the limit;
* when the response is done, one line goes to the ``adcore.serve.access`` logger:
  ``{"method", "path", "status", "ms", "model", "images"}`` (``model`` and ``images`` as the
  endpoint recorded them in ``request.state``, else ``null``).
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from typing import Any

from adcore.serve.errors import RequestTooLargeError

__all__ = ["Guard", "ACCESS_LOG"]

ACCESS_LOG = logging.getLogger("adcore.serve.access")


async def _send_json(send: Any, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] = ()) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": payload})


class Guard:
    """See the module docstring; ``token`` ``None`` lets every request through (loopback only)."""

    def __init__(self, app: Any, *, token: str | None, max_request_bytes: int) -> None:
        self.app, self.limit = app, int(max_request_bytes)
        self._token = None if token is None else token.encode()

    def _authorised(self, headers: dict[bytes, bytes]) -> bool:
        scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self._token)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state = scope.setdefault("state", {})
        status: list[int] = []

        async def send_noting_status(message: dict) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        try:
            await self._guarded(scope, receive, send_noting_status)
        except BaseException:
            if not status:
                status.append(500)
            raise
        finally:
            ACCESS_LOG.info(json.dumps({
                "method": scope.get("method"), "path": scope.get("path"), "status": status[0] if status else None,
                "ms": round((time.perf_counter() - started) * 1000, 2), "model": state.get("model"),
                "images": state.get("images")}))

    async def _guarded(self, scope: dict, receive: Any, send: Any) -> None:
        headers = dict(scope.get("headers") or [])
        path = scope.get("path", "")
        if self._token is not None and (path == "/v1" or path.startswith("/v1/")) and not self._authorised(headers):
            await _send_json(send, 401, {"error": "unauthorized", "detail": (
                "this server needs a token: send 'Authorization: Bearer TOKEN' with the token it was started with "
                "(--token-file or ADCORE_SERVE_TOKEN)")}, [(b"www-authenticate", b"Bearer")])
            return
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await _send_json(send, 400, {"error": "bad request", "detail": f"Content-Length {declared!r} is not "
                                                                              "a number"})
                return
            if length > self.limit:
                await _send_json(send, 413, RequestTooLargeError(self.limit).body())
                return
        received = 0

        async def counted() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise RequestTooLargeError(self.limit)
            return message

        await self.app(scope, counted, send)
