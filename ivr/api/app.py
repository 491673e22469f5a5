"""The FastAPI application: health and readiness for now, errors in one JSON shape."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ivr.controller import Readiness


def error_body(status: int, message: str, details: Any = None) -> dict[str, Any]:
    """The error shape every endpoint uses: status, error_id, message, details."""
    return {"status": status, "error_id": uuid.uuid4().hex, "message": message,
            "details": details if details is not None else {}}


def create_app(readiness: Readiness) -> FastAPI:
    """Build the API around the controller's readiness view."""
    app = FastAPI(title="Hotline IVR", version="0.1.0", openapi_url="/openapi.json")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(exc.status_code, str(exc.detail)), exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")}
                   for e in exc.errors()]
        return JSONResponse(error_body(422, "request validation failed", details), 422)

    @app.get("/api/v1/health")
    async def health() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/api/v1/ready")
    async def ready() -> JSONResponse:
        """503 until everything the service needs is connected; the body says what is missing."""
        missing = readiness.missing()
        body = {"ready": not missing, "missing": missing, "checks": readiness.checks()}
        return JSONResponse(body, status_code=200 if not missing else 503)

    return app
