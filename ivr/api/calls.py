"""``/calls``: list, detail and transcript, with personal data redacted by role.

Caller and callback numbers are masked and transcripts redacted for every role unless the
request asks for ``unredacted=true`` and the role is listed in ``privacy.unredacted_roles``;
each such read is audited (who, when, which call). Agents see only calls they answered.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query

from ivr import phone
from ivr.api.auth import allow
from ivr.api.guard import api_router
from ivr.api.schemas import (
    CallDetailOut,
    CallEventOut,
    CallOut,
    CallPage,
    MonitorIn,
    MonitorOut,
    OutboxOut,
    Route,
    TranscriptLine,
)
from ivr.api.services import ApiServices
from ivr.auth.tokens import Principal
from ivr.errors import MonitorRefused
from ivr.redaction import redact
from ivr.store.repository import StoredCall

Unredacted = Annotated[bool, Query(description="personal data in clear (audited; "
                                               "only roles in privacy.unredacted_roles)")]
_NUMBER_KEYS = frozenset({"number", "callback_number", "caller_number"})


def mask_number(number: str | None) -> str | None:
    """A phone number as supervisors see it, in any spelling (``+86...`` too): the national
    form with only the first 3 and last 2 digits shown (:func:`ivr.phone.mask`)."""
    return phone.mask(number)


def call_out(call: StoredCall, clear: bool = True) -> CallOut:
    """A stored call in API form (numbers masked unless ``clear``; in clear, the national
    form people write: ``13800210000``, ``02112345600``, a foreign number in E.164)."""
    show = phone.national if clear else mask_number
    return CallOut(
        call_id=call.id, sip_call_id=call.sip_call_id,
        caller_number=show(call.caller_number) or "",
        dialed_number=call.dialed_number, region=call.region, region_source=call.region_source,
        region_reason=call.region_reason, province=call.province, city=call.city,
        language=call.language, intent=call.intent, intent_source=call.intent_source,
        menu_path=call.menu_path, state=call.state,
        route=Route(region=call.route_region, agent_id=call.agent_id),
        route_rule_id=call.route_rule_id, route_decision=call.route, overflow=call.overflow,
        verification=call.verification, callback_number=show(call.callback_number),
        started_at=call.started_at, answered_at=call.answered_at, queued_at=call.queued_at,
        connected_at=call.connected_at, ended_at=call.ended_at, hangup_cause=call.hangup_cause,
        hangup_by=call.hangup_by)


def masked_data(data: dict[str, Any]) -> dict[str, Any]:
    """Event data with phone numbers masked."""
    return {k: (mask_number(v) if k in _NUMBER_KEYS and isinstance(v, str) else v)
            for k, v in data.items()}


def calls_router(services: ApiServices) -> APIRouter:
    """``/calls`` endpoints and the development outbox."""
    router = api_router(prefix="/api/v1", tags=["calls"])
    privacy = services.privacy

    async def clear_view(principal: Principal, unredacted: bool, resource: str) -> bool:
        if not unredacted:
            return False
        if principal.role not in privacy.unredacted_roles:
            raise HTTPException(403, f"role {principal.role!r} may not read personal data "
                                "in clear (privacy.unredacted_roles)")
        if services.tokens is not None:
            await asyncio.to_thread(services.tokens.audit_read, principal, "read_unredacted",
                                    resource)
        return True

    async def visible_call(call_id: str, principal: Principal) -> StoredCall:
        call = await asyncio.to_thread(services.need_store().get_call, call_id)
        # Agents only see their own calls; to them another call does not exist.
        mine = principal.agent_id is not None and call is not None \
            and call.agent_id == principal.agent_id
        if call is None or (principal.role == "agent" and not mine):
            raise HTTPException(404, f"no call {call_id!r}")
        return call

    @router.get("/calls", response_model=CallPage)
    async def list_calls(
        principal: Annotated[Principal, Depends(allow("admin", "supervisor", "security"))],
        active: bool | None = None, region: str | None = None, intent: str | None = None,
        agent: str | None = None, since: datetime | None = None, until: datetime | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
        unredacted: Unredacted = False,
    ) -> CallPage:
        """Calls, newest first, with filters (``since``/``until`` on the start time)."""
        clear = await clear_view(principal, unredacted, "calls")
        calls = await asyncio.to_thread(
            services.need_store().list_calls, active=active, region=region, intent=intent,
            agent=agent, since=since, until=until, limit=limit, offset=offset)
        return CallPage(items=[call_out(c, clear) for c in calls], limit=limit, offset=offset)

    @router.get("/calls/{call_id}", response_model=CallDetailOut)
    async def get_call(
        call_id: str,
        principal: Annotated[Principal, Depends(allow("admin", "supervisor", "security",
                                                      "agent"))],
        unredacted: Unredacted = False,
    ) -> CallDetailOut:
        """One call by our id or by the SIP Call-ID of its inbound leg, with its events."""
        call = await visible_call(call_id, principal)
        clear = await clear_view(principal, unredacted, f"calls/{call.id}")
        events = await asyncio.to_thread(services.need_store().events, call.id)
        return CallDetailOut(**call_out(call, clear).model_dump(), events=[
            CallEventOut(at=e.at, kind=e.kind, data=e.data if clear else masked_data(e.data))
            for e in events])

    @router.get("/calls/{call_id}/transcript", response_model=list[TranscriptLine])
    async def get_transcript(
        call_id: str,
        principal: Annotated[Principal, Depends(allow("admin", "supervisor", "security",
                                                      "agent"))],
        unredacted: Unredacted = False,
    ) -> list[TranscriptLine]:
        """Every recognised utterance of the call (caller and agent), in time order."""
        call = await visible_call(call_id, principal)
        clear = await clear_view(principal, unredacted, f"calls/{call.id}/transcript")
        entries = await asyncio.to_thread(services.need_store().transcript, call.id)
        return [TranscriptLine(speaker=e.speaker, start_s=e.start_s, end_s=e.end_s,
                               text=e.text if clear else redact(e.text), language=e.language,
                               confidence=e.confidence, model=e.model, intent=e.intent,
                               intent_confidence=e.intent_confidence,
                               dropped_reason=e.dropped_reason) for e in entries]

    @router.post("/calls/{call_id}/monitor", response_model=MonitorOut, status_code=202)
    async def monitor(
        call_id: str, body: MonitorIn,
        principal: Annotated[Principal, Depends(allow("admin", "supervisor"))],
    ) -> MonitorOut:
        """Ring the supervisor's own SIP phone to listen, whisper (agent only) or barge."""
        if services.supervise is None:
            raise HTTPException(503, "call control is not available in this process")
        call = await visible_call(call_id, principal)
        try:
            started = await services.supervise(call.id, body.mode, body.phone)
        except MonitorRefused as exc:
            raise HTTPException(exc.status, str(exc)) from None
        return MonitorOut(**started)

    @router.get("/verification/outbox", response_model=list[OutboxOut])
    async def outbox(_: Annotated[Principal, Depends(allow("admin"))],
                     account_id: str | None = None,
                     limit: Annotated[int, Query(ge=1, le=200)] = 20) -> list[OutboxOut]:
        """Messages of the development code sender, newest first (absent with a real gateway)."""
        if services.outbox is None:
            raise HTTPException(404, "no development outbox in this deployment")
        messages = await asyncio.to_thread(services.outbox.messages, account_id, limit)
        return [OutboxOut(account_id=m.account_id, phone_number=m.phone_number, body=m.body,
                          created_at=m.created_at) for m in messages]

    return router
