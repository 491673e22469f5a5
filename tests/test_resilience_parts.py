"""The parts behind "no caller stranded", each on real components: the call journal on a really
locked SQLite, readiness probes, the loop-lag monitor, supervised tasks, the routing snapshot,
agent claims on reconnect, and the https ARI URL."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text

from ivr.asterisk.instance import AriCredentials
from ivr.health import LoopLag, Readiness, TaskGroup, probe_forever
from ivr.routing.acd import Distributor, agents_from_accounts
from ivr.routing.manage import RuleBook
from ivr.routing.service import RoutingService
from ivr.settings import RoutingSettings
from ivr.store.db import make_engine, url_of
from ivr.store.journal import CallJournal
from ivr.store.repository import Store, StoredCall

pytestmark = pytest.mark.unit
REGIONS = ("north", "east", "south", "west")


class _Lock:
    """Another client holding the database's write lock: SQLite's exclusive lock, or on
    PostgreSQL an ACCESS EXCLUSIVE lock on the tables calls are written to."""

    def __init__(self, store: Store) -> None:
        if store.engine.dialect.name == "sqlite":
            self.connection: Any = sqlite3.connect(str(store.engine.url.database), timeout=0,
                                                   isolation_level=None)
            self.connection.execute("BEGIN EXCLUSIVE")
        else:
            import psycopg

            url = store.engine.url
            self.connection = psycopg.connect(host=url.host, port=url.port, user=url.username,
                                              password=url.password, dbname=url.database)
            self.connection.execute("LOCK TABLE calls, call_events, alembic_version "
                                    "IN ACCESS EXCLUSIVE MODE")

    def release(self) -> None:
        self.connection.rollback() if hasattr(self.connection, "info") else \
            self.connection.execute("ROLLBACK")
        self.connection.close()


LOCKED = ("database is locked", "lock timeout")  # SQLite's words, PostgreSQL's


async def test_journal_keeps_writes_while_the_database_is_locked(store: Store) -> None:
    readiness = Readiness()
    journal = CallJournal(readiness, retry_every_s=0.1)
    call = store.create_call(channel_id="ch-1", caller_number="13800210000",
                             dialed_number="4008101111", sip_call_id=None)
    lock = _Lock(store)
    try:
        first_at = datetime.now(UTC) - timedelta(seconds=5)
        kept = await journal.write("answered", lambda: store.record(
            call.id, "answered", {}, at=first_at, state="greeting"))
        assert kept is None and journal.pending == 1
        assert readiness.missing() == ["ari", "database"]
        assert any(word in readiness.reasons()["database"] for word in LOCKED)
        # Later writes queue behind it (no database attempt), in order.
        assert await journal.write("routed", lambda: store.record(
            call.id, "routed", {"region": "east"}, state="queued")) is None
        new_id = "c" * 32
        assert await journal.write("call_started", lambda: store.create_call(
            call_id=new_id, channel_id="ch-2", caller_number="02012345678",
            dialed_number="4008101111", sip_call_id=None)) is None
        await asyncio.sleep(0.3)
        assert journal.pending == 3  # still locked: nothing lost, nothing stored
    finally:
        lock.release()
    for _ in range(100):
        if journal.pending == 0:
            break
        await asyncio.sleep(0.05)
    assert journal.pending == 0
    assert "database" not in readiness.missing()
    events = store.events(call.id)
    assert [e.kind for e in events] == ["call_started", "answered", "routed"]
    assert abs((events[1].at - first_at).total_seconds()) < 0.01  # the time it happened
    assert store.get_call(call.id).state == "queued"  # type: ignore[union-attr]
    assert store.get_call(new_id) is not None
    # With the database back, writes go straight through again.
    stored = await journal.write("ended", lambda: store.record(call.id, "ended", {},
                                                                state="ended"))
    assert stored is not None and stored.state == "ended"


async def test_journal_passes_on_errors_that_are_not_the_database_being_away(
        store: Store) -> None:
    journal = CallJournal(Readiness())
    with pytest.raises(KeyError):
        await journal.write("x", lambda: store.record("no-such-call", "answered"))
    assert journal.pending == 0


def test_fresh_call_matches_a_stored_one(store: Store) -> None:
    now = datetime.now(UTC)
    values = {"channel_id": "ch-9", "caller_number": "13800210000",
              "dialed_number": "4008101111", "sip_call_id": None, "region": "east"}
    stored = store.create_call(call_id="f" * 32, started_at=now, **values)
    assert StoredCall.fresh("f" * 32, started_at=now, **values) == stored


async def test_write_probe_follows_the_lock(store: Store) -> None:
    readiness = Readiness()
    task = asyncio.create_task(probe_forever(
        readiness, "database", lambda: asyncio.to_thread(store.probe_write), 0.05, 1.0,
        "database write lock"))
    try:
        await asyncio.sleep(0.2)
        assert readiness.checks()["database"] is True
        lock = _Lock(store)
        await asyncio.sleep(0.6)
        assert readiness.checks()["database"] is False
        assert any(word in readiness.reasons()["database"] for word in LOCKED)
        lock.release()
        await asyncio.sleep(0.6)
        assert readiness.checks()["database"] is True
    finally:
        task.cancel()
    # The probe leaves the connections' normal lock timeout behind.
    with store.engine.connect() as connection:
        if store.engine.dialect.name == "sqlite":
            assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 2000
        else:
            assert connection.exec_driver_sql("SHOW lock_timeout").scalar() == "2s"


async def test_loop_lag_sees_a_blocked_loop() -> None:
    lag = LoopLag(interval_s=0.01)
    task = asyncio.create_task(lag.run())
    await asyncio.sleep(0.05)
    time.sleep(0.2)  # noqa: ASYNC251 - on purpose: a synchronous read blocking the loop
    await asyncio.sleep(0.05)
    task.cancel()
    assert lag.max_s >= 0.15
    assert lag.recent_max_s() >= 0.15


async def test_task_group_logs_failures(caplog: pytest.LogCaptureFixture) -> None:
    group = TaskGroup("test")

    async def broken() -> None:
        raise RuntimeError("boom")

    with caplog.at_level(logging.ERROR):
        task = group.spawn(broken(), "broken", {"call_id": "abc"})
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(0)
    record = next(r for r in caplog.records if r.getMessage() == "background task failed")
    assert record.task == "broken" and record.call_id == "abc"  # type: ignore[attr-defined]
    assert len(group) == 0


def test_routing_decides_from_a_snapshot_refreshed_on_change(store: Store) -> None:
    routing = RoutingService(store, RoutingSettings.model_validate({}), REGIONS)
    routing.seed_rules()
    routing.refresh()
    before = routing.rules()
    # A change written behind the service's back: not seen until the next refresh...
    with make_engine(url_of(store.engine)).begin() as db:  # another process
        db.execute(text("DELETE FROM routing_rules WHERE id = :id"), {"id": before[0].id})
    assert [r.id for r in routing.rules()] == [r.id for r in before]
    assert routing.refresh() is True
    assert before[0].id not in [r.id for r in routing.rules()]
    assert routing.refresh() is False  # nothing changed since
    # ...while a change through the rule book applies to the very next call.
    book = RuleBook(routing)
    book.create({"name": "Night desk", "then": {"target_region": "west"}}, by="test")
    assert "night-desk" in [r.id for r in routing.rules()]


def test_reconnect_releases_every_claim() -> None:
    distributor = Distributor(agents_from_accounts([("agent-north-1", "north")], {}), 0.0)
    distributor.set_registered("agent-north-1", True)
    distributor.join("call-1", 0, ["north"], None)
    assert distributor.claim("call-1") is not None
    assert distributor.claim("call-2") is None
    distributor.release_all()
    assert distributor.waiting == {}
    distributor.join("call-2", 0, ["north"], None)
    assert distributor.claim("call-2") is not None


def test_ari_events_url_follows_the_scheme() -> None:
    assert AriCredentials("https://pbx.example:8089", "u", "p", "ivr").ws_url == \
        "wss://pbx.example:8089/ari/events?app=ivr"
    assert AriCredentials("http://127.0.0.1:8088", "u", "p", "ivr").ws_url == \
        "ws://127.0.0.1:8088/ari/events?app=ivr"
