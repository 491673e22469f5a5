"""``/voiceprint``: the decision log for the security team, enrollment upload, lockouts.

Only the ``security`` role gets here; supervisors and everyone else get 403. Records are
returned as stored: caller numbers are masked in the log itself, scores and thresholds in clear.
The log, its chain check, CSV export, account state, revocation, deletion and re-enabling work
whether or not the speaker model and master key are loaded; enrollment alone needs them and
answers 503 naming what is missing.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from ivr.api.auth import Security
from ivr.api.errors import field_error
from ivr.api.guard import api_router
from ivr.api.services import ApiServices
from voiceprint.audit import DecisionRecord
from voiceprint.audit_store import records_to_csv
from voiceprint.errors import (
    AudioRejected,
    ConsentMissing,
    VoiceprintError,
    VoiceprintUnavailable,
)
from voiceprint.wav import decode_wav

MAX_SAMPLE_BYTES = 8 * 1024 * 1024


class AttemptOut(BaseModel):
    """One record of the decision log."""

    seq: int
    at: datetime
    kind: str
    call_id: str | None
    account_id: str | None
    masked_caller: str | None
    tier_results: dict[str, Any]
    challenge_expected: str | None
    challenge_heard: str | None
    model_id: str | None
    model_version: str | None
    threshold: dict[str, Any]
    raw_score: float | None
    norm_score: float | None
    decision: str | None
    replay: bool
    audio_sha256: str | None
    note: str | None
    reviewer: str | None
    refers_to_seq: int | None
    prev_hash: str
    hash: str


class AttemptPage(BaseModel):
    """A page of the log, oldest first."""

    items: list[AttemptOut]
    limit: int
    offset: int


class ChainCheckOut(BaseModel):
    """Whether the hash chain is intact, and where it first breaks."""

    ok: bool
    checked: int
    first_broken_seq: int | None
    reason: str | None


class NoteIn(BaseModel):
    """A reviewer's note on a record (a new record; nothing is edited)."""

    model_config = ConfigDict(extra="forbid")

    note: str = Field(min_length=1, max_length=4000)


class EnrollIn(BaseModel):
    """Enrollment from uploaded audio: base64 WAVs (16-bit mono, 8/16 kHz) and consent."""

    model_config = ConfigDict(extra="forbid")

    consent: bool
    samples: list[str] = Field(min_length=1, max_length=10)


class VoiceStatusOut(BaseModel):
    """An account's enrollment and lockout state."""

    account_id: str
    enrolled: bool
    enrolled_at: datetime | None
    model_id: str | None
    model_version: str | None
    reenroll_reason: str | None = Field(
        description="why the template cannot be used with the model and key in use (the "
                    "caller must enroll again; tier 3 meanwhile); null when it can, or when "
                    "no model is loaded to tell")
    lockout: str
    consecutive_failures: int
    next_allowed_at: datetime | None
    retained_recordings: int


def _out(record: DecisionRecord) -> AttemptOut:
    return AttemptOut(**{**record.as_dict(), "at": record.at})


