"""The error body every endpoint uses, and the handlers that produce it."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


def error_body(status: int, message: str, details: Any = None) -> dict[str, Any]:
    """The error shape: status, error_id, message, details."""
    return {"status": status, "error_id": uuid.uuid4().hex, "message": message,
            "details": details if details is not None else {}}


def field_error(loc: tuple[str | int, ...], message: str) -> RequestValidationError:
    """A 422 naming one field, raised from inside an endpoint."""
    return RequestValidationError([{"loc": loc, "msg": message, "type": "value_error"}])


def install_error_handlers(app: FastAPI) -> None:
    """HTTP errors, validation errors and anything unexpected, all in the error shape."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(exc.status_code, str(exc.detail)), exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")}
                   for e in exc.errors()]
        return JSONResponse(error_body(422, "request validation failed", details), 422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        body = error_body(500, "internal error")
        log.exception("unhandled API error", extra={"error_id": body["error_id"],
                                                    "path": request.url.path})
        return JSONResponse(body, 500)
