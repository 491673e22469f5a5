"""The FastAPI application: health, readiness, calls and the routing dry run."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import asdict, dataclass
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ivr.api.schemas import (
    CallDetailOut,
    CallEventOut,
    CallOut,
    CallPage,
    OutboxOut,
    Route,
    SimulateIn,
    SimulateOut,
    TranscriptLine,
)
from ivr.flow.controller import Readiness
from ivr.routing.rules import INTENTS, rule_to_dict
from ivr.routing.service import RoutingService
from ivr.store.repository import Store, StoredCall
from ivr.verification.codes import OutboxSender


def error_body(status: int, message: str, details: Any = None) -> dict[str, Any]:
    """The error shape every endpoint uses: status, error_id, message, details."""
    return {"status": status, "error_id": uuid.uuid4().hex, "message": message,
            "details": details if details is not None else {}}


@dataclass
class ApiServices:
    """What the API reads from; the store and routing are absent in a bare process."""

    readiness: Readiness
    store: Store | None = None
    routing: RoutingService | None = None
    outbox: OutboxSender | None = None  # the development code sender's messages


def call_out(call: StoredCall) -> CallOut:
    """A stored call in API form."""
    return CallOut(
        call_id=call.id, sip_call_id=call.sip_call_id, caller_number=call.caller_number,
        dialed_number=call.dialed_number, region=call.region, region_source=call.region_source,
        region_reason=call.region_reason, province=call.province, city=call.city,
        language=call.language, intent=call.intent, intent_source=call.intent_source,
        menu_path=call.menu_path, state=call.state,
        route=Route(region=call.route_region, agent_id=call.agent_id),
        route_rule_id=call.route_rule_id, route_decision=call.route, overflow=call.overflow,
        verification=call.verification, callback_number=call.callback_number,
        started_at=call.started_at, answered_at=call.answered_at, queued_at=call.queued_at,
        connected_at=call.connected_at, ended_at=call.ended_at, hangup_cause=call.hangup_cause,
        hangup_by=call.hangup_by)


def _store(services: ApiServices) -> Store:
    if services.store is None:
        raise HTTPException(503, "the call store is not available in this process")
    return services.store


def _routing(services: ApiServices) -> RoutingService:
    if services.routing is None:
        raise HTTPException(503, "routing is not available in this process")
    return services.routing


def calls_router(services: ApiServices) -> APIRouter:
    """``/calls`` endpoints."""
    router = APIRouter(prefix="/api/v1")

    @router.get("/calls", response_model=CallPage)
    async def list_calls(
        active: bool | None = None, region: str | None = None, intent: str | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> CallPage:
        """Calls, newest first, with filters."""
        calls = await asyncio.to_thread(_store(services).list_calls, active=active,
                                        region=region, intent=intent, limit=limit,
                                        offset=offset)
        return CallPage(items=[call_out(c) for c in calls], limit=limit, offset=offset)

    @router.get("/calls/{call_id}", response_model=CallDetailOut)
    async def get_call(call_id: str) -> CallDetailOut:
        """One call by our id or by the SIP Call-ID of its inbound leg."""
        store = _store(services)
        call = await asyncio.to_thread(store.get_call, call_id)
        if call is None:
            raise HTTPException(404, f"no call {call_id!r}")
        events = await asyncio.to_thread(store.events, call.id)
        return CallDetailOut(**call_out(call).model_dump(),
                             events=[CallEventOut(at=e.at, kind=e.kind, data=e.data)
                                     for e in events])

    @router.get("/calls/{call_id}/transcript", response_model=list[TranscriptLine])
    async def get_transcript(call_id: str) -> list[TranscriptLine]:
        """Every recognised utterance of the call (caller and agent), in time order."""
        store = _store(services)
        call = await asyncio.to_thread(store.get_call, call_id)
        if call is None:
            raise HTTPException(404, f"no call {call_id!r}")
        entries = await asyncio.to_thread(store.transcript, call.id)
        return [TranscriptLine(speaker=e.speaker, start_s=e.start_s, end_s=e.end_s, text=e.text,
                               language=e.language, confidence=e.confidence, model=e.model,
                               intent=e.intent, intent_confidence=e.intent_confidence,
                               dropped_reason=e.dropped_reason) for e in entries]

    @router.get("/verification/outbox", response_model=list[OutboxOut])
    async def outbox(account_id: str | None = None,
                     limit: Annotated[int, Query(ge=1, le=200)] = 20) -> list[OutboxOut]:
        """Messages of the development code sender, newest first (absent with a real gateway)."""
        if services.outbox is None:
            raise HTTPException(404, "no development outbox in this deployment")
        messages = await asyncio.to_thread(services.outbox.messages, account_id, limit)
        return [OutboxOut(account_id=m.account_id, phone_number=m.phone_number, body=m.body,
                          created_at=m.created_at) for m in messages]

    @router.post("/routing/simulate", response_model=SimulateOut)
    async def simulate(body: SimulateIn) -> SimulateOut:
        """Where a call from this number about this intent would go (at ``at``, or now)."""
        if body.intent not in INTENTS:
            raise RequestValidationError([{"loc": ("body", "intent"), "msg":
                                           f"unknown intent; one of {', '.join(INTENTS)}",
                                           "type": "value_error"}])
        routing = _routing(services)
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
        body = {"ready": not missing, "missing": missing, "checks": readiness.checks(),
                "degraded": readiness.degraded()}
        return JSONResponse(body, status_code=200 if not missing else 503)

    app.include_router(calls_router(services))
    return app