def voiceprint_router(services: ApiServices) -> APIRouter:
    """The security team's endpoints."""
    router = api_router(prefix="/api/v1/voiceprint", tags=["voiceprint"])

    @router.get("/attempts", response_model=AttemptPage,
                responses={200: {"content": {"text/csv": {}}}})
    async def attempts(
        _: Security, account_id: str | None = None, call_id: str | None = None,
        decision: str | None = None, replay: bool | None = None,
        kind: Literal["decision", "enrollment", "lockout", "note", "deletion",
                      "challenge"] | None = None,
        since: datetime | None = None, until: datetime | None = None,
        limit: Annotated[int, Query(ge=1, le=5000)] = 200,
        offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
        format: Literal["json", "csv"] = "json",
    ) -> Any:
        """Decision-log records with filters, oldest first; ``format=csv`` for a spreadsheet."""
        for name, value in (("since", since), ("until", until)):
            if value is not None and value.tzinfo is None:
                raise field_error(("query", name), "give a time zone (e.g. +08:00 or Z)")
        records = await asyncio.to_thread(
            services.need_voiceprint().audit.records, account_id=account_id, call_id=call_id,
            decision=decision, kind=kind, replay=replay, since=since, until=until,
            limit=limit, offset=offset)
        if format == "csv":
            return PlainTextResponse(records_to_csv(records), media_type="text/csv",
                                     headers={"Content-Disposition":
                                              "attachment; filename=voiceprint-attempts.csv"})
        return AttemptPage(items=[_out(r) for r in records], limit=limit, offset=offset)

    @router.get("/audit/verify", response_model=ChainCheckOut)
    async def verify_chain(_: Security) -> ChainCheckOut:
        """Check every record's hash and link; names the first broken record."""
        result = await asyncio.to_thread(services.need_voiceprint().audit.verify)
        return ChainCheckOut(ok=result.ok, checked=result.checked,
                             first_broken_seq=result.first_broken_seq, reason=result.reason)

    @router.post("/attempts/{seq}/notes", response_model=AttemptOut, status_code=201)
    async def add_note(seq: Annotated[int, Path(ge=1, le=2**62)], body: NoteIn,
                       principal: Security) -> AttemptOut:
        """Append a reviewer's note about record ``seq``."""
        service = services.need_voiceprint()
        try:
            record = await asyncio.to_thread(service.audit.add_note, seq, principal.label,
                                             body.note)
        except VoiceprintError as exc:
            raise HTTPException(404, str(exc)) from None
        return _out(record)

    @router.get("/accounts/{account_id}", response_model=VoiceStatusOut)
    async def account_status(account_id: str, _: Security) -> VoiceStatusOut:
        """Enrollment and lockout state of one account."""
        await _account(services, account_id)
        status = await asyncio.to_thread(services.need_voiceprint().status, account_id)
        return VoiceStatusOut(**vars(status))

    @router.post("/accounts/{account_id}/enrollment", response_model=AttemptOut,
                 status_code=201)
    async def enroll(account_id: str, body: EnrollIn, principal: Security) -> AttemptOut:
        """Enroll (or re-enroll) from uploaded samples; needs consent and enough speech."""
        service = services.need_voiceprint()
        await _account(services, account_id)
        # Decoding megabytes of base64 and WAV is CPU work: off the loop that carries calls.
        samples = await asyncio.to_thread(_decode_samples, body.samples)
        try:
            record = await asyncio.to_thread(service.enroll, account_id, samples,
                                             consent=body.consent, by=principal.label)
        except VoiceprintUnavailable as exc:
            raise HTTPException(503, f"enrollment needs the speaker model and master key: "
                                f"{exc}") from None
        except ConsentMissing as exc:
            raise field_error(("body", "consent"), str(exc)) from None
        except AudioRejected as exc:
            raise field_error(("body", "samples"), f"{exc.reason}: {exc.detail}") from None
        return _out(record)

    @router.post("/accounts/{account_id}/revoke", response_model=AttemptOut)
    async def revoke(account_id: str, principal: Security) -> AttemptOut:
        """Stop using the account's template; the caller must enroll again."""
        await _account(services, account_id)
        return _out(await asyncio.to_thread(services.need_voiceprint().revoke, account_id,
                                            principal.label))

    @router.delete("/accounts/{account_id}", response_model=AttemptOut)
    async def delete(account_id: str, principal: Security) -> AttemptOut:
        """Delete the template and every retained sample of the account."""
        await _account(services, account_id)
        return _out(await asyncio.to_thread(services.need_voiceprint().delete, account_id,
                                            principal.label))

    @router.post("/accounts/{account_id}/reenable", response_model=VoiceStatusOut)
    async def reenable(account_id: str, principal: Security) -> VoiceStatusOut:
        """Lift a lockout (a person's decision, audited)."""
        service = services.need_voiceprint()
        await _account(services, account_id)
        await asyncio.to_thread(service.reenable, account_id, principal.label)
        return VoiceStatusOut(**vars(await asyncio.to_thread(service.status, account_id)))

    return router


def _decode_samples(texts: list[str]) -> list[Any]:
    """Base64 WAV uploads to audio; each bad one is a 422 naming its index."""
    samples = []
    for index, text in enumerate(texts):
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise field_error(("body", "samples", index), "not base64") from None
        if len(data) > MAX_SAMPLE_BYTES:
            raise field_error(("body", "samples", index), "larger than 8 MiB")
        try:
            samples.append(decode_wav(data))
        except AudioRejected as exc:
            raise field_error(("body", "samples", index), f"{exc.reason}: {exc.detail}"
                              ) from None
    return samples


async def _account(services: ApiServices, account_id: str) -> None:
    if services.accounts is None:
        return
    if await asyncio.to_thread(services.accounts.get, account_id) is None:
        raise HTTPException(404, f"no account {account_id!r}")
