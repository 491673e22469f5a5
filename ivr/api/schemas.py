"""Request and response bodies of the REST API."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ivr.routing.rule_schema import INTENTS


class Route(BaseModel):
    """Where the call went."""

    region: str | None
    agent_id: str | None


class CallOut(BaseModel):
    """A call record."""

    call_id: str
    sip_call_id: str | None
    caller_number: str
    dialed_number: str
    region: str | None
    region_source: str | None
    region_reason: str | None
    province: str | None
    city: str | None
    language: str
    intent: str | None
    intent_source: str | None
    menu_path: list[Any]
    state: str
    route: Route
    route_rule_id: str | None
    route_decision: dict[str, Any] | None
    overflow: bool
    verification: dict[str, Any] | None
    callback_number: str | None
    started_at: datetime
    answered_at: datetime | None
    queued_at: datetime | None
    connected_at: datetime | None
    ended_at: datetime | None
    hangup_cause: str | None
    hangup_by: str | None


class CallEventOut(BaseModel):
    """One event of a call."""

    at: datetime
    kind: str
    data: dict[str, Any]


class CallDetailOut(CallOut):
    """A call with its events."""

    events: list[CallEventOut]


class CallPage(BaseModel):
    """A page of calls, newest first."""

    items: list[CallOut]
    limit: int
    offset: int


class SimulateIn(BaseModel):
    """A dry run: who calls, about what, when."""

    model_config = ConfigDict(extra="forbid")

    caller_number: str = Field(max_length=64)
    intent: str = Field(json_schema_extra={"enum": list(INTENTS)})
    at: datetime | None = None


class SimulateOut(BaseModel):
    """The decision and the rule that made it."""

    decision: dict[str, Any]
    rule: dict[str, Any] | None
    region: dict[str, Any]


class TranscriptLine(BaseModel):
    """One utterance of a call."""

    speaker: str
    start_s: float
    end_s: float
    text: str
    language: str
    confidence: float
    model: str
    intent: str | None
    intent_confidence: float | None
    dropped_reason: str | None


class OutboxOut(BaseModel):
    """A message the development code sender would have sent."""

    account_id: str
    phone_number: str
    body: str
    created_at: datetime


class ReadyOut(BaseModel):
    """Readiness: what is missing (503) and what runs degraded (still 200)."""

    ready: bool
    missing: list[str]
    checks: dict[str, bool]
    degraded: dict[str, str]
    reasons: dict[str, str] = {}  # why each missing check is missing, where known


class MonitorIn(BaseModel):
    """Listen to, whisper to the agent of, or barge into a live call from a SIP phone."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["listen", "whisper", "barge"]
    phone: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")


class MonitorOut(BaseModel):
    """A monitor that is ringing the supervisor's phone."""

    monitor_id: str
    call_id: str
    mode: str
    phone: str
    target: str
    state: str


class ErrorOut(BaseModel):
    """Every error: status, a unique id to quote to support, a message, and details."""

    status: int
    error_id: str
    message: str
    details: Any
