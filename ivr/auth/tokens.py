"""Bearer tokens of the REST API, each carrying one role.

A token is ``ivr_<id>_<secret>``; only the SHA-256 of the whole token is stored (the secret is
32 random bytes, so a fast hash is enough: there is nothing to brute-force). Tokens expire and
can be revoked; every check reads the store, so a revocation applies to the next request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, get_args

from sqlalchemy import Engine, select
from sqlalchemy.orm import sessionmaker

from ivr.store.models import ApiTokenRow, DataAccessRow

Role = Literal["admin", "supervisor", "security", "agent"]
ROLES: tuple[Role, ...] = get_args(Role)


@dataclass(frozen=True)
class Principal:
    """Who is calling the API: the token's id and role (never the secret)."""

    token_id: str
    role: Role
    name: str

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


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenStore:
    """Create, check, list and revoke tokens on the service's database."""

    def __init__(self, engine: Engine, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
                 ) -> None:
        self.engine = engine
        self.clock = clock
        self._session = sessionmaker(engine, expire_on_commit=False)

    def create(self, role: str, name: str = "", ttl: timedelta = timedelta(days=30)
               ) -> tuple[str, TokenInfo]:
        """A new token (returned once, in clear) and its listing."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
        if ttl <= timedelta(0):
            raise ValueError("a token must live for some time")
        token_id = uuid.uuid4().hex
        token = f"ivr_{token_id}_{secrets.token_urlsafe(32)}"
        now = self.clock()
        row = ApiTokenRow(id=token_id, token_hash=_hash(token), role=role,
                          name=name or role, created_at=now, expires_at=now + ttl)
        with self._session.begin() as session:
            session.add(row)
        return token, _info(row)

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
        return Principal(row.id, row.role, row.name)  # type: ignore[arg-type]

    def revoke(self, token_id: str) -> bool:
        """Revoke a token by id; False if there is no such token."""
        with self._session.begin() as session:
            row = session.get(ApiTokenRow, token_id)
            if row is None:
                return False
            if row.revoked_at is None:
                row.revoked_at = self.clock()
            return True

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
                     row.expires_at, row.revoked_at)
