"""The store on real SQLite (WAL, migrations) and the calls / simulate API over it."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import inspect, text

from ivr.api.app import ApiServices, create_app
from ivr.auth.tokens import TokenStore
from ivr.health import Readiness
from ivr.routing.service import RoutingService
from ivr.settings import RoutingSettings
from ivr.store.db import make_engine, migrate, newest_revision, sqlite_url, url_of
from ivr.store.repository import Store

pytestmark = pytest.mark.unit
REGIONS = ("north", "east", "south", "west")


@pytest.fixture
def store(store: Store) -> Store:
    migrate(store.engine)  # idempotent
    return store


def test_schema_is_migrated(store: Store) -> None:
    with store.engine.connect() as connection:
        version = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    assert version == newest_revision() == "0011"
    assert {"calls", "call_events", "agents", "routing_rules", "callback_requests",
            "transcripts", "api_tokens", "routing_rule_changes", "data_access_log",
            "voiceprint_recordings", "rate_limits", "data_keys", "retention_purges",
            "nodes"} <= set(
        inspect(store.engine).get_table_names())


def test_migrations_build_exactly_the_models_schema(store: Store) -> None:
    """What Alembic made on this engine is what the code's models describe: every table,
    column, type and length (SQLite never enforces a VARCHAR's length; PostgreSQL does, so a
    model wider than its migration fails only there), index and nullability."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import MetaData

    import voiceprint.store  # noqa: F401 - its tables join AuditBase's metadata
    from ivr.store.models import Base
    from voiceprint.audit_store import AuditBase

    expected = MetaData()
    for metadata in (Base.metadata, AuditBase.metadata):
        for table in metadata.tables.values():
            table.to_metadata(expected)
    with store.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, expected) == []


def test_sqlite_database_is_wal_and_private(tmp_path: Path) -> None:
    engine = make_engine(sqlite_url(tmp_path))
    migrate(engine)
    path = tmp_path / "ivr.sqlite3"
    assert path.stat().st_mode & 0o077 == 0
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_call_lifecycle_is_recorded_and_found_by_either_id(store: Store) -> None:
    call = store.create_call(channel_id="ch-1", caller_number="01012345678",
                             dialed_number="4008101111", sip_call_id="sip-abc", region="north")
    store.record(call.id, "routed", {"rule": "x"}, intent="billing", state="queued")
    store.add_callback(call.id, "13912345678", "north", "no_agents")
    store.record(call.id, "ended", {}, state="ended", ended_at=datetime.now(UTC),
                 hangup_cause="callback_requested")
    # A second connection (another process) sees everything that was acknowledged.
    other = Store(make_engine(url_of(store.engine)))
    for key in (call.id, "sip-abc"):
        got = other.get_call(key)
        assert got is not None and got.id == call.id
    assert got.callback_number == "13912345678" and got.state == "ended"
    assert [e.kind for e in other.events(call.id)] == [
        "call_started", "routed", "callback_requested", "ended"]
    assert other.find_by_channel("ch-1") is not None
    assert [c.id for c in other.list_calls(active=False)] == [call.id]
    assert other.list_calls(active=True) == []
    with pytest.raises(ValueError, match="unknown call fields"):
        store.update_call(call.id, colour="red")
    with pytest.raises(KeyError):
        store.update_call("nope", state="ended")


def _client(store: Store) -> TestClient:
    routing = RoutingService(store, RoutingSettings(), REGIONS)
    assert routing.seed_rules() is True
    assert routing.seed_rules() is False  # only on first start
    tokens = TokenStore(store.engine)
    token, _info = tokens.create("admin")
    return TestClient(create_app(ApiServices(Readiness(), store, routing, tokens=tokens)),
                      headers={"Authorization": f"Bearer {token}"})


def test_calls_endpoints(store: Store) -> None:
    client = _client(store)
    call = store.create_call(channel_id="ch-9", caller_number="02012345678",
                             dialed_number="4008101111", sip_call_id="sip-9", region="south")
    body = client.get("/api/v1/calls/sip-9").json()
    assert body["call_id"] == call.id and body["region"] == "south"
    assert body["route"] == {"region": None, "agent_id": None}
    assert body["events"][0]["kind"] == "call_started"
    listing = client.get("/api/v1/calls", params={"active": "true"}).json()
    assert [c["call_id"] for c in listing["items"]] == [call.id]
    missing = client.get("/api/v1/calls/unknown")
    assert missing.status_code == 404 and missing.json()["message"] == "no call 'unknown'"
    assert client.get("/api/v1/calls", params={"limit": 0}).status_code == 422


def test_simulate_shows_the_decision_and_the_rule(store: Store) -> None:
    client = _client(store)
    weekday_noon = "2026-11-18T12:00:00+08:00"
    body = client.post("/api/v1/routing/simulate", json={
        "caller_number": "02012345678", "intent": "complaint", "at": weekday_noon}).json()
    assert body["decision"]["region"] == "south"
    assert body["decision"]["action"] == "queue"
    assert body["rule"]["id"] == "complaints"
    assert body["region"]["source"] == "landline"
    night = client.post("/api/v1/routing/simulate", json={
        "caller_number": "13800210000", "intent": "billing",
        "at": "2026-11-18T23:30:00+08:00"}).json()
    assert night["decision"]["action"] == "callback"
    assert night["decision"]["region"] == "east"


