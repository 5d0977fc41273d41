"""The FastAPI application: the ``/v1`` API, the review page at ``/``, and errors a client can act on.

``POST /v1/models/{name}/predict`` takes one or more images, as multipart file parts (any field
names; ``curl -F images=@a.png -F images=@b.png``) or as a raw body with an image content type
(``curl --data-binary @a.png -H 'Content-Type: image/png'``), and answers one result per image in
the order sent. ``GET /v1/models`` describes the models, ``GET /v1/health`` answers 503 until every
model is open. The schema is at ``/v1/openapi.json``. Every error is ``{"error", "detail"}``:
400 for an image that cannot be read (naming its part), 401 without the token, 404 for an unknown
model (listing the models), 413 for a body above the limit, 503 while loading; anything unexpected
is a 500 with a plain message while the server logs the traceback.
"""

from __future__ import annotations

import asyncio
import logging
from importlib import resources
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from adcore.serve.config import ServeConfig
from adcore.serve.errors import ApiError
from adcore.serve.guard import Guard
from adcore.serve.images import Upload, decode_all, image_result
from adcore.serve.models import ModelSet

__all__ = ["create_app", "PAGE_FILES"]

log = logging.getLogger("adcore.serve")
#: the review page's files (package data under adcore/serve/static), the only files the app serves
PAGE_FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
              "style.css": "text/css; charset=utf-8"}
_RAW_TYPES = ("image/", "application/octet-stream")


def _page_file(name: str) -> bytes:
    return (resources.files("adcore.serve") / "static" / name).read_bytes()


def create_app(config: ServeConfig, models: ModelSet | None = None, *, on_loaded: Any = None) -> FastAPI:
    """The app for ``config``; its lifespan opens ``models`` (default: ``config.models``) in the
    background and stops their workers at shutdown. ``on_loaded(models)`` runs once loading ends."""
    from contextlib import asynccontextmanager

    from adcore import __version__

    models = models if models is not None else ModelSet(config.models, max_batch=config.max_batch,
                                                        wait_s=config.batch_wait_ms / 1000)
    page = {name: _page_file(name) for name in PAGE_FILES}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        models.start_loading(on_loaded)
        yield
        await run_in_threadpool(models.close)

    app = FastAPI(title="adcore serve", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url="/v1/openapi.json",
                  description="Score images with adcore anomaly detectors. Errors are JSON {error, detail}.")
    app.state.models = models
    app.state.config = config
    app.add_middleware(Guard, token=config.token, max_request_bytes=config.max_request_bytes)
    _add_error_handlers(app)

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page["index.html"])

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in page or name == "index.html":
            raise ApiError(404, "not found", f"the page has no file {name!r}")
        return Response(page[name], media_type=PAGE_FILES[name])

    @app.get("/v1/health", summary="503 until every model is open, then 200")
    async def health() -> JSONResponse:
        body = models.health()
        return JSONResponse(body, status_code=200 if models.ready else 503)

    @app.get("/v1/models", summary="The models served, with their detector, input size and calibration")
    async def list_models() -> dict[str, Any]:
        return {"models": [slot.info if slot.state == "ready" else {"name": slot.name, "state": slot.state}
                           for slot in models.slots.values()]}

    @app.post("/v1/models/{name}/predict", summary="Score one or more images",
              openapi_extra={"requestBody": {"content": {
                  "multipart/form-data": {"schema": {"type": "object", "properties": {
                      "images": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
                  "image/*": {"schema": {"type": "string", "format": "binary"}}}}})
    async def predict(request: Request, name: str,
                      heatmap: bool = Query(False, description="add each image's heatmap overlay, a base64 PNG"),
                      min_area: int = Query(1, ge=1, description="smallest defect region kept, in pixels")) -> Any:
        request.state.model = name
        slot = models.get(name)
        uploads = await _read_uploads(request, config)
        request.state.images = len(uploads)
        batcher, model = slot.batcher, slot.model
        batcher.expect(len(uploads))
        try:
            decoded = await run_in_threadpool(decode_all, uploads, model.load_size, config.max_pixels)
        except BaseException:
            batcher.withdraw(len(uploads))
            raise
        futures = batcher.submit([d.image for d in decoded], announced=len(uploads))
        scores = []
        for item, future in zip(decoded, futures):
            try:
                scores.append(await asyncio.wrap_future(future))
            except Exception as exc:
                from adcore.errors import InvalidInputError

                if isinstance(exc, InvalidInputError):
                    raise ApiError(400, "image refused by the detector", {**item.upload.where(),
                                                                          "reason": str(exc)}) from None
                raise
        from adcore.line.sink import Calibration

        calibration = Calibration.of(model)
        results = await run_in_threadpool(lambda: [image_result(d, s, calibration, heatmap=heatmap, min_area=min_area)
                                                   for d, s in zip(decoded, scores)])
        return {"model": name, "results": results}

    return app


async def _read_uploads(request: Request, config: ServeConfig) -> list[Upload]:
    """The images of a request (multipart files, or a raw image body); 400/415 when there are none."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        try:
            form = await request.form(max_files=config.max_images, max_fields=config.max_images)
        except StarletteHTTPException as exc:
            if "Too many files" in str(exc.detail):
                raise ApiError(413, "too many images", f"at most {config.max_images} images per request") from None
            raise ApiError(400, "bad multipart body", str(exc.detail)) from None
        uploads: list[Upload] = []
        for index, (part, value) in enumerate(form.multi_items()):
            if not isinstance(value, UploadFile):
                raise ApiError(400, "not a file", {"part": part, "index": index, "reason": (
                    "this part is a text field; send the image's bytes as a file part (curl -F 'images=@a.png'). "
                    "The server never reads a path named in a request")})
            uploads.append(Upload(part, index, value.filename, await value.read()))
        await form.close()
    elif content_type.startswith(_RAW_TYPES):
        uploads = [Upload("body", 0, request.headers.get("x-filename") or None, await request.body())]
    else:
        raise ApiError(415, "unsupported content type", (
            f"got {content_type or 'none'!r}; send multipart/form-data with image file parts, or one image as the "
            "body with an image content type (image/png, image/jpeg, ...)"))
    if not uploads:
        raise ApiError(400, "no images", "the request holds no image; add file parts (curl -F 'images=@a.png')")
    if len(uploads) > config.max_images:
        raise ApiError(413, "too many images", f"{len(uploads)} images; at most {config.max_images} per request")
    return uploads


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        from http import HTTPStatus

        detail = exc.detail
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no route {request.method} {request.url.path}; the API is under /v1 (schema: /v1/openapi.json)"
        elif exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path} (schema: /v1/openapi.json)"
        return JSONResponse({"error": HTTPStatus(exc.status_code).phrase.lower(), "detail": detail},
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [{"where": ".".join(str(part) for part in error.get("loc", ())), "reason": error.get("msg")}
                  for error in exc.errors()]
        return JSONResponse({"error": "invalid request", "detail": detail}, status_code=422)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"error": "internal server error", "detail": (
            "the server could not answer this request; its log has the cause. Retry, and report it if it persists")},
            status_code=500)
