"""The FastAPI application: every router, the error handlers, health and readiness."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse

from ivr.api.auth import allow
from ivr.api.calls import calls_router
from ivr.api.console import console_router
from ivr.api.errors import error_body, install_error_handlers
from ivr.api.guard import RequestGuard, api_router
from ivr.api.live import live_router
from ivr.api.monitor_audio import monitor_audio_router
from ivr.api.routing import IMPORT_PATH, rules_router
from ivr.api.schemas import ErrorOut, ReadyOut, SimulateIn, SimulateOut
from ivr.api.services import ApiServices
from ivr.api.tokens import tokens_router
from ivr.api.voiceprint import voiceprint_router
from ivr.auth.throttle import FailureThrottle, Throttle
from ivr.auth.tokens import Principal
from ivr.health import Readiness
from ivr.metrics import CONTENT_TYPE
from ivr.routing.manage import MAX_EXPORT_BYTES
from ivr.routing.rule_schema import INTENTS
from ivr.routing.rules import rule_to_dict

__all__ = ["ApiServices", "create_app", "error_body"]


def simulate_router(services: ApiServices) -> APIRouter:
    """``POST /routing/simulate``."""
    router = api_router(prefix="/api/v1", tags=["routing"])

    @router.post("/routing/simulate", response_model=SimulateOut)
    async def simulate(
        body: SimulateIn,
        _: Annotated[Principal, Depends(allow("admin", "supervisor"))],
    ) -> SimulateOut:
        """Where a call from this number about this intent would go (at ``at``, or now)."""
        if body.intent not in INTENTS:
            raise RequestValidationError([{"loc": ("body", "intent"), "msg":
                                           f"unknown intent; one of {', '.join(INTENTS)}",
                                           "type": "value_error"}])
        routing = services.need_routing()
        at = body.at
        if at is not None and at.tzinfo is None:
            at = at.replace(tzinfo=routing.calendar.timezone)
        result = await asyncio.to_thread(routing.simulate, body.caller_number, body.intent, at)
        return SimulateOut(decision=result.decision.to_json(),
                           rule=rule_to_dict(result.rule) if result.rule else None,
                           region=asdict(result.resolution))

    return router


def create_app(services: ApiServices | Readiness) -> FastAPI:
    """Build the API around the controller's services."""
    if isinstance(services, Readiness):
        services = ApiServices(services)
    readiness = services.readiness
    errors: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorOut, "description": text} for code, text in (
            (401, "no token, or an unknown, expired or revoked one"),
            (403, "the token's role may not do this"), (404, "not found"),
            (413, "the body is over the size limit (security.max_body_bytes)"),
            (429, "too many failed authentications from this address; see Retry-After"),
            (422, "invalid request; details name the fields"),
            (503, "a component this endpoint needs is not running"))}
    security = services.security
    app = FastAPI(title="Hotline IVR", version="0.1.0", openapi_url="/openapi.json",
                  docs_url="/docs" if security.api_docs else None,
                  redoc_url="/redoc" if security.api_docs else None, responses=errors)
    app.state.tokens = services.tokens
    app.state.security = security
    if services.tokens is not None:
        app.state.auth_failures = FailureThrottle(Throttle(services.tokens.engine),
                                                  security.auth_failures, security.auth_window_s)
    app.add_middleware(RequestGuard, security=security,
                       limits={IMPORT_PATH: MAX_EXPORT_BYTES})
    install_error_handlers(app)

    @app.get("/api/v1/health", tags=["status"], responses={503: {"description": "broken"}})
    async def health() -> Any:
        """The process is up and can work (public: for load balancers and supervisors); 503
        with the reason when a part it cannot run without has stopped."""
        if readiness.fatal is not None:
            return JSONResponse({"status": "failed", "reason": readiness.fatal},
                                status_code=503)
        return {"status": "ok"}

    @app.get("/api/v1/ready", tags=["status"], response_model=ReadyOut,
             responses={503: {"model": ReadyOut}})
    async def ready() -> Any:
        """503 until everything the service needs is connected; the body says what is missing."""
        missing = readiness.missing()
        body = ReadyOut(ready=not missing, missing=missing, checks=readiness.checks(),
                        degraded=readiness.degraded(), reasons=readiness.reasons())
        return JSONResponse(body.model_dump(), status_code=200 if not missing else 503)

    @app.get("/api/v1/models", tags=["status"])
    async def models(_: Annotated[Principal, Depends(allow("admin"))]
                     ) -> dict[str, dict[str, Any]]:
        """The models this process loaded, by part (administrators): name, folder, device and
        whether it is a random-weight test model. A part that loaded none is absent."""
        return readiness.models()

    @app.get("/metrics", tags=["status"], response_class=PlainTextResponse,
             responses={200: {"content": {"text/plain": {}}}})
    async def metrics(_: Annotated[Principal, Depends(allow("admin", "supervisor"))]
                      ) -> PlainTextResponse:
        """Prometheus metrics (scrape with a supervisor or admin bearer token)."""
        if services.metrics is None:
            raise HTTPException(503, "no metrics in this process")
        return PlainTextResponse(services.metrics.render(), media_type=CONTENT_TYPE)

    app.include_router(calls_router(services))
    app.include_router(live_router(services))
    app.include_router(monitor_audio_router(services))
    app.include_router(rules_router(services))
    app.include_router(simulate_router(services))
    app.include_router(voiceprint_router(services))
    app.include_router(tokens_router(services))
    app.include_router(console_router())
    return app
