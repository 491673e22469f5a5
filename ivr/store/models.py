"""Tables. Times are stored as UTC; JSON columns hold decisions and paths as they were made."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ivr.store.crypto import Sealed
from ivr.store.types import UtcDateTime


class Base(DeclarativeBase):
    """Declarative base of every table."""


class CallRow(Base):
    """One inbound call, from the first ring to the hang-up."""

    __tablename__ = "calls"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    sip_call_id: Mapped[str | None] = mapped_column(String(255), index=True)
    channel_id: Mapped[str] = mapped_column(String(64), index=True)
    caller_number: Mapped[str] = mapped_column(Sealed("calls.caller_number"))  # E.164
    dialed_number: Mapped[str] = mapped_column(String(32))
    region: Mapped[str | None] = mapped_column(String(32))
    region_source: Mapped[str | None] = mapped_column(String(16))
    region_reason: Mapped[str | None] = mapped_column(String(200))
    province: Mapped[str | None] = mapped_column(String(64))
    city: Mapped[str | None] = mapped_column(String(64))
    language: Mapped[str] = mapped_column(String(8), default="zh")
    intent: Mapped[str | None] = mapped_column(String(32))
    intent_source: Mapped[str | None] = mapped_column(String(16))
    menu_path: Mapped[list[Any]] = mapped_column(JSON, default=list)
    state: Mapped[str] = mapped_column(String(24), index=True)
    route: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    route_rule_id: Mapped[str | None] = mapped_column(String(64))
    route_region: Mapped[str | None] = mapped_column(String(32))
    overflow: Mapped[bool] = mapped_column(Boolean, default=False)
    agent_id: Mapped[str | None] = mapped_column(String(64), index=True)
    agent_channel_id: Mapped[str | None] = mapped_column(String(64))
    holding_bridge_id: Mapped[str | None] = mapped_column(String(64))
    mixing_bridge_id: Mapped[str | None] = mapped_column(String(64))
    verification: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    callback_number: Mapped[str | None] = mapped_column(Sealed("calls.callback_number"))
    started_at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    answered_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    queued_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    connected_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    hangup_cause: Mapped[str | None] = mapped_column(String(64))
    hangup_by: Mapped[str | None] = mapped_column(String(16))
    # The controller node that owns the call (its channels live on that node's Asterisk).
    node_id: Mapped[str | None] = mapped_column(String(64), index=True)


class CallEventRow(Base):
    """Something that happened on a call, in order."""

    __tablename__ = "call_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    call_id: Mapped[str] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime())
    kind: Mapped[str] = mapped_column(String(40))
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class AgentRow(Base):
    """An agent phone (PJSIP endpoint) with its region and skills."""

    __tablename__ = "agents"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    region: Mapped[str] = mapped_column(String(32), index=True)
    skills: Mapped[list[str]] = mapped_column(JSON, default=list)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())
    # Shared by every node (ivr.routing.ledger): the call that rings or talks to the agent and
    # the node that gave it; wrap-up and idle time, so every node orders agents alike.
    claimed_call_id: Mapped[str | None] = mapped_column(String(32))
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claimed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    wrap_up_until: Mapped[datetime | None] = mapped_column(UtcDateTime())
    idle_since: Mapped[datetime | None] = mapped_column(UtcDateTime())


class RoutingRuleRow(Base):
    """One routing rule as managed data (its body is the rule's dict form)."""

    __tablename__ = "routing_rules"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, index=True)
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    version: Mapped[int] = mapped_column(Integer, default=1)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_by: Mapped[str] = mapped_column(String(64))


class CallbackRequestRow(Base):
    """A caller asked to be called back on a number they typed."""

    __tablename__ = "callback_requests"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    call_id: Mapped[str] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"), index=True)
    number: Mapped[str] = mapped_column(Sealed("callback_requests.number"))
    region: Mapped[str | None] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    status: Mapped[str] = mapped_column(String(16), default="open")
    notes: Mapped[str | None] = mapped_column(Text)


