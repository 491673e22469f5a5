"""The store's operations. Synchronous (SQLAlchemy sessions); async callers use ``to_thread``.

Every write commits before it returns, so a caller that awaited it knows the data is on disk.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, delete, or_, select
from sqlalchemy.orm import Session, sessionmaker

from ivr.store.models import (
    AgentRow,
    CallbackRequestRow,
    CallEventRow,
    CallRow,
    PurgeRow,
    RoutingRuleRow,
    TranscriptRow,
)
from ivr.store.types import as_utc

# States of the identity check (tiers 1 and 2) before routing.
VERIFY_STATES = ("verifying", "voice_check", "voice_enrollment")
ACTIVE_STATES = ("ringing", "greeting", "menu", *VERIFY_STATES, "callback", "queued",
                 "ringing_agent", "connected")


def utcnow() -> datetime:
    """Aware current time in UTC."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class StoredCall:
    """A call record as stored."""

    id: str
    sip_call_id: str | None
    channel_id: str
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
    route: dict[str, Any] | None
    route_rule_id: str | None
    route_region: str | None
    overflow: bool
    agent_id: str | None
    agent_channel_id: str | None
    holding_bridge_id: str | None
    mixing_bridge_id: str | None
    verification: dict[str, Any] | None
    callback_number: str | None
    started_at: datetime
    answered_at: datetime | None
    queued_at: datetime | None
    connected_at: datetime | None
    ended_at: datetime | None
    hangup_cause: str | None
    hangup_by: str | None
    node_id: str | None = None  # the controller node that owns the call

    @classmethod
    def fresh(cls, call_id: str, *, started_at: datetime, state: str = "ringing",
              **values: Any) -> StoredCall:
        """A new call as ``Store.create_call`` stores it, made without the database."""
        blank: dict[str, Any] = {f.name: None for f in fields(cls)}
        blank.update(id=call_id, started_at=started_at, state=state, menu_path=[],
                     overflow=False, language="zh", **values)
        return cls(**blank)

    @classmethod
    def from_row(cls, row: CallRow) -> StoredCall:
        """Copy a row (times aware UTC, also for values set in this session)."""
        values = {f.name: getattr(row, f.name) for f in fields(cls)}
        for key, value in values.items():
            if isinstance(value, datetime):
                values[key] = as_utc(value)
        values["menu_path"] = list(values["menu_path"] or [])
        return cls(**values)


@dataclass(frozen=True)
class CallEvent:
    """One stored event of a call."""

    id: int
    call_id: str
    at: datetime
    kind: str
    data: dict[str, Any]


@dataclass(frozen=True)
class CallbackRequest:
    """A stored callback request."""

    id: int
    call_id: str
    number: str
    region: str | None
    reason: str
    created_at: datetime
    status: str


@dataclass(frozen=True)
class TranscriptEntry:
    """One stored utterance of a call."""

    id: int
    call_id: str
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
    created_at: datetime


_CALL_COLUMNS = frozenset(f.name for f in fields(StoredCall)) - {"id"}


