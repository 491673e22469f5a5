"""Bearer tokens of the REST API, each carrying one role.

A token is ``ivr_<id>_<secret>``; only the SHA-256 of the whole token is stored (the secret is
32 random bytes, so a fast hash is enough: there is nothing to brute-force). Tokens expire and
can be revoked; every check reads the store, so a revocation applies to the next request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import unicodedata
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, get_args

from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from ivr.store.models import AgentRow, ApiTokenRow, DataAccessRow

Role = Literal["admin", "supervisor", "security", "agent"]
ROLES: tuple[Role, ...] = get_args(Role)
MAX_NAME_CHARS = 128
# Unicode categories a token name may not hold: controls (NUL...), format characters
# (right-to-left override, zero-width joiners), surrogates, private use, unassigned, line and
# paragraph separators. Names appear in listings, history and audit records: what an operator
# reads there must be what is stored.
_HIDDEN = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


class TokenRefused(ValueError):
    """A token that cannot be issued as asked (the message says why)."""


class AgentTokenExists(TokenRefused):
    """The agent already has a live token: revoke it first."""


def check_name(name: str) -> str:
    """``name`` if it is printable text of at most 128 characters, else :class:`TokenRefused`."""
    if len(name) > MAX_NAME_CHARS:
        raise TokenRefused(f"a token name has at most {MAX_NAME_CHARS} characters")
    for index, char in enumerate(name):
        category = unicodedata.category(char)
        if category in _HIDDEN or (category == "Zs" and char != " "):
            raise TokenRefused(f"the name holds a character that does not print "
                               f"(U+{ord(char):04X} at {index}); use printable text")
    if name != name.strip():
        raise TokenRefused("the name starts or ends with a space")
    return name


@dataclass(frozen=True)
class Principal:
    """Who is calling the API: the token's id and role (never the secret)."""

    token_id: str
    role: Role
    name: str
    agent_id: str | None = None  # agent tokens: the agent record they act for

    @property
    def label(self) -> str:
        """How changes made with this token are attributed (history, audit)."""
        return f"{self.name} ({self.role}, token {self.token_id[:8]})"


