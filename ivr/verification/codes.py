"""Tier 1 of account security: accounts, one-time codes and the development code sender.

Codes are never stored in clear: only a salted SHA-256 is kept, compared in constant time. The
development sender writes the message to an outbox table that the API can read; a deployment
replaces it with an SMS gateway behind the same ``CodeSender`` protocol.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol

from sqlalchemy import Engine, select
from sqlalchemy.orm import sessionmaker

from ivr import phone
from ivr.auth.throttle import Throttle
from ivr.store.crypto import keys_for
from ivr.store.models import AccountRow, OneTimeCodeRow, OutboxRow

CheckReason = Literal["ok", "wrong", "expired", "too_many_attempts", "unknown"]


@dataclass(frozen=True)
class Account:
    """A customer account and the phone number registered to it."""

    id: str
    phone_number: str
    voice_status: str


@dataclass(frozen=True)
class CodeOptions:
    """How codes are made and checked."""

    digits: int = 6
    ttl_s: float = 300.0
    max_attempts: int = 3
    # Codes sent per account per window (an SMS costs money and floods the customer's phone):
    # past it, issue raises ivr.auth.throttle.Limited and tier 1 is not run.
    max_sends: int = 5
    send_window_s: int = 3600


@dataclass(frozen=True)
class CodeCheck:
    """The result of one entered code."""

    ok: bool
    reason: CheckReason
    attempts_left: int


class CodeSender(Protocol):
    """Delivers a code message to a phone (SMS gateway, or the development outbox)."""

    def send(self, account_id: str, phone_number: str, body: str) -> None:
        """Deliver ``body``; raise on failure."""
        ...


@dataclass(frozen=True)
class OutboxMessage:
    """One message of the development outbox."""

    id: int
    account_id: str
    phone_number: str
    body: str
    created_at: datetime


class OutboxSender:
    """Development sender: messages go to the ``outbox`` table, readable through the API."""

    def __init__(self, engine: Engine) -> None:
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    def send(self, account_id: str, phone_number: str, body: str) -> None:
        """Write the message to the outbox."""
        with self._sessions() as session, session.begin():
            session.add(OutboxRow(account_id=account_id, phone_number=phone_number, body=body,
                                  created_at=datetime.now(UTC)))

    def messages(self, account_id: str | None = None, limit: int = 50) -> list[OutboxMessage]:
        """Newest first."""
        query = select(OutboxRow).order_by(OutboxRow.id.desc()).limit(limit)
        if account_id is not None:
            query = query.where(OutboxRow.account_id == account_id)
        with self._sessions() as session:
            return [OutboxMessage(r.id, r.account_id, r.phone_number, r.body,
                                  r.created_at) for r in session.scalars(query).all()]


class AccountDirectory:
    """Accounts by id and by registered phone number."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    def _index(self, e164: str) -> str | None:
        """The blind index of a number when the database's fields are sealed."""
        keys = keys_for(self.engine)
        return keys.index("phone", e164) if keys is not None else None

    def add(self, account_id: str, phone_number: str) -> Account:
        """Create or update an account; the number is kept in E.164 (any spelling works)."""
        digits = phone.e164(phone_number)
        if digits is None:
            raise ValueError("not a valid phone number")
        with self._sessions() as session, session.begin():
            row = session.get(AccountRow, account_id)
            if row is None:
                row = AccountRow(id=account_id, phone_number=digits, voice_status="none",
                                 created_at=datetime.now(UTC))
                session.add(row)
            else:
                row.phone_number = digits
            row.phone_index = self._index(digits)
            return Account(row.id, row.phone_number, row.voice_status)

    def get(self, account_id: str) -> Account | None:
        """One account by id."""
        with self._sessions() as session:
            row = session.get(AccountRow, account_id)
            return Account(row.id, row.phone_number, row.voice_status) if row else None

    def find_by_number(self, caller_number: str) -> Account | None:
        """The account registered to the calling number, if exactly one is."""
        digits = phone.e164(caller_number)
        if digits is None:
            return None
        index = self._index(digits)
        match = (AccountRow.phone_index == index if index is not None
                 else AccountRow.phone_number == digits)
        with self._sessions() as session:
            rows = session.scalars(select(AccountRow).where(match).limit(2)).all()
        # Two accounts on one number cannot be told apart by the number: tier 3 decides.
        if len(rows) != 1:
            return None
        return Account(rows[0].id, rows[0].phone_number, rows[0].voice_status)


class OneTimeCodes:
    """Issues and checks codes with expiry and an attempt limit."""

    def __init__(self, engine: Engine, sender: CodeSender, options: CodeOptions | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self.sender = sender
        self.options = options or CodeOptions()
        self.clock = clock
        self.throttle = Throttle(engine, lambda: self.clock().timestamp())

    @staticmethod
    def _hash(salt: str, code: str) -> str:
        return hashlib.sha256(f"{salt}:{code}".encode()).hexdigest()

    def issue(self, account: Account, call_id: str | None) -> str:
        """Make a code, store its hash, send it to the registered phone; returns the code id.

        :class:`~ivr.auth.throttle.Limited` when the account had ``max_sends`` codes in the
        window already (counted in the database: every process shares the limit)."""
        self.throttle.take(f"code:{account.id}", self.options.max_sends,
                           self.options.send_window_s, "one-time codes for this account")
        code = "".join(secrets.choice("0123456789") for _ in range(self.options.digits))
        salt = secrets.token_hex(16)
        now = self.clock()
        code_id = uuid.uuid4().hex
        with self._sessions() as session, session.begin():
            session.add(OneTimeCodeRow(
                id=code_id, account_id=account.id, call_id=call_id,
                code_hash=self._hash(salt, code), salt=salt, created_at=now,
                expires_at=now + timedelta(seconds=self.options.ttl_s), attempts=0,
                status="open"))
        minutes = max(1, round(self.options.ttl_s / 60))
        self.sender.send(account.id, account.phone_number,
                         f"Your hotline verification code is {code}. "
                         f"It expires in {minutes} minutes. Never share it.")
        return code_id

    def check(self, code_id: str, entered: str) -> CodeCheck:
        """Check an entered code; each call counts as one attempt."""
        now = self.clock()
        with self._sessions() as session, session.begin():
            row = session.get(OneTimeCodeRow, code_id)
            if row is None:
                return CodeCheck(False, "unknown", 0)
            if row.status != "open":
                return CodeCheck(False, "too_many_attempts" if row.status == "locked"
                                 else "expired", 0)
            if now >= row.expires_at:
                row.status = "expired"
                return CodeCheck(False, "expired", 0)
            row.attempts += 1
            left = self.options.max_attempts - row.attempts
            if hmac.compare_digest(row.code_hash, self._hash(row.salt, entered)):
                row.status = "used"
                return CodeCheck(True, "ok", left)
            if left <= 0:
                row.status = "locked"
                return CodeCheck(False, "too_many_attempts", 0)
            return CodeCheck(False, "wrong", left)


@dataclass
class VerificationServices:
    """What the call flow needs for the account-security tiers."""

    accounts: AccountDirectory
    codes: OneTimeCodes
    outbox: OutboxSender