class Store:
    """Calls, events, agents, rules and callbacks on one engine."""

    def __init__(self, engine: Engine, node_id: str | None = None) -> None:
        self.engine = engine
        # Calls this store creates belong to this node (None: a tool, not a controller).
        self.node_id = node_id
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    def _session(self) -> Session:
        return self._sessions()

    # -- calls -------------------------------------------------------------------------------

    def create_call(self, *, channel_id: str, caller_number: str, dialed_number: str,
                    sip_call_id: str | None, state: str = "ringing",
                    started_at: datetime | None = None, call_id: str | None = None,
                    **extra: Any) -> StoredCall:
        """Insert a new call and its first event (``call_id``: chosen by the caller)."""
        unknown = set(extra) - _CALL_COLUMNS
        if unknown:
            raise ValueError(f"unknown call fields: {sorted(unknown)}")
        now = started_at or utcnow()
        extra.setdefault("node_id", self.node_id)
        row = CallRow(id=call_id or uuid.uuid4().hex, channel_id=channel_id,
                      caller_number=caller_number, dialed_number=dialed_number,
                      sip_call_id=sip_call_id, state=state, started_at=now, menu_path=[],
                      overflow=False, language="zh", **extra)
        with self._session() as session, session.begin():
            session.add(row)
            session.flush()
            session.add(CallEventRow(call_id=row.id, at=now, kind="call_started",
                                     data={"state": state}))
        return StoredCall.from_row(row)

    def update_call(self, call_id: str, **values: Any) -> StoredCall:
        """Change fields of a call; raises KeyError for an unknown call."""
        return self._change(call_id, None, None, values)

    def record(self, call_id: str, kind: str, data: dict[str, Any] | None = None,
               at: datetime | None = None, **values: Any) -> StoredCall:
        """Append an event (that happened ``at``, default now) and change call fields, in
        one transaction."""
        return self._change(call_id, kind, data, values, at)

    def _change(self, call_id: str, kind: str | None, data: dict[str, Any] | None,
                values: dict[str, Any], at: datetime | None = None) -> StoredCall:
        unknown = set(values) - _CALL_COLUMNS
        if unknown:
            raise ValueError(f"unknown call fields: {sorted(unknown)}")
        with self._session() as session, session.begin():
            row = session.get(CallRow, call_id)
            if row is None:
                raise KeyError(call_id)
            for key, value in values.items():
                setattr(row, key, value)
            if kind is not None:
                session.add(CallEventRow(call_id=call_id, at=at or utcnow(), kind=kind,
                                         data=data or {}))
        return StoredCall.from_row(row)

    def probe_write(self) -> None:
        """Take the database's write lock and give it back at once (readiness probe): raises
        when writes would block or fail."""
        if self.engine.dialect.name == "postgresql":
            # A real write, rolled back: fails on a read-only server (a standby after a
            # failover), a full disk or a lock held too long, not only on a dead connection.
            with self.engine.connect() as connection, connection.begin() as transaction:
                connection.exec_driver_sql("SET LOCAL lock_timeout = '200ms'")
                connection.exec_driver_sql("SET LOCAL statement_timeout = '1s'")
                connection.exec_driver_sql(
                    "UPDATE alembic_version SET version_num = version_num")
                transaction.rollback()
            return
        if self.engine.dialect.name != "sqlite":
            with self.engine.connect() as connection:
                connection.exec_driver_sql("SELECT 1")
            return
        # A connection of its own with a short timeout: the pool's connections keep theirs,
        # and (measured) a busy wait after "PRAGMA busy_timeout" on a pooled connection held
        # the GIL, stalling the event loop for the whole wait.
        probe = sqlite3.connect(str(self.engine.url.database), timeout=0.2,
                                isolation_level=None)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
        finally:
            probe.close()

    def get_call(self, call_id: str) -> StoredCall | None:
        """A call by our id or by the SIP Call-ID of its inbound leg."""
        with self._session() as session:
            row = session.get(CallRow, call_id)
            if row is None:
                row = session.scalars(
                    select(CallRow).where(CallRow.sip_call_id == call_id)
                    .order_by(CallRow.started_at.desc())).first()
            return StoredCall.from_row(row) if row else None

    def find_by_channel(self, channel_id: str) -> StoredCall | None:
        """The call whose caller or agent leg is ``channel_id``."""
        with self._session() as session:
            row = session.scalars(select(CallRow).where(or_(
                CallRow.channel_id == channel_id, CallRow.agent_channel_id == channel_id))
            ).first()
            return StoredCall.from_row(row) if row else None

    def list_calls(self, *, active: bool | None = None, region: str | None = None,
                   intent: str | None = None, agent: str | None = None,
                   since: datetime | None = None, until: datetime | None = None,
                   limit: int = 50, offset: int = 0) -> list[StoredCall]:
        """Newest first, filtered (``since``/``until`` bound the start time)."""
        query = select(CallRow).order_by(CallRow.started_at.desc(), CallRow.id)
        if active is True:
            query = query.where(CallRow.state.in_(ACTIVE_STATES))
        elif active is False:
            query = query.where(CallRow.state.not_in(ACTIVE_STATES))
        if region is not None:
            query = query.where(CallRow.region == region)
        if intent is not None:
            query = query.where(CallRow.intent == intent)
        if agent is not None:
            query = query.where(CallRow.agent_id == agent)
        if since is not None:
            query = query.where(CallRow.started_at >= since)
        if until is not None:
            query = query.where(CallRow.started_at < until)
        with self._session() as session:
            rows = session.scalars(query.limit(limit).offset(offset)).all()
            return [StoredCall.from_row(r) for r in rows]

    def active_calls(self, owned_by: str | None = None) -> list[StoredCall]:
        """Every call not yet ended, or (``owned_by``) those of one node: what its
        reconciliation after a restart may touch."""
        if owned_by is None:
            return self.list_calls(active=True, limit=100_000)
        query = (select(CallRow).where(CallRow.state.in_(ACTIVE_STATES),
                                       CallRow.node_id == owned_by)
                 .order_by(CallRow.started_at.desc(), CallRow.id))
        with self._session() as session:
            return [StoredCall.from_row(r) for r in session.scalars(query).all()]

    def events(self, call_id: str) -> list[CallEvent]:
        """The call's events in order."""
        with self._session() as session:
            rows = session.scalars(select(CallEventRow).where(CallEventRow.call_id == call_id)
                                   .order_by(CallEventRow.id)).all()
            return [CallEvent(r.id, r.call_id, r.at, r.kind, dict(r.data or {}))
                    for r in rows]

    # -- transcripts -------------------------------------------------------------------------

    def add_transcript(self, call_id: str, *, speaker: str, start_s: float, end_s: float,
                       text: str, language: str, confidence: float, model: str,
                       intent: str | None = None, intent_confidence: float | None = None,
                       dropped_reason: str | None = None,
                       at: datetime | None = None) -> TranscriptEntry:
        """Store one final utterance."""
        now = at or utcnow()
        with self._session() as session, session.begin():
            row = TranscriptRow(call_id=call_id, speaker=speaker, start_s=start_s, end_s=end_s,
                                text=text, language=language, confidence=confidence,
                                model=model, intent=intent, intent_confidence=intent_confidence,
                                dropped_reason=dropped_reason, created_at=now)
            session.add(row)
            session.flush()
            return _entry(row)

    def transcript(self, call_id: str) -> list[TranscriptEntry]:
        """A call's utterances in time order."""
        with self._session() as session:
            rows = session.scalars(select(TranscriptRow).where(TranscriptRow.call_id == call_id)
                                   .order_by(TranscriptRow.start_s, TranscriptRow.id)).all()
            return [_entry(r) for r in rows]

    # -- callbacks ---------------------------------------------------------------------------

    def add_callback(self, call_id: str, number: str, region: str | None,
                     reason: str, at: datetime | None = None) -> CallbackRequest:
        """Store a callback request (and the number on the call record)."""
        now = at or utcnow()
        with self._session() as session, session.begin():
            row = CallbackRequestRow(call_id=call_id, number=number, region=region,
                                     reason=reason, created_at=now, status="open")
            session.add(row)
            call = session.get(CallRow, call_id)
            if call is not None:
                call.callback_number = number
            session.add(CallEventRow(call_id=call_id, at=now, kind="callback_requested",
                                     data={"region": region, "reason": reason}))
            session.flush()
            return CallbackRequest(row.id, call_id, number, region, reason, now, "open")

    def callbacks(self, call_id: str | None = None) -> list[CallbackRequest]:
        """Callback requests, oldest first."""
        query = select(CallbackRequestRow).order_by(CallbackRequestRow.id)
        if call_id is not None:
            query = query.where(CallbackRequestRow.call_id == call_id)
        with self._session() as session:
            return [CallbackRequest(r.id, r.call_id, r.number, r.region, r.reason,
                                    r.created_at, r.status)
                    for r in session.scalars(query).all()]

    # -- agents and rules --------------------------------------------------------------------

    def purge(self, kind: str, before: datetime, at: datetime | None = None) -> int:
        """Delete ``calls`` that ended before ``before`` (with their events, transcripts and
        callback requests) or ``transcripts`` made before it; the run is recorded in
        ``retention_purges``. How many went."""
        with self._session() as session, session.begin():
            if kind == "calls":
                gone = select(CallRow.id).where(CallRow.ended_at.is_not(None),
                                                CallRow.ended_at < before)
                for child in (CallEventRow, TranscriptRow, CallbackRequestRow):
                    session.execute(delete(child).where(child.call_id.in_(gone)))
                count = session.execute(delete(CallRow).where(
                    CallRow.id.in_(gone))).rowcount  # type: ignore[attr-defined]
            elif kind == "transcripts":
                count = session.execute(delete(TranscriptRow).where(
                    TranscriptRow.created_at < before)).rowcount  # type: ignore[attr-defined]
            else:
                raise ValueError(f"unknown kind of data {kind!r}")
        self.record_purge(kind, before, int(count or 0), at)
        return int(count or 0)

    def record_purge(self, kind: str, before: datetime, count: int,
                     at: datetime | None = None) -> None:
        """Record one purge run (also of data kept elsewhere: retained voice recordings)."""
        with self._session() as session, session.begin():
            session.add(PurgeRow(at=at or utcnow(), kind=kind, before=before, count=count))

    def purges(self, limit: int = 50) -> list[PurgeRow]:
        """Recorded purges, newest first."""
        with self._session() as session:
            return list(session.scalars(select(PurgeRow).order_by(PurgeRow.id.desc())
                                        .limit(limit)).all())

    def upsert_agents(self, agents: Sequence[tuple[str, str, Sequence[str]]]) -> None:
        """Insert or update agents as (id, region, skills)."""
        now = utcnow()
        with self._session() as session, session.begin():
            for agent_id, region, skills in agents:
                row = session.get(AgentRow, agent_id)
                if row is None:
                    session.add(AgentRow(id=agent_id, region=region, skills=list(skills),
                                         enabled=True, updated_at=now))
                else:
                    row.region, row.skills, row.updated_at = region, list(skills), now

    def rule_stamp(self) -> tuple[tuple[str, int], ...]:
        """Ids and versions of the stored rules: changes when any rule does."""
        with self._session() as session:
            rows = session.execute(select(RoutingRuleRow.id, RoutingRuleRow.version)
                                   .order_by(RoutingRuleRow.id)).all()
            return tuple((str(r[0]), int(r[1])) for r in rows)

    def rule_bodies(self) -> list[dict[str, Any]]:
        """Stored routing rules (dict form) by position."""
        with self._session() as session:
            rows = session.scalars(select(RoutingRuleRow).order_by(RoutingRuleRow.position,
                                                                   RoutingRuleRow.id)).all()
            return [dict(r.body) for r in rows]

    def seed_rules(self, bodies: Sequence[dict[str, Any]], by: str = "system") -> bool:
        """Load rules only when the table is empty (first start); True when it loaded them."""
        now = utcnow()
        with self._session() as session, session.begin():
            if session.scalars(select(RoutingRuleRow.id).limit(1)).first() is not None:
                return False
            for body in bodies:
                session.add(RoutingRuleRow(id=str(body["id"]), position=int(body["position"]),
                                           body=dict(body), version=1, updated_at=now,
                                           updated_by=by))
            return True


def _entry(row: TranscriptRow) -> TranscriptEntry:
    return TranscriptEntry(row.id, row.call_id, row.speaker, row.start_s, row.end_s, row.text,
                           row.language, row.confidence, row.model, row.intent,
                           row.intent_confidence, row.dropped_reason,
                           row.created_at)