@dataclass(frozen=True)
class TokenInfo:
    """A token as listed (no secret, no hash)."""

    id: str
    role: Role
    name: str
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    agent_id: str | None = None


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenStore:
    """Create, check, list and revoke tokens on the service's database."""

    def __init__(self, engine: Engine, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
                 ) -> None:
        self.engine = engine
        self.clock = clock
        self._session = sessionmaker(engine, expire_on_commit=False)
        self._revoked: list[Callable[[str], None]] = []

    def create(self, role: str, name: str = "", ttl: timedelta = timedelta(days=30),
               agent_id: str | None = None) -> tuple[str, TokenInfo]:
        """A new token (returned once, in clear) and its listing.

        An agent token acts for one agent record (``agent_id``, which must exist); an agent has
        at most one live token at a time (:class:`AgentTokenExists`: revoke the old one first).
        Other roles take no ``agent_id``. Names are printable text (:func:`check_name`).
        """
        if role not in ROLES:
            raise TokenRefused(f"unknown role {role!r}; one of {', '.join(ROLES)}")
        if ttl <= timedelta(0):
            raise TokenRefused("a token must live for some time")
        check_name(name)
        if role == "agent" and not agent_id:
            raise TokenRefused("an agent token needs the agent it acts for (agent_id)")
        if role != "agent" and agent_id:
            raise TokenRefused(f"only agent tokens act for an agent; a {role} token has no "
                               "agent_id")
        token_id = uuid.uuid4().hex
        token = f"ivr_{token_id}_{secrets.token_urlsafe(32)}"
        now = self.clock()
        row = ApiTokenRow(id=token_id, token_hash=_hash(token), role=role,
                          name=name or agent_id or role, created_at=now, expires_at=now + ttl,
                          agent_id=agent_id)
        try:
            with self._session.begin() as session:
                if agent_id:
                    self._clear_for(session, agent_id, now)
                session.add(row)
        except IntegrityError as exc:  # another request made one in between (unique index)
            raise AgentTokenExists(f"agent {agent_id!r} already has a live token; revoke it "
                                   "first") from exc
        return token, _info(row)

    @staticmethod
    def _clear_for(session: Session, agent_id: str, now: datetime) -> None:
        """Refuse a second live token for ``agent_id``; an expired one is marked revoked (at
        its expiry) so that the unique index of unrevoked agent tokens lets the new one in."""
        if session.get(AgentRow, agent_id) is None:
            raise TokenRefused(f"no agent {agent_id!r}")
        for old in session.scalars(select(ApiTokenRow).where(
                ApiTokenRow.agent_id == agent_id, ApiTokenRow.revoked_at.is_(None))):
            if old.expires_at > now:
                raise AgentTokenExists(f"agent {agent_id!r} already has a live token "
                                       f"({old.id}); revoke it first")
            old.revoked_at = old.expires_at
        session.flush()

    def check(self, token: str) -> Principal | None:
        """The principal of a valid token; None if unknown, expired or revoked."""
        digest = _hash(token)
        with self._session() as session:
            row = session.scalars(select(ApiTokenRow).where(
                ApiTokenRow.token_hash == digest)).first()
        if row is None or not hmac.compare_digest(row.token_hash, digest):
            return None
        if row.revoked_at is not None or row.expires_at <= self.clock():
            return None
        return Principal(row.id, row.role, row.name, row.agent_id)  # type: ignore[arg-type]

    def still_valid(self, token_id: str) -> str | None:
        """None while the token ``token_id`` is usable; else why not ("revoked", "expired",
        "deleted"): what an open live socket checks now and then."""
        with self._session() as session:
            row = session.get(ApiTokenRow, token_id)
        if row is None:
            return "deleted"
        if row.revoked_at is not None:
            return "revoked"
        if row.expires_at <= self.clock():
            return "expired"
        return None

    def revoke(self, token_id: str) -> bool:
        """Revoke a token by id; False if there is no such token."""
        with self._session.begin() as session:
            row = session.get(ApiTokenRow, token_id)
            if row is None:
                return False
            if row.revoked_at is None:
                row.revoked_at = self.clock()
        self._notify(token_id)
        return True

    def delete(self, token_id: str) -> bool:
        """Remove a token of our own making once its work is done (``ivr call``'s short-lived
        reader), so that listings show people's tokens only; False if there is none."""
        with self._session.begin() as session:
            row = session.get(ApiTokenRow, token_id)
            if row is None:
                return False
            session.delete(row)
        self._notify(token_id)
        return True

    def _notify(self, token_id: str) -> None:
        for listener in list(self._revoked):
            listener(token_id)

    def on_revoke(self, listener: Callable[[str], None]) -> Callable[[], None]:
        """Call ``listener(token_id)`` after each revocation in this process (another
        process's revocations are found by re-checking); returns the unsubscribe function."""
        self._revoked.append(listener)
        return lambda: self._revoked.remove(listener)

    def listing(self) -> list[TokenInfo]:
        """Every token, newest first."""
        with self._session() as session:
            rows = session.scalars(select(ApiTokenRow).order_by(
                ApiTokenRow.created_at.desc())).all()
        return [_info(r) for r in rows]

    def audit_read(self, principal: Principal, action: str, resource: str) -> None:
        """Record a read of personal data in clear."""
        with self._session.begin() as session:
            session.add(DataAccessRow(at=self.clock(), token_id=principal.token_id,
                                      role=principal.role, action=action, resource=resource))

    def reads(self, limit: int = 100) -> list[DataAccessRow]:
        """Audited reads, newest first."""
        with self._session() as session:
            return list(session.scalars(select(DataAccessRow).order_by(
                DataAccessRow.id.desc()).limit(limit)).all())


def _info(row: ApiTokenRow) -> TokenInfo:
    return TokenInfo(row.id, row.role, row.name, row.created_at,  # type: ignore[arg-type]
                     row.expires_at, row.revoked_at, row.agent_id)
