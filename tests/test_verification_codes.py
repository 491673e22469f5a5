"""Tier-1 one-time codes on real SQLite, with an injected clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ivr.store.db import make_engine, migrate
from ivr.verification.codes import (
    AccountDirectory,
    CodeOptions,
    OneTimeCodes,
    OutboxSender,
)

from conftest import sql

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 18, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def parts(database_url: str) -> tuple[AccountDirectory, OneTimeCodes, OutboxSender, Clock, str]:
    engine = make_engine(database_url)
    migrate(engine)
    clock = Clock()
    outbox = OutboxSender(engine)
    codes = OneTimeCodes(engine, outbox, CodeOptions(ttl_s=300, max_attempts=3), clock)
    return AccountDirectory(engine), codes, outbox, clock, database_url


def _sent_code(outbox: OutboxSender) -> str:
    body = outbox.messages()[0].body
    return "".join(ch for ch in body.split("code is ")[1].split(".")[0] if ch.isdigit())


def test_code_round_trip_and_only_a_hash_is_stored(parts: tuple) -> None:  # type: ignore[type-arg]
    accounts, codes, outbox, _clock, db = parts
    account = accounts.add("acct-1", "+86 13800210000")
    assert accounts.find_by_number("13800210000") == account
    code_id = codes.issue(account, "call-1")
    code = _sent_code(outbox)
    assert len(code) == 6
    stored = sql(db, "SELECT code_hash, salt FROM one_time_codes")[0]
    assert code not in stored[0] and len(stored[0]) == 64
    first = codes.check(code_id, "999999" if code != "999999" else "000000")
    assert (first.ok, first.reason, first.attempts_left) == (False, "wrong", 2)
    assert codes.check(code_id, code).ok
    assert codes.check(code_id, code).reason == "expired", "a used code cannot be used again"


def test_attempt_limit_and_expiry(parts: tuple) -> None:  # type: ignore[type-arg]
    accounts, codes, outbox, clock, _db = parts
    account = accounts.add("acct-2", "13900000000")
    code_id = codes.issue(account, None)
    code = _sent_code(outbox)
    wrong = "1" * 6 if code != "1" * 6 else "2" * 6
    assert [codes.check(code_id, wrong).reason for _ in range(3)] == [
        "wrong", "wrong", "too_many_attempts"]
    assert codes.check(code_id, code).ok is False, "locked after the last attempt"
    later = codes.issue(account, None)
    clock.now += timedelta(seconds=301)
    assert codes.check(later, _sent_code(outbox)).reason == "expired"
    assert codes.check("nope", "123456").reason == "unknown"


def test_ambiguous_or_unknown_numbers_have_no_account(parts: tuple) -> None:  # type: ignore[type-arg]
    accounts = parts[0]
    accounts.add("a", "13811112222")
    accounts.add("b", "13811112222")
    assert accounts.find_by_number("13811112222") is None
    assert accounts.find_by_number("") is None
    with pytest.raises(ValueError):
        accounts.add("c", "12")