class TranscriptRow(Base):
    """One recognised utterance of a call (caller or agent)."""

    __tablename__ = "transcripts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    call_id: Mapped[str] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"), index=True)
    speaker: Mapped[str] = mapped_column(String(16))
    start_s: Mapped[float] = mapped_column(Float)
    end_s: Mapped[float] = mapped_column(Float)
    text: Mapped[str] = mapped_column(Sealed("transcripts.text"))
    language: Mapped[str] = mapped_column(String(8))
    confidence: Mapped[float] = mapped_column(Float)
    model: Mapped[str] = mapped_column(String(128))
    intent: Mapped[str | None] = mapped_column(String(32))
    intent_confidence: Mapped[float | None] = mapped_column(Float)
    dropped_reason: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class AccountRow(Base):
    """A customer account that callers can prove they own."""

    __tablename__ = "accounts"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    phone_number: Mapped[str] = mapped_column(Sealed("accounts.phone_number"))  # E.164
    # Blind index of the number (ivr.store.crypto): find an account by number, sealed or not.
    phone_index: Mapped[str | None] = mapped_column(String(64), index=True)
    voice_status: Mapped[str] = mapped_column(String(16), default="none")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class OneTimeCodeRow(Base):
    """A tier-1 code: only its salted hash is kept."""

    __tablename__ = "one_time_codes"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"),
                                            index=True)
    call_id: Mapped[str | None] = mapped_column(String(32), index=True)
    code_hash: Mapped[str] = mapped_column(String(64))
    salt: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime())
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16), default="open")


class OutboxRow(Base):
    """Messages of the development code sender (a real deployment plugs in an SMS gateway)."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(String(64), index=True)
    phone_number: Mapped[str] = mapped_column(Sealed("outbox.phone_number"))
    body: Mapped[str] = mapped_column(Sealed("outbox.body"))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class ApiTokenRow(Base):
    """A bearer token of the REST API: only the SHA-256 of the secret is kept."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # Agent tokens: the agent record (``agents.id``) the token acts for; None for other roles.
    # At most one unrevoked token per agent (an expired one is marked revoked when replaced).
    agent_id: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (Index("ux_api_tokens_live_agent", "agent_id", unique=True,
                            sqlite_where=text("revoked_at IS NULL AND agent_id IS NOT NULL"),
                            postgresql_where=text("revoked_at IS NULL AND agent_id IS NOT NULL")),)


class RateLimitRow(Base):
    """One fixed window of a throttle: how often ``key`` was counted since ``window_start``
    (a unix second). In the database so that every process of the service sees one count."""

    __tablename__ = "rate_limits"

    key: Mapped[str] = mapped_column(String(96), primary_key=True)
    window_start: Mapped[int] = mapped_column(Integer, primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)


class RuleChangeRow(Base):
    """One change of the routing rules: who, when, what before and after, and the diff."""

    __tablename__ = "routing_rule_changes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    rule_id: Mapped[str] = mapped_column(String(64), index=True)
    action: Mapped[str] = mapped_column(String(16))  # create | update | delete | import
    version: Mapped[int] = mapped_column(Integer)
    by: Mapped[str] = mapped_column(String(128))
    at: Mapped[datetime] = mapped_column(UtcDateTime())
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    diff: Mapped[list[Any]] = mapped_column(JSON)


class DataAccessRow(Base):
    """An audited read of personal data in clear (an unredacted transcript, a caller number)."""

    __tablename__ = "data_access_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime())
    token_id: Mapped[str] = mapped_column(String(32))
    role: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(64))
    resource: Mapped[str] = mapped_column(String(256))


class DataKeyRow(Base):
    """A data key of the field encryption, wrapped by the master key (``master_id``)."""

    __tablename__ = "data_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    purpose: Mapped[str] = mapped_column(String(16))  # fields | index
    nonce: Mapped[bytes] = mapped_column(LargeBinary)
    wrapped: Mapped[bytes] = mapped_column(LargeBinary)
    master_id: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class PurgeRow(Base):
    """One run of the retention job: what kind of data, how much, older than when."""

    __tablename__ = "retention_purges"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime())
    kind: Mapped[str] = mapped_column(String(16))  # calls | transcripts | recordings
    before: Mapped[datetime] = mapped_column(UtcDateTime())
    count: Mapped[int] = mapped_column(Integer)


class NodeRow(Base):
    """One controller node and its lease (heartbeat) on the shared database."""

    __tablename__ = "nodes"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    api_url: Mapped[str | None] = mapped_column(String(255))
    started_at: Mapped[datetime] = mapped_column(UtcDateTime())
    heartbeat_at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    lease_s: Mapped[float] = mapped_column(Float)
    stopped_at: Mapped[datetime | None] = mapped_column(UtcDateTime())  # a clean stop
    lost_at: Mapped[datetime | None] = mapped_column(UtcDateTime())  # declared lost by...
    lost_by: Mapped[str | None] = mapped_column(String(64))  # ...this node
