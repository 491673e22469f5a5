"""The error body every endpoint uses, and the handlers that produce it."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from ivr.store.crypto import FieldKeyError
from ivr.validation import explain, keys_at

log = logging.getLogger(__name__)


def error_body(status: int, message: str, details: Any = None) -> dict[str, Any]:
    """The error shape: status, error_id, message, details."""
    return {"status": status, "error_id": uuid.uuid4().hex, "message": message,
            "details": details if details is not None else {}}


def _body_model(request: Request) -> type[BaseModel] | None:
    """The model the route reads its JSON body into, if any (for "did you mean" hints)."""
    route = request.scope.get("route")
    field = getattr(route, "body_field", None)
    model = getattr(getattr(field, "field_info", None), "annotation", None)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


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
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        body_model = _body_model(request)
        details = []
        for error in exc.errors():
            loc = tuple(error.get("loc", ()))
            allowed = None
            if error.get("type") == "extra_forbidden" and body_model and loc[:1] == ("body",):
                allowed = keys_at(body_model, loc[1:-1])
            details.append({"loc": list(loc), "msg": explain(error, allowed)})
        return JSONResponse(error_body(422, "request validation failed", details), 422)

    @app.exception_handler(FieldKeyError)
    async def sealed(_: Request, exc: FieldKeyError) -> JSONResponse:
        # Sealed personal data this process cannot open: a configuration to fix, not a bug.
        return JSONResponse(error_body(503, f"stored personal data cannot be opened: {exc}"),
                            503)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        body = error_body(500, "internal error")
        log.exception("unhandled API error", extra={"error_id": body["error_id"],
                                                    "path": request.url.path})
        return JSONResponse(body, 500)