@pytest.mark.parametrize("body", [
    {"caller_number": "01012345678", "intent": "pizza"},
    {"caller_number": 123, "intent": "billing"},
    {"caller_number": "01012345678", "intent": "billing", "at": "yesterday"},
    {"intent": "billing"},
    {"caller_number": "01012345678", "intent": "billing", "extra": 1},
])
def test_simulate_rejects_bad_bodies_naming_the_field(store: Store,
                                                     body: dict[str, object]) -> None:
    response = _client(store).post("/api/v1/routing/simulate", json=body)
    assert response.status_code == 422
    problem = response.json()
    assert set(problem) == {"status", "error_id", "message", "details"}
    assert problem["details"], "the error must say which field is wrong"


def test_transcript_is_stored_and_served_in_time_order(store: Store) -> None:
    client = _client(store)
    call = store.create_call(channel_id="ch-t", caller_number="01012345678",
                             dialed_number="4008101111", sip_call_id="sip-t")
    store.add_transcript(call.id, speaker="agent", start_s=5.0, end_s=6.5, text="您好",
                         language="zh", confidence=0.8, model="m")
    store.add_transcript(call.id, speaker="caller", start_s=1.0, end_s=2.0, text="我要查账单",
                         language="zh", confidence=0.9, model="m", intent="billing",
                         intent_confidence=0.97)
    lines = client.get("/api/v1/calls/sip-t/transcript").json()
    assert [(line["speaker"], line["text"]) for line in lines] == [
        ("caller", "我要查账单"), ("agent", "您好")]
    assert lines[0]["intent"] == "billing"
    assert client.get("/api/v1/calls/nope/transcript").status_code == 404


def _engine_at(url: str, revision: str) -> Any:
    """A database migrated only up to ``revision`` (an older install)."""
    from alembic import command
    from alembic.config import Config

    from ivr.store.db import MIGRATIONS

    engine = make_engine(url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
    return engine


def test_upgrade_indexes_the_replay_prints_already_stored(database_url: str) -> None:
    """Migration 0006 fills the replay key index for fingerprints stored before it, with the
    keys voiceprint.replay makes today."""
    from voiceprint.replay import fingerprint, index_keys

    engine = _engine_at(database_url, "0005")
    pcm = (np.sin(np.arange(48_000) / 7.0) * np.linspace(0, 8000, 48_000)).astype(np.int16)
    print_now = fingerprint(pcm)
    with engine.begin() as db:
        db.execute(text("INSERT INTO voiceprint_fingerprints (account_id, source, data, "
                        "created_at) VALUES ('acct-1', 'attempt', :data, "
                        "'2026-11-30 10:00:00')"), {"data": print_now.data})
    migrate(engine)
    keys, frames = index_keys(print_now)
    with engine.connect() as db:
        stored = sorted(tuple(row) for row in db.execute(text(
            "SELECT key, frame FROM voiceprint_print_keys WHERE account_id = 'acct-1'")))
    assert stored == sorted(zip(keys.tolist(), frames.tolist(), strict=True))
    assert len(stored) > 100


def test_upgrade_binds_agent_tokens_and_widens_sealed_columns(database_url: str,
                                                             tmp_path: Path) -> None:
    """Migrations 0007 and 0008 on a populated 0006 database: the newest live agent token named
    after an agent acts for it; numbers stored in clear survive the widened columns and are
    sealed (with the accounts' blind index filled) when the service opens the store."""
    from ivr.auth.tokens import TokenStore
    from ivr.settings import Settings
    from ivr.store.opening import open_store
    from ivr.verification.codes import AccountDirectory

    engine = _engine_at(database_url, "0006")
    with engine.begin() as db:
        db.execute(text("INSERT INTO agents (id, region, skills, enabled, updated_at) "
                        "VALUES ('agent-east-1', 'east', '[]', true, '2026-11-01 00:00:00')"))
        for token_id, name, created, revoked in (
                ("t1", "agent-east-1", "2026-11-01", None),
                ("t2", "agent-east-1", "2026-11-02", None),  # the newest live one
                ("t3", "agent-east-1", "2026-11-03", "2026-11-04"),
                ("t4", "no-such-agent", "2026-11-01", None)):
            db.execute(text(
                "INSERT INTO api_tokens (id, token_hash, role, name, created_at, expires_at, "
                "revoked_at) VALUES (:id, :hash, 'agent', :name, :created, '2027-01-01', "
                ":revoked)"), {"id": token_id, "hash": token_id * 16, "name": name,
                               "created": created, "revoked": revoked})
        db.execute(text("INSERT INTO accounts (id, phone_number, voice_status, created_at) "
                        "VALUES ('acct-1', '13800210000', 'none', '2026-11-01')"))
        db.execute(text(
            "INSERT INTO calls (id, channel_id, caller_number, dialed_number, language, "
            "menu_path, state, overflow, started_at) VALUES ('c1', 'ch', '01062345678', "
            "'4008101111', 'zh', '[]', 'ended', false, '2026-11-01')"))
    migrate(engine)
    with engine.connect() as db:
        bound = dict(tuple(row) for row in db.execute(text(
            "SELECT id, agent_id FROM api_tokens")))
    assert bound == {"t1": None, "t2": "agent-east-1", "t3": None, "t4": None}
    assert TokenStore(engine).listing()  # the model reads the upgraded table
    store = open_store(Settings(data_dir=tmp_path, database_url=database_url,
                                voiceprint={"master_key": "ab" * 32}))
    call = store.get_call("c1")
    assert call is not None and call.caller_number == "01062345678"  # as it was stored
    assert AccountDirectory(store.engine).find_by_number("+8613800210000") is not None
    with engine.connect() as db:
        raw = db.execute(text("SELECT caller_number FROM calls")).scalar()
    assert raw.startswith("enc1:")
